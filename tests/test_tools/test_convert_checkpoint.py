"""The checkpoint converter on synthetic state dicts laid out like the authors' mmdet 2.x / mmseg 0.x releases.

The synthetic "releases" are built from layouts independent of this project's models: the backbone keys and shapes
of the authors' own code (``tests/data/reference/official_state_dict_manifest.json.gz``, detection / segmentation
forms) under ``backbone.``, and the neck / head keys and shapes that mmdet 2.x / mmseg 0.x give the authors' Mask
R-CNN and UperNet configs (``tests/data/authors_release_heads.json``, written from those sources; its README says
where each name comes from). They are wrapped the way mmcv 1.x saved checkpoints (``meta`` with ``CLASSES`` /
``PALETTE`` and versions, ``optimizer``).
"""
import json
import os.path as osp
from collections import OrderedDict

import pytest
import torch

from _helpers import CONFIG_DIR, SMOKE_DET, SMOKE_SEG, TESTS_DIR, run_tool
from mmoverlock.apis import build_model
from mmoverlock.models import checkpoint_conversion
from mmoverlock.models.checkpoint_conversion import compare_with_model, convert_release_checkpoint

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

CONVERTER = 'tools/model_converters/convert_checkpoint.py'

MASK_RCNN_T = osp.join(CONFIG_DIR, 'mask_rcnn', 'mask-rcnn_overlock-t_fpn_1x_coco.py')
UPERNET_T = osp.join(CONFIG_DIR, 'upernet', 'upernet_overlock-t_8xb2-160k_ade20k-512x512.py')
#: Our config and the authors' release (an entry of authors_release_heads.json) per task.
RELEASES = {'det': (MASK_RCNN_T, 'mask_rcnn_overlock_t_coco'), 'seg': (UPERNET_T, 'upernet_overlock_tiny_ade20k')}


def build_model_for(config):
    """The config's model with its constructors' weights."""
    return build_model(config, init=False)[0]


@pytest.fixture(scope='module')
def models():
    return {task: build_model_for(config) for task, (config, _release) in RELEASES.items()}


@pytest.fixture(scope='module')
def release_layouts(official_manifest):
    """Per task, key -> shape of the authors' release: their backbone, then the mmdet 2.x / mmseg 0.x necks and
    heads."""
    with open(osp.join(TESTS_DIR, 'data', 'authors_release_heads.json')) as f:
        heads = json.load(f)
    layouts = {}
    for task, (_config, release) in RELEASES.items():
        spec = heads[release]
        layout = OrderedDict(('backbone.' + key, shape)
                             for key, shape in official_manifest[spec['backbone']]['state_dict'].items())
        for module, keys in spec.items():
            if module != 'backbone':
                layout.update(keys)
        layouts[task] = layout
    return layouts


def authors_release(layout, version, classes, palette=None, key_prefix=''):
    """A checkpoint dict as the authors' mmcv 1.x training saved it, with random tensors of the layout's shapes."""
    gen = torch.Generator().manual_seed(0)
    state = OrderedDict((key_prefix + key, torch.randn(shape, generator=gen) if shape else torch.tensor(3))
                        for key, shape in layout.items())
    meta = dict(CLASSES=classes, config='model = dict(...)', epoch=12, iter=87960, mmcv_version='1.7.2', **version)
    if palette is not None:
        meta['PALETTE'] = palette
    return dict(meta=meta, state_dict=state, optimizer=dict(state={}, param_groups=[dict(lr=0.0002)]))


def coco_release(layout):
    return authors_release(layout, dict(mmdet_version='2.28.2'), classes=tuple(f'class{i}' for i in range(80)))


def ade_release(layout, key_prefix=''):
    return authors_release(layout, dict(mmseg_version='0.30.0'), classes=tuple(f'c{i}' for i in range(150)),
                           palette=[[i, i, i] for i in range(150)], key_prefix=key_prefix)


def test_release_layouts_are_the_documented_ones(release_layouts, official_manifest):
    """The independent lists hold every neck/head module of the two recipes (counted from the mmdet 2.x / mmseg 0.x
    sources: FPN 16, RPN 6, Shared2FC 8, FCN mask 12; UPerHead 74, FCN auxiliary 8)."""
    for task, num_heads in (('det', 42), ('seg', 82)):
        backbone = official_manifest[f"{'detection' if task == 'det' else 'segmentation'}/overlock_t"]['state_dict']
        assert len(release_layouts[task]) == len(backbone) + num_heads


def test_detection_release_needs_no_renames_and_loads_strictly(models, release_layouts, official_manifest):
    release = coco_release(release_layouts['det'])
    converted, report = convert_release_checkpoint(release)
    assert report['task'] == 'mmdet' and report['renamed'] == [] and report['dropped'] == []
    assert report['backbone'] == dict(overview_fusion=True, deploy=False,
                                      num_keys=len(official_manifest['detection/overlock_t']['state_dict']))
    assert report['dropped_entries'] == ['optimizer']
    assert set(converted) == {'state_dict', 'meta'}
    assert converted['meta']['dataset_meta']['classes'] == release['meta']['CLASSES']
    assert converted['meta']['source_mmdet_version'] == '2.28.2'
    assert compare_with_model(converted['state_dict'], models['det']) == dict(missing=[], unexpected=[],
                                                                             shape_mismatch=[])
    models['det'].load_state_dict(converted['state_dict'], strict=True)
    for key, value in release['state_dict'].items():  # converted, not altered
        assert torch.equal(converted['state_dict'][key], value)


