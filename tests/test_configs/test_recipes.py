"""The reproduction configs equal the authors' released recipes item by item, and the Cascade configs equal the recipe
family they document.

The authors' values (their mmdet 2.28 Mask R-CNN and mmseg 0.30 UperNet configs, translated to mmdet 3 / mmseg 1)
are written out below as a table, one entry per config. Each entry maps a dotted path in the merged config to the
value it must hold; dicts and lists compare exactly (an added key is a change too). The last tests check the parts
whose meaning a value alone does not show: the learning-rate curve, the no-decay rule on real parameter names, and
the ADE20K test-time resize.
"""
import copy
import os.path as osp
import warnings
from typing import Any, Dict, Iterator, List, NamedTuple, Tuple

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, PARAM_SCHEDULERS, init_default_scope

from _helpers import CONFIG_DIR, SMOKE_DET, SMOKE_SEG, all_configs

RELEASE = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_{}_in1k_224.pth'


class Variant(NamedTuple):
    """One OverLoCK variant as the authors fine-tune it."""
    arch: str
    channels: Tuple[int, int, int, int]  # the four output levels: D0, D1, D2 + D3/4, D3 + D3/4
    det_drop_path: float  # Mask R-CNN 1x and 3x
    seg_drop_path: float  # UperNet 160k


VARIANTS = (
    Variant('t', (64, 128, 384, 640), 0.2, 0.2),
    Variant('s', (64, 128, 448, 640), 0.4, 0.3),
    Variant('b', (80, 160, 528, 720), 0.6, 0.5),
)

# Their no-weight-decay rule: substrings of the parameter name, nothing else.
AUTHORS_NO_DECAY = {'custom_keys': {'absolute_pos_embed': {'decay_mult': 0.0},
                                    'relative_position_bias_table': {'decay_mult': 0.0},
                                    'norm': {'decay_mult': 0.0}}}

# ---------------------------------------------------------------- COCO (mmdet)
COCO_MEAN_STD = {'mean': [123.675, 116.28, 103.53], 'std': [58.395, 57.12, 57.375]}
DET_PREPROCESSOR = {'type': 'DetDataPreprocessor', **COCO_MEAN_STD, 'bgr_to_rgb': True, 'pad_mask': True,
                    'pad_size_divisor': 32}
SHORT_SIDES_480_800 = [[1333, s] for s in range(480, 801, 32)]
DET_TRAIN_1X = [
    {'type': 'LoadImageFromFile', 'backend_args': None},
    {'type': 'LoadAnnotations', 'with_bbox': True, 'with_mask': True},
    {'type': 'Resize', 'scale': [1333, 800], 'keep_ratio': True},
    {'type': 'RandomFlip', 'prob': 0.5},
    {'type': 'PackDetInputs'},
]
DET_TRAIN_MS_CROP = [
    {'type': 'LoadImageFromFile', 'backend_args': None},
    {'type': 'LoadAnnotations', 'with_bbox': True, 'with_mask': True},
    {'type': 'RandomFlip', 'prob': 0.5},
    {'type': 'RandomChoice', 'transforms': [
        [{'type': 'RandomChoiceResize', 'scales': SHORT_SIDES_480_800, 'keep_ratio': True}],
        [{'type': 'RandomChoiceResize', 'scales': [[1333, 400], [1333, 500], [1333, 600]], 'keep_ratio': True},
         {'type': 'RandomCrop', 'crop_type': 'absolute_range', 'crop_size': [384, 600], 'allow_negative_crop': True},
         {'type': 'RandomChoiceResize', 'scales': SHORT_SIDES_480_800, 'keep_ratio': True}],
    ]},
    {'type': 'PackDetInputs'},
]
DET_TEST = [
    {'type': 'LoadImageFromFile', 'backend_args': None},
    {'type': 'Resize', 'scale': [1333, 800], 'keep_ratio': True},
    {'type': 'LoadAnnotations', 'with_bbox': True, 'with_mask': True},
    {'type': 'PackDetInputs', 'meta_keys': ['img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor']},
]
MASK_HEAD = {'type': 'FCNMaskHead', 'num_convs': 4, 'in_channels': 256, 'conv_out_channels': 256, 'num_classes': 80,
             'loss_mask': {'type': 'CrossEntropyLoss', 'use_mask': True, 'loss_weight': 1.0}}
