# The authors' Mask R-CNN 3x recipe as named pieces (no config keys of its own, so it combines with any base):
# - `ms_crop_train_pipeline`: the multi-scale + random-crop training augmentation (from DETR / Sparse R-CNN): either a
#   short side in 480..800 (step 32, long side <= 1333), or a short side in {400, 500, 600}, an absolute crop of
#   384..600, then the 480..800 resize;
# - `ms_3x_max_epochs`, `ms_3x_param_scheduler`, `ms_3x_lr`: 36 epochs, steps at 27 and 33, 500-iteration linear
#   warm-up from 0.001, AdamW lr 1e-4 (half the 1x rate).
# Used by schedules/overlock_adamw_ms-3x.py (the Cascade 3x configs) and the Mask R-CNN 3x configs, which inherit 1x.
_ms_scales = [(1333, s) for s in range(480, 801, 32)]
ms_crop_train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=_ms_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(1333, 400), (1333, 500), (1333, 600)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=_ms_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]

ms_3x_max_epochs = 36
ms_3x_param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=ms_3x_max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
ms_3x_lr = 1e-4
