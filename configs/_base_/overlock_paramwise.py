# Parameters of OverLoCK that take no weight decay under AdamW, shared by every detection and segmentation schedule.
#
# The authors' configs exempt 'norm' and the relative position bias tables (their Swin-derived key names); this is the
# same rule spelled for OverLoCK's own module names, plus the layer scales:
# - norm_decay_mult=0: every normalisation layer by type (the LayerNorms `extra_norm`, `norm1/2` and the one opening each
#   RepConvBlock, all BatchNorms, and the neck/head norms),
# - `rpb1` / `rpb2`: ContMix relative position biases,
# - layer scales: `ls` (RepConvBlock), `ls1` / `ls2` (ContMix), `x_scale` / `h_scale` (context mixing), and the
#   LayerScale closing the detection form's `h_proj`,
# - GRN's `gamma` / `beta`: per-channel affine terms of a normalisation, treated like a norm's weight and bias.
# Matching is by substring of the full parameter name (e.g. 'backbone.sub_blocks3.0.ls1.weight'), hence the dots.
overlock_paramwise_cfg = dict(
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
