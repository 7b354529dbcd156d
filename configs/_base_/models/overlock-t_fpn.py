# OverLoCK-T in the authors' detection form in front of an FPN: the pieces every OverLoCK COCO config shares.
# A config lists this file among its bases (beside an mmdet model base) and writes
#   model = dict(backbone=_base_.overlock_backbone, neck=dict(in_channels=_base_.overlock_channels))
#   default_hooks = dict(checkpoint=_base_.overlock_checkpoint_hook)
# The S and B configs inherit a T config and override `arch`, `drop_path_rate`, the checkpoint and the FPN widths.
_base_ = ['./overlock-t.py']

# overview_fusion=True: level 3 also receives the Overview-Net context through h_proj (the authors' detection form).
overlock_backbone = dict(overview_fusion=True)

# They keep the latest checkpoint and the best one (by the first metric, COCO bbox mAP); written atomically.
overlock_checkpoint_hook = dict(type='ResumableCheckpointHook', interval=1, max_keep_ckpts=1, save_best='auto')
