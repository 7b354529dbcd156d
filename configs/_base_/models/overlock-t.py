# OverLoCK-T as an mmdet / mmseg backbone: the pieces every OverLoCK release config shares, in segmentation form
# (overview_fusion=False; overlock-t_fpn.py turns on the detection form). A config lists this file (or
# overlock-t_fpn.py) among its bases, beside an mmdet / mmseg model base, and writes
#   model = dict(backbone=_base_.overlock_backbone, ...=dict(in_channels=_base_.overlock_channels))
# The S and B configs inherit a T config and override `arch`, `drop_path_rate`, the checkpoint and the widths.
custom_imports = dict(imports=['mmoverlock'], allow_failed_imports=False)

checkpoint = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_t_in1k_224.pth'  # noqa: E501
overlock_backbone = dict(
    _delete_=True,
    type='OverLoCK',
    arch='t',
    out_indices=(0, 1, 2, 3),
    overview_fusion=False,
    drop_path_rate=0.2,
    init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
# Channels of the four levels: [D0, D1, D2 + D3 / 4, D3 + D3 / 4].
overlock_channels = [64, 128, 384, 640]

# The authors convert every BatchNorm of the backbone to SyncBatchNorm when training distributed (2 images per GPU).
sync_bn = 'torch'
