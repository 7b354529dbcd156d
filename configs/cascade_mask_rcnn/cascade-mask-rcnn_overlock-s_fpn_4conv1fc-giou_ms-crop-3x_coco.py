# Cascade Mask R-CNN + FPN with OverLoCK-S, 3x, 4conv1fc heads with GIoU, multi-scale + crop (see the -t config for the
# recipe, the mmdet config it mirrors and where it deviates). Drop path 0.4, the authors' detection rate for OverLoCK-S.
_base_ = ['./cascade-mask-rcnn_overlock-t_fpn_4conv1fc-giou_ms-crop-3x_coco.py']

checkpoint = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_s_in1k_224.pth'  # noqa: E501
model = dict(
    backbone=dict(arch='s', drop_path_rate=0.4, init_cfg=dict(checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 448, 640]))