CASCADE_STDS = ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])


def _warmup_then_steps(epochs: int, steps: List[int]) -> list:
    return [{'type': 'LinearLR', 'start_factor': 0.001, 'by_epoch': False, 'begin': 0, 'end': 500},
            {'type': 'MultiStepLR', 'begin': 0, 'end': epochs, 'by_epoch': True, 'milestones': steps, 'gamma': 0.1}]


def _coco_common(v: Variant, epochs: int, steps: List[int], lr: float, train_pipeline: list) -> Dict[str, Any]:
    """What every COCO config shares: backbone, FPN, optimiser, schedule, batch, pipelines, checkpoints."""
    return {
        'default_scope': 'mmdet',
        'model.data_preprocessor': DET_PREPROCESSOR,
        'model.backbone': {'type': 'OverLoCK', 'arch': v.arch, 'out_indices': [0, 1, 2, 3], 'overview_fusion': True,
                           'drop_path_rate': v.det_drop_path,
                           'init_cfg': {'type': 'Pretrained', 'checkpoint': RELEASE.format(v.arch)}},
        'model.neck': {'type': 'FPN', 'in_channels': list(v.channels), 'out_channels': 256, 'num_outs': 5},
        'optim_wrapper': {'type': 'OptimWrapper',
                          'optimizer': {'type': 'AdamW', 'lr': lr, 'betas': [0.9, 0.999], 'weight_decay': 0.05},
                          'paramwise_cfg': AUTHORS_NO_DECAY},
        'param_scheduler': _warmup_then_steps(epochs, steps),
        'train_cfg': {'type': 'EpochBasedTrainLoop', 'max_epochs': epochs, 'val_interval': 1},
        'train_dataloader.batch_size': 2,
        'auto_scale_lr': {'enable': False, 'base_batch_size': 16},  # 8 GPUs x 2 images
        'train_dataloader.dataset.pipeline': train_pipeline,
        'val_dataloader.dataset.pipeline': DET_TEST,
        'test_dataloader.dataset.pipeline': DET_TEST,
        'val_evaluator.metric': ['bbox', 'segm'],
        # the authors' CheckpointHook settings; ResumableCheckpointHook saves the same files, atomically
        'default_hooks.checkpoint': {'type': 'ResumableCheckpointHook', 'interval': 1, 'max_keep_ckpts': 1,
                                     'save_best': 'auto'},
        'sync_bn': 'torch',
    }


def mask_rcnn_recipe(v: Variant, schedule: str) -> Dict[str, Any]:
    """The authors' Mask R-CNN: mmdet's R50-FPN heads, 1x (lr 2e-4) or multi-scale 3x (lr 1e-4)."""
    if schedule == '1x':
        recipe = _coco_common(v, 12, [8, 11], 2e-4, DET_TRAIN_1X)
    else:
        recipe = _coco_common(v, 36, [27, 33], 1e-4, DET_TRAIN_MS_CROP)
    recipe.update({
        'model.type': 'MaskRCNN',
        'model.roi_head.bbox_head.type': 'Shared2FCBBoxHead',
        'model.roi_head.bbox_head.num_classes': 80,
        'model.roi_head.bbox_head.reg_class_agnostic': False,
        'model.roi_head.bbox_head.loss_bbox': {'type': 'L1Loss', 'loss_weight': 1.0},
        'model.roi_head.mask_head': MASK_HEAD,
    })
    return recipe


