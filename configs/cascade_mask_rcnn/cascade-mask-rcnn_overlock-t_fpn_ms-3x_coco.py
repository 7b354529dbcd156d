# Cascade Mask R-CNN + FPN with OverLoCK-T, multi-scale 3x, on mmdet's standard cascade heads (Shared2FCBBoxHead,
# class-agnostic smooth-L1 regression, 3 stages at IoU 0.5 / 0.6 / 0.7): the authors' Mask R-CNN 3x recipe unchanged
# otherwise (multi-scale + crop, 36 epochs, AdamW lr 1e-4 / wd 0.05 with their no-decay rule, drop path 0.2, SyncBN).
# A lighter detector than the paper's; its numbers are not comparable with the paper's Cascade Mask R-CNN table, whose
# rows use 4conv1fc + GIoU heads: cascade-mask-rcnn_overlock-t_fpn_4conv1fc-giou_ms-crop-3x_coco.py is that recipe.
# The tools' complexity and speed records (benchmarks/) were measured with this config.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    '../_base_/schedules/overlock_adamw_ms-3x.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/models/overlock-t_fpn.py',
]

train_pipeline = _base_.ms_crop_train_pipeline
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
model = dict(backbone=_base_.overlock_backbone, neck=dict(in_channels=_base_.overlock_channels))
default_hooks = dict(checkpoint=_base_.overlock_checkpoint_hook)
