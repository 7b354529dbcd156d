# Mask R-CNN + FPN with OverLoCK-B, 1x (authors: AP^b 49.9, AP^m 44.4; maskrcnn1x_overlock_base_coco.pth).
# Drop path 0.6 as in the authors' config.
_base_ = ['./mask-rcnn_overlock-t_fpn_1x_coco.py']

checkpoint = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_b_in1k_224.pth'  # noqa: E501
model = dict(
    backbone=dict(arch='b', drop_path_rate=0.6, init_cfg=dict(checkpoint=checkpoint)),
    neck=dict(in_channels=[80, 160, 528, 720]))
