"""Every config loads with mmengine, builds its model (no pretrained download) and runs one forward at a small size;
the recipes carry the values the configs document."""
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from torch.nn.modules.batchnorm import _BatchNorm

from _helpers import CONFIG_DIR, SMOKE_SEG, TINY_ARCH, TINY_CHANNELS, all_configs, write_config
from _helpers.reference_data import load_reference
from mmoverlock.apis import build_model, dummy_batch, load_config, task_of
from mmoverlock.models import OverLoCK
from mmoverlock.models.layers import GRN, LayerScale

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

CONFIGS = all_configs()
RELEASE = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_{}_in1k_224.pth'
DROP_PATH = dict(mmdet=dict(t=0.2, s=0.4, b=0.6), mmseg=dict(t=0.2, s=0.3, b=0.5))  # the authors' rates per task


def _name(path):
    return osp.relpath(path, CONFIG_DIR)


def test_release_configs_exist():
    names = {_name(c) for c in CONFIGS}
    expected = set()
    for v in 'tsb':
        expected.add(f'cascade_mask_rcnn/cascade-mask-rcnn_overlock-{v}_fpn_ms-3x_coco.py')
        expected.add(f'cascade_mask_rcnn/cascade-mask-rcnn_overlock-{v}_fpn_4conv1fc-giou_ms-crop-3x_coco.py')
        expected.update(f'mask_rcnn/mask-rcnn_overlock-{v}_fpn_{s}_coco.py' for s in ('1x', 'ms-3x'))
        expected.add(f'upernet/upernet_overlock-{v}_8xb2-160k_ade20k-512x512.py')
    assert expected <= names, sorted(expected - names)
    assert any(n.startswith('_smoke_/cascade-mask-rcnn') for n in names)
    assert any(n.startswith('_smoke_/upernet') for n in names)


@pytest.mark.parametrize('config', CONFIGS, ids=_name)
def test_config_builds_and_runs(config):
    cfg = Config.fromfile(config)
    assert cfg.custom_imports == dict(imports=['mmoverlock'], allow_failed_imports=False)
    task, backbone = cfg.default_scope, cfg.model.backbone
    assert task in ('mmdet', 'mmseg') and backbone.type == 'OverLoCK'
    assert backbone.overview_fusion == (task == 'mmdet')  # detection form for detectors only
    if '_smoke_' not in config:
        variant = re.search(r'overlock-([tsb])_', osp.basename(config)).group(1)
        assert backbone.arch == variant
        assert backbone.drop_path_rate == DROP_PATH[task][variant]
        assert backbone.init_cfg == dict(type='Pretrained', checkpoint=RELEASE.format(variant))
        assert cfg.sync_bn == 'torch'

    model, _ = build_model(cfg, init=False)  # no pretrained download
    channels = model.backbone.out_channels
    if task == 'mmdet':
        assert cfg.model.neck.in_channels == channels
    else:
        assert cfg.model.decode_head.in_channels == channels
        assert cfg.model.auxiliary_head.in_index == 2 and cfg.model.auxiliary_head.in_channels == channels[2]

    inputs, samples = dummy_batch(task, 1, 96, 128)
    with torch.no_grad():
        results = model(inputs, samples, mode='predict')
    assert len(results) == 1
    if task == 'mmdet':
        pred = results[0].pred_instances
        assert pred.bboxes.shape[1] == 4 and len(pred.masks) == len(pred.bboxes)
    else:
        assert results[0].pred_sem_seg.data.shape == (1, 96, 128)


@pytest.mark.parametrize('scope', ['mmpretrain', None])
def test_unknown_task_is_a_clear_error(tmp_path, scope):
    """A config whose default_scope is not mmdet / mmseg fails when loaded, naming the file and the scope."""
    config = write_config(tmp_path / 'other.py', SMOKE_SEG, f'default_scope = {scope!r}\n')
    expected = rf"other.py has default_scope {scope!r}; expected one of \('mmdet', 'mmseg'\)"
    with pytest.raises(ValueError, match=expected):
        load_config(config)
    with pytest.raises(ValueError, match='default_scope'):
        build_model(config)
    assert task_of(load_config(SMOKE_SEG, {'model.backbone.drop_path_rate': 0.1})) == 'mmseg'