def cascade_4conv1fc_giou_recipe(v: Variant) -> Dict[str, Any]:
    """mmdet's Swin/ConvNeXt Cascade Mask R-CNN 3x family with OverLoCK and the authors' 3x optimiser."""
    recipe = _coco_common(v, 36, [27, 33], 1e-4, DET_TRAIN_MS_CROP)
    head = {'type': 'Shared4Conv1FCBBoxHead', 'in_channels': 256, 'conv_out_channels': 256, 'fc_out_channels': 1024,
            'roi_feat_size': 7, 'num_classes': 80, 'reg_class_agnostic': False, 'reg_decoded_bbox': True,
            'norm_cfg': {'type': 'SyncBN', 'requires_grad': True},
            'loss_cls': {'type': 'CrossEntropyLoss', 'use_sigmoid': False, 'loss_weight': 1.0},
            'loss_bbox': {'type': 'GIoULoss', 'loss_weight': 10.0}}
    recipe.update({
        'model.type': 'CascadeRCNN',
        'model.roi_head.stage_loss_weights': [1, 0.5, 0.25],
        'model.roi_head.bbox_head': [
            dict(head, bbox_coder={'type': 'DeltaXYWHBBoxCoder', 'target_means': [0.0] * 4, 'target_stds': stds})
            for stds in CASCADE_STDS],
        'model.roi_head.mask_head': MASK_HEAD,
        'model.train_cfg.rcnn.0.assigner.pos_iou_thr': 0.5,
        'model.train_cfg.rcnn.1.assigner.pos_iou_thr': 0.6,
        'model.train_cfg.rcnn.2.assigner.pos_iou_thr': 0.7,
    })
    return recipe


def cascade_plain_recipe(v: Variant) -> Dict[str, Any]:
    """The lighter Cascade configs: the authors' Mask R-CNN 3x recipe on mmdet's standard cascade heads."""
    recipe = _coco_common(v, 36, [27, 33], 1e-4, DET_TRAIN_MS_CROP)
    recipe.update({
        'model.type': 'CascadeRCNN',
        'model.roi_head.stage_loss_weights': [1, 0.5, 0.25],
        **{f'model.roi_head.bbox_head.{i}.type': 'Shared2FCBBoxHead' for i in range(3)},
        **{f'model.roi_head.bbox_head.{i}.loss_bbox': {'type': 'SmoothL1Loss', 'beta': 1.0, 'loss_weight': 1.0}
           for i in range(3)},
        'model.roi_head.mask_head': MASK_HEAD,
    })
    return recipe


# ---------------------------------------------------------------- ADE20K (mmseg)
SEG_TRAIN = [
    {'type': 'LoadImageFromFile'},
    {'type': 'LoadAnnotations', 'reduce_zero_label': True},
    {'type': 'RandomResize', 'scale': [2048, 512], 'ratio_range': [0.5, 2.0], 'keep_ratio': True},
    {'type': 'RandomCrop', 'crop_size': [512, 512], 'cat_max_ratio': 0.75},
    {'type': 'RandomFlip', 'prob': 0.5},
    {'type': 'PhotoMetricDistortion'},
    {'type': 'PackSegInputs'},
]
SEG_TEST = [
    {'type': 'LoadImageFromFile'},
    {'type': 'Resize', 'scale': [2048, 512], 'keep_ratio': True},
    {'type': 'ResizeToMultiple', 'size_divisor': 32, 'interpolation': 'bicubic'},
    {'type': 'LoadAnnotations', 'reduce_zero_label': True},
    {'type': 'PackSegInputs'},
]
SYNC_BN = {'type': 'SyncBN', 'requires_grad': True}
CE = {'type': 'CrossEntropyLoss', 'use_sigmoid': False}


