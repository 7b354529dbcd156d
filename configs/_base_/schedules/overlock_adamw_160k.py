# UperNet on ADE20K as the Swin/ConvNeXt UperNet recipes specify: AdamW lr 6e-5, weight decay 0.01,
# 1500-iter linear warm-up then poly decay (power 1) to 0 at 160k iterations, total batch 16 (8 GPUs x 2 images),
# no weight decay on norms / rpb / layer scales.
_base_ = ['mmseg::_base_/schedules/schedule_160k.py', '../overlock_paramwise.py']

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg={{_base_.overlock_paramwise_cfg}})
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