def test_pico_arch_is_the_reference_tiny_arch(reference_dir):
    """The smoke configs' OverLoCK-pico is the architecture of the float64 parity references."""
    for name in ('detection', 'classification'):
        ref = load_reference(reference_dir, name)
        assert {k: v for k, v in ref['arch'].items() if k != 'drop_path_rate'} == TINY_ARCH
    assert OverLoCK(arch=TINY_ARCH).out_channels == TINY_CHANNELS


def test_detection_recipes():
    one_x = Config.fromfile(osp.join(CONFIG_DIR, 'mask_rcnn', 'mask-rcnn_overlock-t_fpn_1x_coco.py'))
    assert one_x.optim_wrapper.optimizer == dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert one_x.train_cfg.max_epochs == 12
    for path in ('mask_rcnn/mask-rcnn_overlock-b_fpn_ms-3x_coco.py',
                 'cascade_mask_rcnn/cascade-mask-rcnn_overlock-s_fpn_ms-3x_coco.py'):
        cfg = Config.fromfile(osp.join(CONFIG_DIR, path))
        assert cfg.optim_wrapper.optimizer.lr == 1e-4 and cfg.optim_wrapper.optimizer.type == 'AdamW'
        assert cfg.train_cfg.max_epochs == 36 and cfg.param_scheduler[1].milestones == [27, 33]
        assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs = the authors' 16
        choice = cfg.train_dataloader.dataset.pipeline[3]
        assert choice.type == 'RandomChoice' and len(choice.transforms) == 2
        assert [s[1] for s in choice.transforms[0][0].scales] == list(range(480, 801, 32))
    cascade = Config.fromfile(
        osp.join(CONFIG_DIR, 'cascade_mask_rcnn', 'cascade-mask-rcnn_overlock-t_fpn_ms-3x_coco.py'))
    assert cascade.model.type == 'CascadeRCNN' and len(cascade.model.roi_head.bbox_head) == 3


def test_segmentation_recipe():
    cfg = Config.fromfile(osp.join(CONFIG_DIR, 'upernet', 'upernet_overlock-s_8xb2-160k_ade20k-512x512.py'))
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)
    warmup, poly = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and (warmup.begin, warmup.end) == (0, 1500)
    assert poly.type == 'PolyLR' and (poly.begin, poly.end, poly.power) == (0, 160000, 1.0)  # spans the warm-up
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 2
    assert cfg.model.auxiliary_head.type == 'FCNHead' and cfg.model.decode_head.num_classes == 150


@pytest.mark.parametrize('config', ['_smoke_/cascade-mask-rcnn_overlock-pico_fpn_1xb8-smoke_shapes-coco.py',
                                    '_smoke_/upernet_overlock-pico_1xb8-smoke_shapes-128x128.py'])
def test_no_weight_decay_on_norms_rpb_layer_scales(config):
    """The smoke configs' opt-in rule (configs/_base_/overlock_paramwise_norms-scales.py) exempts exactly the intended
    tensors."""
    cfg = Config.fromfile(osp.join(CONFIG_DIR, config))
    model, _ = build_model(cfg, init=False)  # no pretrained download
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): group['weight_decay'] for group in optim_wrapper.optimizer.param_groups for p in group['params']}
    exempt = set()
    for module in model.modules():
        if isinstance(module, (_BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm, GRN, LayerScale)):
            exempt.update(id(p) for p in module.parameters(recurse=False))
    base = cfg.optim_wrapper.optimizer.weight_decay
    named = dict(model.named_parameters())
    exempt.update(id(p) for name, p in named.items() if re.search(r'\.rpb[12]$', name))
    assert any('rpb' in n for n in named) and any('.ls1.' in n for n in named)
    for name, param in named.items():
        assert decay[id(param)] == (0.0 if id(param) in exempt else base), name
