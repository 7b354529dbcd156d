# UperNet with OverLoCK-T on ADE20K, 512x512 crops, 160k iterations at 8 GPUs x 2 images: the authors' released
# segmenter (their README: mIoU 50.3; upernet_overlock_tiny_ade20k.pth evaluates with this config after
# tools/model_converters/convert_checkpoint.py). The authors' recipe unchanged (tests/test_configs/test_recipes.py
# compares it item by item): backbone in segmentation form (overview_fusion=False), drop path 0.2, auxiliary FCN head on level 2
# (D2 + D3/4 = 384 channels), AdamW 6e-5 / wd 0.01 with their no-decay rule, 1500-iteration warm-up then poly decay,
# fp32, single-scale whole-image testing at (2048, 512) then a multiple of 32, evaluation and a checkpoint every 8000
# iterations, one checkpoint kept plus the best mIoU.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/schedules/overlock_adamw_160k.py',
    '../_base_/models/overlock-t.py',
]

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=_base_.overlock_backbone,
    decode_head=dict(in_channels=_base_.overlock_channels, num_classes=150),
    auxiliary_head=dict(in_channels=_base_.overlock_channels[2], in_index=2, num_classes=150))

# The authors' test pipeline: the (2048, 512) keep-ratio resize, then each side up to the next multiple of 32 with
# bicubic interpolation (mmseg's ResizeToMultiple, as in their mmseg 0.x config); the label map stays at full size.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32, interpolation='bicubic'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# Evaluate and save every 8000 iterations; keep the latest checkpoint and the best mIoU.
train_cfg = dict(val_interval=8000)
default_hooks = dict(
    checkpoint=dict(type='ResumableCheckpointHook', interval=8000, max_keep_ckpts=1, save_best='mIoU'))
