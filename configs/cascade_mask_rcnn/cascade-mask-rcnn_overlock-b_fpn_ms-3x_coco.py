# Cascade Mask R-CNN + FPN with OverLoCK-B, multi-scale 3x.
# Drop path 0.6, the authors' rate for OverLoCK-B in their Mask R-CNN 3x config (same backbone, schedule and
# augmentation; see the -s config for why the Mask R-CNN value carries over).
_base_ = ['./cascade-mask-rcnn_overlock-t_fpn_ms-3x_coco.py']

checkpoint = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_b_in1k_224.pth'  # noqa: E501
model = dict(
    backbone=dict(arch='b', drop_path_rate=0.6, init_cfg=dict(checkpoint=checkpoint)),
    neck=dict(in_channels=[80, 160, 528, 720]))
