# Mask R-CNN + FPN with OverLoCK-T, multi-scale 3x: the authors' released 3x detector (their README: AP^b 49.6,
# AP^m 43.9; maskrcnn3x_overlock_tiny_coco.pth). The 1x config with the authors' 3x recipe (../_base_/overlock_ms-crop-3x.py):
# multi-scale + crop augmentation, 36 epochs, AdamW lr 1e-4; everything else as in 1x.
_base_ = ['./mask-rcnn_overlock-t_fpn_1x_coco.py', '../_base_/overlock_ms-crop-3x.py']

train_pipeline = _base_.ms_crop_train_pipeline
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

max_epochs = _base_.ms_3x_max_epochs
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = _base_.ms_3x_param_scheduler
optim_wrapper = dict(optimizer=dict(lr=_base_.ms_3x_lr))
