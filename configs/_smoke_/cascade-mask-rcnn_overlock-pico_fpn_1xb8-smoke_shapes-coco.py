# Smoke config: Cascade Mask R-CNN + FPN with OverLoCK-pico (detection form), trained from scratch on the bundled
# synthetic COCO-format shapes set (tools/misc/generate_data.py: 128x128 images, 4 classes, polygons + RLE masks) on
# the CPU in a few minutes. The real network, slimmed for 2 CPU cores: FPN/RoI width 64, 256-d box FCs, a 2-conv mask
# head, fewer proposals/RoIs per image (at most 3 objects per 128-px image), and torchvision's RoIAlign kernel
# (mmcv's CPU RoIAlign is 3-6x slower and dominated the step time; on GPUs either is fine).
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/models/overlock_pico.py',
    '../_base_/overlock_paramwise_norms-scales.py',
]
custom_imports = dict(imports=['mmoverlock'], allow_failed_imports=False)

num_classes = 4
width = 64
model = dict(
    backbone=dict(_base_.overlock_pico_backbone, overview_fusion=True),
    neck=dict(in_channels={{_base_.overlock_pico_channels}}, out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width, roi_layer=dict(sampling_ratio=1, use_torchvision=True)),
        bbox_head=[
            dict(head, in_channels=width, fc_out_channels=256, num_classes=num_classes)
            for head in _base_.model.roi_head.bbox_head
        ],
        mask_roi_extractor=dict(out_channels=width, roi_layer=dict(sampling_ratio=1, use_torchvision=True)),
        mask_head=dict(num_convs=2, in_channels=width, conv_out_channels=width, num_classes=num_classes)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=100),
        rcnn=[dict(stage, sampler=dict(stage.sampler, num=32)) for stage in _base_.model.train_cfg.rcnn]),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100), rcnn=dict(max_per_img=20)))

# ---------------------------------------------------------------- data: the generated COCO-format shapes set
data_root = 'data/generated/coco/'
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'ring'),
    palette=[(230, 60, 50), (50, 170, 60), (60, 90, 230), (40, 200, 210)])
image_scale = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# ---------------------------------------------------------------- schedule: AdamW from scratch, one evaluation at the end
max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=40),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=0.05, begin=0, end=max_epochs, by_epoch=True),
]
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg={{_base_.overlock_paramwise_cfg_norms_scales}},
    clip_grad=dict(max_norm=10.0))
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(type='ResumableCheckpointHook', interval=max_epochs, max_keep_ckpts=2))
randomness = dict(seed=0)
sync_bn = 'torch'
