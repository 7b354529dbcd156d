# Cascade Mask R-CNN + FPN with OverLoCK-T, multi-scale 3x: the paper's detector. The authors released no config or
# checkpoint for it, so this follows their Mask R-CNN 3x recipe exactly (multi-scale + crop augmentation, 36 epochs,
# AdamW lr 1e-4 / wd 0.05 at batch 16, no decay on norms / rpb / layer scales, SyncBN) on mmdet's standard cascade
# heads (3 stages, IoU 0.5 / 0.6 / 0.7), with drop path 0.2.
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
