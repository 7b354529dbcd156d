# Cascade Mask R-CNN + FPN with OverLoCK-S, multi-scale 3x.
# Drop path 0.4: no authors' cascade config exists, and stochastic depth is a property of the backbone's depth and of
# the schedule length rather than of the heads, so we keep the rate the authors chose for OverLoCK-S in their Mask R-CNN
# 3x config (same backbone, same 36-epoch schedule, same augmentation).
_base_ = ['./cascade-mask-rcnn_overlock-t_fpn_ms-3x_coco.py']

checkpoint = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_s_in1k_224.pth'  # noqa: E501
model = dict(
    backbone=dict(arch='s', drop_path_rate=0.4, init_cfg=dict(checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 448, 640]))
