# Mask R-CNN + FPN with OverLoCK-T, 1x schedule: the authors' released COCO detector (their README: AP^b 48.3, AP^m 43.3;
# maskrcnn1x_overlock_tiny_coco.pth evaluates with this config after tools/model_converters/convert_checkpoint.py).
# The authors' recipe unchanged (tests/test_configs/test_recipes.py compares it item by item): backbone in detection
# form (overview_fusion=True: level 3 also receives the Overview-Net context through h_proj), drop path 0.2, AdamW
# lr 2e-4 / wd 0.05 with their no-decay rule, 8 GPUs x 2 images, fp32, one checkpoint kept plus the best.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    '../_base_/schedules/overlock_adamw_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmoverlock'], allow_failed_imports=False)

checkpoint = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_t_in1k_224.pth'  # noqa: E501
model = dict(
    backbone=dict(
        _delete_=True,
        type='OverLoCK',
        arch='t',
        out_indices=(0, 1, 2, 3),
        overview_fusion=True,
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 384, 640]))

# The authors convert every BatchNorm of the backbone to SyncBatchNorm when training distributed (2 images per GPU).
sync_bn = 'torch'
# They keep the latest checkpoint and the best one (by the first metric, COCO bbox mAP).
default_hooks = dict(
    checkpoint=dict(type='ResumableCheckpointHook', interval=1, max_keep_ckpts=1, save_best='auto'))
