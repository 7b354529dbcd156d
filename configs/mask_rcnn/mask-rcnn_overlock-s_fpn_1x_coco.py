# Mask R-CNN + FPN with OverLoCK-S, 1x (authors: AP^b 49.4, AP^m 44.0; maskrcnn1x_overlock_small_coco.pth).
# Drop path 0.4 as in the authors' config.
_base_ = ['./mask-rcnn_overlock-t_fpn_1x_coco.py']

checkpoint = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_s_in1k_224.pth'  # noqa: E501
model = dict(
    backbone=dict(arch='s', drop_path_rate=0.4, init_cfg=dict(checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 448, 640]))