def upernet_recipe(v: Variant) -> Dict[str, Any]:
    """The authors' UperNet 160k on ADE20K."""
    return {
        'default_scope': 'mmseg',
        'model.type': 'EncoderDecoder',
        'model.data_preprocessor': {'type': 'SegDataPreProcessor', **COCO_MEAN_STD, 'bgr_to_rgb': True, 'pad_val': 0,
                                    'seg_pad_val': 255, 'size': [512, 512]},
        'model.pretrained': None,
        'model.backbone': {'type': 'OverLoCK', 'arch': v.arch, 'out_indices': [0, 1, 2, 3], 'overview_fusion': False,
                           'drop_path_rate': v.seg_drop_path,
                           'init_cfg': {'type': 'Pretrained', 'checkpoint': RELEASE.format(v.arch)}},
        'model.decode_head': {'type': 'UPerHead', 'in_channels': list(v.channels), 'in_index': [0, 1, 2, 3],
                              'pool_scales': [1, 2, 3, 6], 'channels': 512, 'dropout_ratio': 0.1, 'num_classes': 150,
                              'norm_cfg': SYNC_BN, 'align_corners': False,
                              'loss_decode': dict(CE, loss_weight=1.0)},
        'model.auxiliary_head': {'type': 'FCNHead', 'in_channels': v.channels[2], 'in_index': 2, 'channels': 256,
                                 'num_convs': 1, 'concat_input': False, 'dropout_ratio': 0.1, 'num_classes': 150,
                                 'norm_cfg': SYNC_BN, 'align_corners': False,
                                 'loss_decode': dict(CE, loss_weight=0.4)},
        'model.test_cfg': {'mode': 'whole'},
        'optim_wrapper': {'type': 'OptimWrapper',
                          'optimizer': {'type': 'AdamW', 'lr': 6e-5, 'betas': [0.9, 0.999], 'weight_decay': 0.01},
                          'paramwise_cfg': AUTHORS_NO_DECAY},
        'param_scheduler': [
            {'type': 'LinearLR', 'start_factor': 1e-6, 'by_epoch': False, 'begin': 0, 'end': 1500},
            {'type': 'PolyLR', 'eta_min': 0.0, 'power': 1.0, 'begin': 0, 'end': 160000, 'by_epoch': False}],
        'train_cfg': {'type': 'IterBasedTrainLoop', 'max_iters': 160000, 'val_interval': 8000},
        'train_dataloader.batch_size': 2,  # x 8 GPUs
        'train_dataloader.dataset.pipeline': SEG_TRAIN,
        'val_dataloader.batch_size': 1,
        'val_dataloader.dataset.pipeline': SEG_TEST,
        'test_dataloader.dataset.pipeline': SEG_TEST,
        'val_evaluator': {'type': 'IoUMetric', 'iou_metrics': ['mIoU']},
        'default_hooks.checkpoint': {'type': 'ResumableCheckpointHook', 'by_epoch': False, 'interval': 8000,
                                     'max_keep_ckpts': 1, 'save_best': 'mIoU'},
        'sync_bn': 'torch',
    }


RECIPES: Dict[str, Dict[str, Any]] = {}
for _v in VARIANTS:
    RECIPES[f'mask_rcnn/mask-rcnn_overlock-{_v.arch}_fpn_1x_coco.py'] = mask_rcnn_recipe(_v, '1x')
    RECIPES[f'mask_rcnn/mask-rcnn_overlock-{_v.arch}_fpn_ms-3x_coco.py'] = mask_rcnn_recipe(_v, '3x')
    RECIPES[f'upernet/upernet_overlock-{_v.arch}_8xb2-160k_ade20k-512x512.py'] = upernet_recipe(_v)
    RECIPES[f'cascade_mask_rcnn/cascade-mask-rcnn_overlock-{_v.arch}_fpn_4conv1fc-giou_ms-crop-3x_coco.py'] = \
        cascade_4conv1fc_giou_recipe(_v)
    RECIPES[f'cascade_mask_rcnn/cascade-mask-rcnn_overlock-{_v.arch}_fpn_ms-3x_coco.py'] = cascade_plain_recipe(_v)


# ---------------------------------------------------------------- comparing a merged config with a recipe
MISSING = object()


