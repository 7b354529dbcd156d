# The authors' Mask R-CNN 1x schedule: mmdet 1x (12 epochs, steps at 8 and 11, 500-iteration linear warm-up from
# 0.001), AdamW lr 2e-4, betas (0.9, 0.999), weight decay 0.05 at a total batch of 16 (8 GPUs x 2 images), fp32, and
# their no-weight-decay rule (../overlock_paramwise.py).
_base_ = ['mmdet::_base_/schedules/schedule_1x.py', '../overlock_paramwise.py']

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg={{_base_.overlock_paramwise_cfg}})
