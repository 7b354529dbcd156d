# The authors' Mask R-CNN 3x schedule: 36 epochs, steps at 27 and 33, 500-iteration linear warm-up from 0.001, AdamW
# lr 1e-4 (half the 1x rate), betas (0.9, 0.999), weight decay 0.05, total batch 16, their no-weight-decay rule.
# Pair it with datasets/coco_instance_ms-crop.py.
_base_ = ['./overlock_adamw_1x.py']

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=1e-4))
