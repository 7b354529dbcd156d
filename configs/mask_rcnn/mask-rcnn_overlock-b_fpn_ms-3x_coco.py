# Mask R-CNN + FPN with OverLoCK-B, multi-scale 3x (authors: AP^b 51.4, AP^m 45.3; maskrcnn3x_overlock_base_coco.pth).
# Drop path 0.6 as in the authors' config.
_base_ = ['./mask-rcnn_overlock-t_fpn_ms-3x_coco.py']

checkpoint = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_b_in1k_224.pth'  # noqa: E501
model = dict(
    backbone=dict(arch='b', drop_path_rate=0.6, init_cfg=dict(checkpoint=checkpoint)),
    neck=dict(in_channels=[80, 160, 528, 720]))
