# UperNet with OverLoCK-S on ADE20K (authors: mIoU 51.3; upernet_overlock_small_ade20k.pth).
# Drop path 0.3 as in the authors' segmentation config.
_base_ = ['./upernet_overlock-t_8xb2-160k_ade20k-512x512.py']

checkpoint = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_s_in1k_224.pth'  # noqa: E501
model = dict(
    backbone=dict(arch='s', drop_path_rate=0.3, init_cfg=dict(checkpoint=checkpoint)),
    decode_head=dict(in_channels=[64, 128, 448, 640]),
    auxiliary_head=dict(in_channels=448))
