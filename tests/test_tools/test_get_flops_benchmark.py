"""The FLOP counter counts the ContMix core and reports the backbone's own parameter count; get_flops writes its JSON;
benchmark compares configs side by side (an installed package's own included)."""
import json
import os.path as osp

import pytest

from _helpers import CONFIG_DIR, SMOKE_DET, SMOKE_SEG, run_tool
from mmoverlock.analysis import config_complexity, config_label
from mmoverlock.apis import resolve_config_path
from mmoverlock.models import OverLoCK

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

MASK_RCNN_T = osp.join(CONFIG_DIR, 'mask_rcnn', 'mask-rcnn_overlock-t_fpn_1x_coco.py')


@pytest.mark.parametrize('config', [SMOKE_DET, SMOKE_SEG], ids=['det', 'seg'])
def test_flops_include_contmix(config):
    result = config_complexity(config, shape=(96, 128))
    assert 0 < result['contmix_flops'] < result['backbone_flops'] < result['flops']
    assert result['backbone_params'] < result['params']
    if config == SMOKE_DET:  # mask heads' share and the RoIs they ran on (at most test_cfg.rpn.max_per_img = 100)
        assert 0 < result['mask_rois'] <= 100 and 0 < result['mask_head_flops'] < result['flops']
        assert result['flops_mask_head_on_100_rois'] == result['flops']
    else:
        assert result['mask_rois'] is None and result['flops_mask_head_on_100_rois'] is None
    # ContMix at level 2 (stride 16, 6x8 < K=13, so resized to 13x17) and level 3 (stride 32, 3x4 -> 7x9):
    # each block aggregates d/2 channels with a 5x5 kernel and d/2 with KxK, B*H*W*C*K^2 multiply-adds.
    expected = 2 * (13 * 17 * 32 * (5 * 5 + 13 * 13)) + 2 * (7 * 9 * 48 * (5 * 5 + 7 * 7))
    assert result['contmix_flops'] == expected


def test_params_match_backbone_and_authors(official_manifest):
    result = config_complexity(MASK_RCNN_T, shape=(64, 64), backbone_only=True)
    assert result['flops'] is None and result['params'] > result['backbone_params']
    backbone = OverLoCK(arch='t', overview_fusion=True)
    assert result['backbone_params'] == sum(p.numel() for p in backbone.parameters())
    assert result['backbone_params'] == official_manifest['detection/overlock_t']['num_params']
    deploy = config_complexity(MASK_RCNN_T, shape=(64, 64), deploy=True, backbone_only=True)
    assert deploy['backbone_params'] == official_manifest['detection/overlock_t/deploy']['num_params']
    assert deploy['contmix_flops'] == result['contmix_flops'] > 0


def test_get_flops_cli(tmp_path):
    out = run_tool(['tools/analysis_tools/get_flops.py', SMOKE_SEG, '--shape', '64', '64', '--out',
                    tmp_path / 'flops.json'], cwd=tmp_path)
    assert 'ContMix core' in out
    assert json.loads((tmp_path / 'flops.json').read_text())['contmix_flops'] > 0


def test_benchmark_compares_configs(tmp_path):
    path = tmp_path / 'bench.json'
    run_tool(['tools/analysis_tools/benchmark.py', SMOKE_DET, SMOKE_SEG, '--shape', '96', '128', '--batch-size', '2',
              '--iters', '1', '--warmup', '0', '--device', 'cpu', '--out', path], cwd=tmp_path)
    result = json.loads(path.read_text())
    assert result['device'] == 'cpu' and result['shape'] == [96, 128] and result['batch_size'] == 2
    det, seg = (osp.splitext(osp.basename(c))[0] for c in (SMOKE_DET, SMOKE_SEG))
    assert list(result['models']) == [det, seg] and result['baseline'] == det
    for label in (det, seg):
        entry = result['models'][label]
        assert entry['infer']['images_per_s'] > 0 and entry['train']['step_s'] > 0
        assert entry['infer']['peak_memory_mib'] > 0 and entry['train']['peak_memory_mib'] > 0
    assert result['models'][det]['train']['time_ratio'] == 1.0
    seg_train, det_train = result['models'][seg]['train'], result['models'][det]['train']
    assert seg_train['time_ratio'] == seg_train['median_s'] / det_train['median_s']
    assert seg_train['memory_ratio'] == seg_train['peak_memory_mib'] / det_train['peak_memory_mib']
    markdown = (tmp_path / 'bench.md').read_text()
    assert f'| {seg} |' in markdown and result['machine']['cpu'] in markdown


def test_benchmark_resolves_package_configs():
    path = resolve_config_path('mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py')
    assert osp.isfile(path)
    assert path.endswith(osp.join('.mim', 'configs', 'swin', 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'))
    assert config_label('mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py') == 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco'
    with pytest.raises(FileNotFoundError, match="no file 'swin/none.py'"):
        resolve_config_path('mmdet::swin/none.py')
