# Smoke config: UperNet with OverLoCK-pico (segmentation form) and the auxiliary FCN head on level 2, trained from
# scratch on the bundled synthetic ADE20K-format shapes set (tools/misc/generate_data.py: 128x128 JPEGs, label PNGs
# with 0 = ignored "other", 1 = background, 2..5 = shapes) on the CPU in a few minutes. Head widths slimmed for 2
# cores.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
    '../_base_/models/overlock_pico.py',
    '../_base_/overlock_paramwise_norms-scales.py',
]
custom_imports = dict(imports=['mmoverlock'], allow_failed_imports=False)

crop_size = (128, 128)
num_classes = 5
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=_base_.overlock_pico_backbone,
    decode_head=dict(in_channels={{_base_.overlock_pico_channels}}, channels=64, num_classes=num_classes),
    auxiliary_head=dict(in_channels=88, in_index=2, channels=32, num_classes=num_classes))

# ---------------------------------------------------------------- data: the generated ADE20K-format shapes set
dataset_type = 'BaseSegDataset'
data_root = 'data/generated/ade'
metainfo = dict(
    classes=('background', 'circle', 'square', 'triangle', 'ring'),
    palette=[(120, 120, 120), (230, 60, 50), (50, 170, 60), (60, 90, 230), (40, 200, 210)])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
_dataset = dict(
    type=dataset_type, data_root=data_root, metainfo=metainfo, img_suffix='.jpg', seg_map_suffix='.png',
    reduce_zero_label=True)
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        _dataset,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        _dataset,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# ---------------------------------------------------------------- schedule: AdamW from scratch, one evaluation at the end
max_iters = 300
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg={{_base_.overlock_paramwise_cfg_norms_scales}})
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=30, end=max_iters, by_epoch=False),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(type='ResumableCheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=2))
randomness = dict(seed=0)
sync_bn = 'torch'
