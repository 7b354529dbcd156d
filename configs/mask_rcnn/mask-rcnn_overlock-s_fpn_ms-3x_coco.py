# Mask R-CNN + FPN with OverLoCK-S, multi-scale 3x (authors: AP^b 51.0, AP^m 45.0; maskrcnn3x_overlock_small_coco.pth).
# Drop path 0.4 as in the authors' config.
_base_ = ['./mask-rcnn_overlock-t_fpn_ms-3x_coco.py']

checkpoint = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_s_in1k_224.pth'  # noqa: E501
model = dict(
    backbone=dict(arch='s', drop_path_rate=0.4, init_cfg=dict(checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 448, 640]))
