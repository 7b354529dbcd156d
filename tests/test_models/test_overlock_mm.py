"""OverLoCK inside real mmdet / mmseg models built from the installed packages' base configs."""
import copy

import pytest
import torch
from mmengine.hub import get_config
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope

import mmoverlock  # noqa: F401  (registers OverLoCK)
from _helpers import TINY_ARCH, TINY_CHANNELS


def _train_step_changes_weights(model, data):
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3))
    before = {k: v.detach().clone() for k, v in model.backbone.named_parameters()}
    model.train()
    log_vars = model.train_step(copy.deepcopy(data), optim)
    assert log_vars['loss'].isfinite(), log_vars
    assert all(torch.isfinite(v).all() for v in log_vars.values())
    changed = [k for k, v in model.backbone.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) > 0.5 * len(before), f'only {len(changed)}/{len(before)} backbone tensors changed'
    return log_vars


def test_cascade_mask_rcnn_with_overlock():
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs

    init_default_scope('mmdet')
    cfg = get_config('mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py')
    model_cfg = cfg.model
    model_cfg.backbone = dict(type='OverLoCK', arch=TINY_ARCH, overview_fusion=True, drop_path_rate=0.1)
    model_cfg.neck.in_channels = TINY_CHANNELS
    # Fewer proposals and sampled RoIs than the COCO defaults: the heads, not the backbone, dominate CPU time.
    model_cfg.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=64)
    for stage in model_cfg.train_cfg.rcnn:
        stage.sampler.num = 32
    model_cfg.test_cfg.rpn.update(nms_pre=200, max_per_img=64)
    model_cfg.test_cfg.rcnn.max_per_img = 10
    model = MODELS.build(model_cfg)
    model.init_weights()
    assert model.backbone.out_channels == TINY_CHANNELS

    torch.manual_seed(0)
    packed = demo_mm_inputs(batch_size=2, image_shapes=[(3, 128, 160), (3, 96, 128)], num_items=[3, 2],
                            num_classes=80, with_mask=True)
    data = model.data_preprocessor(packed, training=True)
    losses = model(**data, mode='loss')
    assert {'loss_rpn_cls', 's0.loss_cls', 's2.loss_mask'} <= set(losses)
    _train_step_changes_weights(model, packed)

    model.eval()
    with torch.no_grad():
        results = model.test_step(demo_mm_inputs(batch_size=1, image_shapes=[(3, 128, 160)], with_mask=True))
    pred = results[0].pred_instances
    assert {'bboxes', 'scores', 'labels', 'masks'} <= set(pred.keys())


def test_upernet_with_overlock():
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData

    init_default_scope('mmseg')
    cfg = get_config('mmseg::_base_/models/upernet_r50.py')
    model_cfg = cfg.model
    model_cfg.pretrained = None  # the base config's ResNet weights
    norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs a process group
    model_cfg.backbone = dict(type='OverLoCK', arch=TINY_ARCH, overview_fusion=False, drop_path_rate=0.1)
    model_cfg.decode_head.update(in_channels=TINY_CHANNELS, num_classes=5, norm_cfg=norm_cfg, channels=32)
    model_cfg.auxiliary_head.update(in_channels=TINY_CHANNELS[2], in_index=2, num_classes=5, norm_cfg=norm_cfg,
                                    channels=16)
    model_cfg.data_preprocessor.size = (128, 128)
    model = MODELS.build(model_cfg)
    model.init_weights()

    torch.manual_seed(0)
    packed = dict(inputs=[], data_samples=[])
    for _ in range(2):
        packed['inputs'].append(torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8))
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 5, (1, 128, 128)))
        sample.set_metainfo(dict(img_shape=(128, 128), ori_shape=(128, 128), pad_shape=(128, 128)))
        packed['data_samples'].append(sample)
    data = model.data_preprocessor(packed, training=True)
    losses = model(**data, mode='loss')
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    _train_step_changes_weights(model, packed)

    model.eval()
    with torch.no_grad():
        results = model.test_step(dict(inputs=packed['inputs'][:1], data_samples=packed['data_samples'][:1]))
    assert results[0].pred_sem_seg.data.shape == (1, 128, 128)
