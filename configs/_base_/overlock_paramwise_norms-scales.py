# Opt-in: a broader no-weight-decay rule than the authors' (configs/_base_/overlock_paramwise.py, the default of every
# reproduction config). It exempts every tensor that scales or normalises rather than transforms:
# - norm_decay_mult=0: every normalisation layer by type (the LayerNorms `extra_norm`, `norm1/2` and the one opening each
#   RepConvBlock, all BatchNorms, and the neck/head norms),
# - `rpb1` / `rpb2`: ContMix relative position biases,
# - layer scales: `ls` (RepConvBlock), `ls1` / `ls2` (ContMix), `x_scale` / `h_scale` (context mixing), and the
#   LayerScale closing the detection form's `h_proj`,
# - GRN's `gamma` / `beta`: per-channel affine terms of a normalisation, treated like a norm's weight and bias.
# Matching is by substring of the full parameter name (e.g. 'backbone.sub_blocks3.0.ls1.weight'), hence the dots.
# The smoke configs use it. To use it with a reproduction config (no longer the authors' recipe then):
#   _base_ = ['../mask_rcnn/mask-rcnn_overlock-t_fpn_1x_coco.py', '../_base_/overlock_paramwise_norms-scales.py']
#   optim_wrapper = dict(paramwise_cfg=dict(_base_.overlock_paramwise_cfg_norms_scales, _delete_=True))
overlock_paramwise_cfg_norms_scales = dict(
    norm_decay_mult=0.,
    custom_keys={
        '.rpb': dict(decay_mult=0.),
        '.ls.': dict(decay_mult=0.),
        '.ls1.': dict(decay_mult=0.),
        '.ls2.': dict(decay_mult=0.),
        '.x_scale.': dict(decay_mult=0.),
        '.h_scale.': dict(decay_mult=0.),
        'backbone.h_proj.1.': dict(decay_mult=0.),
        '.gamma': dict(decay_mult=0.),
        '.beta': dict(decay_mult=0.),
    })
