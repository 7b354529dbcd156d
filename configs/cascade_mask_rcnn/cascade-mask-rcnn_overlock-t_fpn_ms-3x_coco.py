# Cascade Mask R-CNN + FPN with OverLoCK-T, multi-scale 3x, on mmdet's standard cascade heads (Shared2FCBBoxHead,
# class-agnostic smooth-L1 regression, 3 stages at IoU 0.5 / 0.6 / 0.7): the authors' Mask R-CNN 3x recipe unchanged
# otherwise (multi-scale + crop, 36 epochs, AdamW lr 1e-4 / wd 0.05 with their no-decay rule, drop path 0.2, SyncBN).
# A lighter detector than the paper's; its numbers are not comparable with the paper's Cascade Mask R-CNN table, whose
# rows use 4conv1fc + GIoU heads: cascade-mask-rcnn_overlock-t_fpn_4conv1fc-giou_ms-crop-3x_coco.py is that recipe.
# The tools' complexity and speed records (benchmarks/) were measured with this config.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    '../_base_/datasets/coco_instance_ms-crop.py',
    '../_base_/schedules/overlock_adamw_ms-3x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmoverlock'], allow_failed_imports=False)

checkpoint = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_t_in1k_224.pth'  # noqa: E501
model = dict(
    backbone=dict(
        _delete_=True,
        type='OverLoCK',
        arch='t',
        out_indices=(0, 1, 2, 3),
        overview_fusion=True,
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 384, 640]))

sync_bn = 'torch'
default_hooks = dict(
    checkpoint=dict(type='ResumableCheckpointHook', interval=1, max_keep_ckpts=1, save_best='auto'))
