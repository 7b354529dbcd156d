# Cascade Mask R-CNN + FPN with OverLoCK-B, multi-scale 3x, on mmdet's standard cascade heads (see the -t config;
# not comparable with the paper's Cascade table: use the _4conv1fc-giou_ms-crop-3x config for that). Drop path 0.6,
# the authors' Mask R-CNN 3x rate for OverLoCK-B.
_base_ = ['./cascade-mask-rcnn_overlock-t_fpn_ms-3x_coco.py']

checkpoint = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_b_in1k_224.pth'  # noqa: E501
model = dict(
    backbone=dict(arch='b', drop_path_rate=0.6, init_cfg=dict(checkpoint=checkpoint)),
    neck=dict(in_channels=[80, 160, 528, 720]))
