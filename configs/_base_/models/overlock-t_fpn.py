# OverLoCK-T in the authors' detection form in front of an FPN: the pieces every OverLoCK COCO config shares.
# A config lists this file among its bases (beside an mmdet model base) and writes
#   model = dict(backbone=_base_.overlock_backbone, neck=dict(in_channels=_base_.overlock_fpn_in_channels))
#   default_hooks = dict(checkpoint=_base_.overlock_checkpoint_hook)
# The S and B configs inherit a T config and override `arch`, `drop_path_rate`, the checkpoint and the FPN widths.
custom_imports = dict(imports=['mmoverlock'], allow_failed_imports=False)

checkpoint = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_t_in1k_224.pth'  # noqa: E501
# overview_fusion=True: level 3 also receives the Overview-Net context through h_proj (the authors' detection form).
overlock_backbone = dict(
    _delete_=True,
    type='OverLoCK',
    arch='t',
    out_indices=(0, 1, 2, 3),
    overview_fusion=True,
    drop_path_rate=0.2,
    init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
overlock_fpn_in_channels = [64, 128, 384, 640]

# The authors convert every BatchNorm of the backbone to SyncBatchNorm when training distributed (2 images per GPU).
sync_bn = 'torch'
# They keep the latest checkpoint and the best one (by the first metric, COCO bbox mAP); written atomically.
overlock_checkpoint_hook = dict(type='ResumableCheckpointHook', interval=1, max_keep_ckpts=1, save_best='auto')
