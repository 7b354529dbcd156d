# Mask R-CNN + FPN with OverLoCK-T, multi-scale 3x: the authors' released 3x detector (their README: AP^b 49.6,
# AP^m 43.9; maskrcnn3x_overlock_tiny_coco.pth). The authors' recipe unchanged: multi-scale + crop augmentation,
# 36 epochs, AdamW lr 1e-4 / wd 0.05 with their no-decay rule, drop path 0.2, fp32, one checkpoint kept plus the best.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
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