def plain(value):
    """A config value as plain data: dicts without mmengine's ``_scope_`` marker, tuples as lists."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def lookup(cfg: Config, path: str):
    node = cfg
    for part in path.split('.'):
        if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, (dict, Config)) and part in node:
            node = node[part]
        else:
            return MISSING
    return plain(node)


def differences(expected, actual, where: str) -> List[str]:
    """Every place where ``actual`` differs from ``expected``, as 'path: expected X, got Y'."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = [f'{where}.{k}: unexpected key (value {actual[k]!r})' for k in actual if k not in expected]
        for key, value in expected.items():
            found += differences(value, actual.get(key, MISSING), f'{where}.{key}')
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f'{where}.{i}')]
    if actual is MISSING:
        return [f'{where}: missing (expected {expected!r})']
    if type(expected) is not type(actual) and not (isinstance(expected, float) and isinstance(actual, int)):
        return [f'{where}: expected {expected!r}, got {actual!r}']
    return [] if expected == actual else [f'{where}: expected {expected!r}, got {actual!r}']


def recipe_differences(cfg: Config, recipe: Dict[str, Any]) -> List[str]:
    return [d for path, value in recipe.items() for d in differences(value, lookup(cfg, path), path)]


def _load(name: str) -> Config:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return Config.fromfile(osp.join(CONFIG_DIR, name))


def test_every_config_has_a_recipe():
    names = {osp.relpath(c, CONFIG_DIR) for c in all_configs() if '_smoke_' not in c}
    assert names == set(RECIPES), (sorted(names - set(RECIPES)), sorted(set(RECIPES) - names))


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_config_equals_recipe(name):
    assert recipe_differences(_load(name), RECIPES[name]) == []


# ---------------------------------------------------------------- the comparison catches every change
def leaves(value, path: str) -> Iterator[Tuple[str, Any]]:
    """Every scalar of a recipe value with its dotted path (an empty container counts as one)."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from leaves(item, f'{path}.{key}')
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            yield from leaves(item, f'{path}.{i}')
    else:
        yield path, value


def changed(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + '_changed'
    if isinstance(value, list):
        return value + [0]
    if isinstance(value, dict):
        return dict(value, changed=True)
    return 'changed'  # None


def assign(node, parts: List[str], value):
    """Set ``node[parts[0]][parts[1]]... = value`` in a merged config, rebuilding tuples on the way; returns node."""
    key = int(parts[0]) if isinstance(node, (list, tuple)) else parts[0]
    child = value if len(parts) == 1 else assign(node[key], parts[1:], value)
    if isinstance(node, tuple):
        return node[:key] + (child,) + node[key + 1:]
    node[key] = child
    return node


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_any_change_to_a_listed_value_is_caught(name):
    cfg, recipe = _load(name), RECIPES[name]
    count = 0
    for item, expected in recipe.items():
        top = item.split('.')[0]
        for path, value in leaves(expected, item):
            saved = copy.deepcopy(cfg[top])
            assign(cfg, path.split('.'), changed(value))
            found = recipe_differences(cfg, recipe)
            cfg[top] = saved
            assert found and all(d.startswith(path) for d in found), (path, found)
            count += 1
    assert count >= 40 and recipe_differences(cfg, recipe) == []
    # An added key is a change too, e.g. opting into the broader no-decay rule.
    cfg.optim_wrapper.paramwise_cfg.norm_decay_mult = 0.0
    assert recipe_differences(cfg, recipe) == [
        'optim_wrapper.paramwise_cfg.norm_decay_mult: unexpected key (value 0.0)']


# ---------------------------------------------------------------- what the values mean
def test_upernet_learning_rate_follows_the_authors_mmcv_schedule():
    """mmcv 1.x gave the authors lr(t) = 6e-5 * (1 - t / 160000) * warm-up(t), warm-up(t) = 1 - (1 - t / 1500)
    * (1 - 1e-6) for t < 1500. Our schedulers, stepped over all 160k iterations, stay within 1e-3 of the base rate
    of it: measured 6.6e-4 (mmengine's LinearLR reaches its end factor one iteration before mmcv's warm-up did); the
    poly decay started after the warm-up, as in mmseg 1.x's own recipes, would be 1.0e-2 off."""
    cfg = _load('upernet/upernet_overlock-t_8xb2-160k_ade20k-512x512.py')
    base_lr = cfg.optim_wrapper.optimizer.lr
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer)) for s in cfg.param_scheduler]
    iters = np.arange(cfg.train_cfg.max_iters)
    authors = base_lr * (1 - iters / 160000) * np.where(iters < 1500, 1 - (1 - iters / 1500) * (1 - 1e-6), 1.0)
    ours = np.empty_like(authors)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # "scheduler.step() before optimizer.step()"
        for t in iters:
            ours[t] = optimizer.param_groups[0]['lr']
            for scheduler in schedulers:
                scheduler.step()
    assert np.abs(ours - authors).max() / base_lr < 1e-3


