# Mask R-CNN + FPN with OverLoCK-T, 1x schedule: the authors' released COCO detector (their README: AP^b 48.3, AP^m 43.3;
# maskrcnn1x_overlock_tiny_coco.pth evaluates with this config after tools/model_converters/convert_checkpoint.py).
# The authors' recipe unchanged (tests/test_configs/test_recipes.py compares it item by item): backbone in detection
# form, drop path 0.2, AdamW lr 2e-4 / wd 0.05 with their no-decay rule, 8 GPUs x 2 images, fp32, SyncBN, one
# checkpoint kept plus the best (../_base_/models/overlock-t_fpn.py).
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    '../_base_/schedules/overlock_adamw_1x.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/models/overlock-t_fpn.py',
]

model = dict(backbone=_base_.overlock_backbone, neck=dict(in_channels=_base_.overlock_channels))
default_hooks = dict(checkpoint=_base_.overlock_checkpoint_hook)
