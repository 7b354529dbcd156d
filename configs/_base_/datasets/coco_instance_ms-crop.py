# COCO instance segmentation with the multi-scale + random-crop training augmentation of the authors' Mask R-CNN 3x
# recipe (from DETR / Sparse R-CNN): either a short side in 480..800 (step 32, long side <= 1333), or a short side in
# {400, 500, 600}, an absolute crop of 384..600, then the 480..800 resize. Evaluation is unchanged (1333x800).
_base_ = ['mmdet::_base_/datasets/coco_instance.py']

_ms_scales = [(1333, s) for s in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
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
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
