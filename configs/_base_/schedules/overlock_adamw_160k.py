# The authors' UperNet ADE20K schedule: AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01, 1500-iteration linear
# warm-up from 1e-6, then poly decay (power 1) to 0 at 160k iterations, by iteration, total batch 16 (8 GPUs x 2
# images), fp32, and their no-weight-decay rule (../overlock_paramwise.py).
_base_ = ['mmseg::_base_/schedules/schedule_160k.py', '../overlock_paramwise.py']

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg={{_base_.overlock_paramwise_cfg}})
# The poly decay spans all 160k iterations and the warm-up scales it during the first 1500, as mmcv 1.x computed the
# authors' schedule (mmengine composes overlapping schedulers by multiplication). mmseg 1.x's own recipes start the
# poly decay after the warm-up instead, which raises the learning rate by up to 1% of its base value.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=0, end=160000, by_epoch=False),
]
