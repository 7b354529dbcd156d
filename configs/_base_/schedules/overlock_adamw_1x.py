# mmdet 1x (12 epochs, steps at 8 and 11, 500-iter linear warm-up) with the authors' Mask R-CNN 1x optimiser:
# AdamW, lr 2e-4, weight decay 0.05 at a total batch of 16 (8 GPUs x 2 images), no decay on norms / rpb / layer scales.
_base_ = ['mmdet::_base_/schedules/schedule_1x.py', '../overlock_paramwise.py']

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg={{_base_.overlock_paramwise_cfg}})