def test_segmentation_release_with_wrapper_prefix(models, release_layouts):
    release = ade_release(release_layouts['seg'], key_prefix='module.')
    release['state_dict']['module.ema_backbone_patch_embed1_0_weight'] = torch.zeros(1)
    converted, report = convert_release_checkpoint(release)
    assert report['task'] == 'mmseg' and report['backbone']['overview_fusion'] is False
    assert len(report['renamed']) == len(release['state_dict']) - 1  # all but the dropped EMA key
    assert all(old == 'module.' + new for old, new in report['renamed'])
    assert report['dropped'] == [('module.ema_backbone_patch_embed1_0_weight', 'EMA shadow weights of an mmcv EMAHook')]
    assert converted['meta']['dataset_meta']['palette'][3] == (3, 3, 3)
    assert compare_with_model(converted['state_dict'], models['seg']) == dict(missing=[], unexpected=[],
                                                                             shape_mismatch=[])
    models['seg'].load_state_dict(converted['state_dict'], strict=True)


# A rename rule that a faithful release does not need, planted in the converter: the checks above must notice it.
PLANTED_RENAMES = {
    'det': (r'^neck\.lateral_convs\.', 'neck.lateral_conv.', 'planted: FPN laterals renamed'),
    'seg': (r'^(decode_head\.psp_modules\.\d)\.1\.', r'\1.0.', 'planted: pyramid pooling index shifted'),
}


@pytest.mark.parametrize('task', ['det', 'seg'])
def test_a_planted_rename_fails_the_strict_check(models, release_layouts, monkeypatch, task):
    monkeypatch.setattr(checkpoint_conversion, 'RENAME_RULES',
                        checkpoint_conversion.RENAME_RULES + (PLANTED_RENAMES[task], ))
    release = coco_release(release_layouts[task]) if task == 'det' else ade_release(release_layouts[task])
    converted, report = convert_release_checkpoint(release)
    assert report['renamed'] and all(not old.startswith('backbone.') for old, _new in report['renamed'])
    check = compare_with_model(converted['state_dict'], models[task])
    assert len(check['missing']) == len(check['unexpected']) == len(report['renamed'])
    with pytest.raises(RuntimeError, match='Missing key'):
        models[task].load_state_dict(converted['state_dict'], strict=True)


def test_legacy_head_layout_and_form_mismatch(models, release_layouts):
    """mmdet 1.x heads outside roi_head are renamed; a detection-form backbone in a segmentation config is reported."""
    release = coco_release(release_layouts['det'])
    legacy = OrderedDict((k[len('roi_head.'):] if k.startswith('roi_head.') else k, v)
                         for k, v in release['state_dict'].items())
    converted, report = convert_release_checkpoint({'state_dict': legacy})
    assert {new for _old, new in report['renamed']} == {k for k in release['state_dict'] if k.startswith('roi_head.')}
    models['det'].load_state_dict(converted['state_dict'], strict=True)

    seg_like = {k: v for k, v in converted['state_dict'].items() if k.startswith('backbone.')}
    check = compare_with_model(seg_like, models['seg'])
    assert check['unexpected'] and all(k.startswith(('backbone.h_proj.', 'backbone.extra_norm.4.'))
                                       for k in check['unexpected'])
    assert all(k.startswith(('decode_head.', 'auxiliary_head.')) for k in check['missing'])


def test_cli_on_a_small_checkpoint(tmp_path):
    """End to end through the command line: convert, check against the config (strict), and save a loadable file."""
    model = build_model_for(SMOKE_SEG)
    src = tmp_path / 'release.pth'
    torch.save(dict(meta=dict(CLASSES=('bg', 'a', 'b', 'c', 'd'), mmseg_version='0.30.0'),
                    state_dict=OrderedDict(('module.' + k, v) for k, v in model.state_dict().items())), src)
    out = run_tool([CONVERTER, src, tmp_path / 'converted.pth', '--config', SMOKE_SEG, '--strict',
                    '--report', tmp_path / 'report.json'], cwd=tmp_path)
    assert 'against the config\'s model: 0 missing, 0 unexpected, 0 shape mismatches' in out
    converted = torch.load(tmp_path / 'converted.pth', weights_only=True)
    model.load_state_dict(converted['state_dict'], strict=True)
    assert converted['meta']['dataset_meta']['classes'] == ('bg', 'a', 'b', 'c', 'd')

    with pytest.raises(AssertionError, match='conversion check failed'):
        run_tool([CONVERTER, src, tmp_path / 'bad.pth', '--config', SMOKE_DET, '--strict'], cwd=tmp_path)


def test_cli_strict_fails_on_a_shape_mismatch_alone(tmp_path):
    """Keys all present, one head of another width (a 150-class release for a 5-class config): --strict refuses it,
    and without --strict the report names the tensor and both shapes."""
    model = build_model_for(SMOKE_SEG)
    state = OrderedDict(model.state_dict())
    key = 'decode_head.conv_seg.weight'
    state[key] = torch.zeros((150, ) + tuple(state[key].shape[1:]))
    src = tmp_path / 'release.pth'
    torch.save(dict(meta=dict(mmseg_version='0.30.0'), state_dict=state), src)
    with pytest.raises(AssertionError, match='conversion check failed'):
        run_tool([CONVERTER, src, tmp_path / 'strict.pth', '--config', SMOKE_SEG, '--strict'], cwd=tmp_path)
    assert not (tmp_path / 'strict.pth').exists()
    out = run_tool([CONVERTER, src, tmp_path / 'lenient.pth', '--config', SMOKE_SEG], cwd=tmp_path)
    assert "against the config's model: 0 missing, 0 unexpected, 1 shape mismatches" in out
    expected = list(model.state_dict()[key].shape)
    assert f'shape {key}: checkpoint {[150] + expected[1:]} vs model {expected}' in out