def _built(config: str, optim_source: str):
    """A smoke config's model (random init) with the optimiser of a reproduction config."""
    cfg, recipe = _load(config), _load(optim_source)
    init_default_scope(cfg.default_scope)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    return model, build_optim_wrapper(model, recipe.optim_wrapper), recipe.optim_wrapper.optimizer.weight_decay


@pytest.mark.parametrize('config,optim_source,decayed_markers', [
    (SMOKE_DET, 'cascade_mask_rcnn/cascade-mask-rcnn_overlock-t_fpn_4conv1fc-giou_ms-crop-3x_coco.py',
     ('origin_bn', '.rpb1', '.ls1.', 'blocks1.0.proj.0.weight', '.gamma', 'h_proj.1.')),
    (SMOKE_SEG, 'upernet/upernet_overlock-t_8xb2-160k_ade20k-512x512.py',
     ('origin_bn', '.rpb1', '.ls1.', 'blocks1.0.proj.0.weight', '.gamma', 'decode_head.fpn_bottleneck.bn.')),
], ids=['detection', 'segmentation'])
def test_authors_no_decay_rule_exempts_exactly_names_with_norm(config, optim_source, decayed_markers):
    """On a real OverLoCK detector / segmentor: weight decay 0 exactly where the name contains 'norm' (OverLoCK has
    no Swin position tables); BatchNorms, the RepConvBlocks' LayerNorm, rpb, layer scales, GRN and the heads' norms
    decay, as in the authors' runs."""
    model, optim_wrapper, base = _built(config, optim_source)
    decay = {id(p): g['weight_decay'] for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    named = dict(model.named_parameters())
    for name, param in named.items():
        assert decay[id(param)] == (0.0 if 'norm' in name else base), name
    assert any('extra_norm' in n for n in named) and any('.norm1.' in n for n in named)
    for marker in decayed_markers:
        assert any(marker in n for n in named), marker  # present, hence decayed by the loop above


def test_upernet_test_pipeline_resizes_to_a_multiple_of_32_bicubic(tmp_path):
    """(2048, 512) keep-ratio, then each side up to the next multiple of 32 with bicubic interpolation; the label map
    keeps the original size (mmseg 1 evaluates at the original size)."""
    from mmcv.transforms import Compose

    cfg = _load('upernet/upernet_overlock-t_8xb2-160k_ade20k-512x512.py')
    init_default_scope('mmseg')
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'img.png'), image)
    cv2.imwrite(str(tmp_path / 'seg.png'), rng.integers(0, 151, (375, 500), dtype=np.uint8))
    pipeline = Compose(cfg.test_dataloader.dataset.pipeline)
    out = pipeline(dict(img_path=str(tmp_path / 'img.png'), seg_map_path=str(tmp_path / 'seg.png'),
                        reduce_zero_label=True, seg_fields=[]))
    # 500x375 scaled by min(2048 / 500, 512 / 375) is 683x512, then 704x512.
    assert tuple(out['inputs'].shape) == (3, 512, 704)
    assert out['data_samples'].img_shape == (512, 704) and out['data_samples'].ori_shape == (375, 500)
    assert tuple(out['data_samples'].gt_sem_seg.data.shape) == (1, 375, 500)

    from mmcv import imresize
    resized = imresize(image, (683, 512), interpolation='bilinear')  # mmseg's Resize default
    bicubic = imresize(resized, (704, 512), interpolation='bicubic')
    bilinear = imresize(resized, (704, 512), interpolation='bilinear')
    got = out['inputs'].permute(1, 2, 0).numpy()
    assert np.array_equal(got, bicubic) and not np.array_equal(got, bilinear)
