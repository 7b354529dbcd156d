# The authors' Mask R-CNN 3x schedule (../overlock_ms-crop-3x.py): 36 epochs, steps at 27 and 33, 500-iteration
# linear warm-up from 0.001, AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05, total batch 16, their no-weight-decay
# rule. Pair it with datasets/coco_instance_ms-crop.py.
_base_ = ['./overlock_adamw_1x.py', '../overlock_ms-crop-3x.py']

max_epochs = _base_.ms_3x_max_epochs
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = _base_.ms_3x_param_scheduler
optim_wrapper = dict(optimizer=dict(lr=_base_.ms_3x_lr))
