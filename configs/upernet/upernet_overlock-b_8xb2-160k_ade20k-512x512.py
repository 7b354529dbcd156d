# UperNet with OverLoCK-B on ADE20K (authors: mIoU 51.7; upernet_overlock_base_ade20k.pth).
# Drop path 0.5 as in the authors' segmentation config.
_base_ = ['./upernet_overlock-t_8xb2-160k_ade20k-512x512.py']

checkpoint = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_b_in1k_224.pth'  # noqa: E501
model = dict(
    backbone=dict(arch='b', drop_path_rate=0.5, init_cfg=dict(checkpoint=checkpoint)),
    decode_head=dict(in_channels=[80, 160, 528, 720]),
    auxiliary_head=dict(in_channels=528))
