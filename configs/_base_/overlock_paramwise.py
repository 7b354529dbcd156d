# The authors' no-weight-decay rule, the default of every COCO / ADE20K reproduction config.
#
# Their detection and segmentation configs exempt a parameter from weight decay when its full name contains one of
# these substrings (mmengine's custom_keys match substrings of 'backbone.extra_norm.0.weight' etc., as mmcv 1.x did):
# - 'norm': in OverLoCK the LayerNorms `extra_norm.*` and `norm1` / `norm2` of the ContMix blocks;
# - 'absolute_pos_embed', 'relative_position_bias_table': Swin's names, kept from the Swin recipe they started from;
#   OverLoCK has no such parameter.
# Everything else decays, as in their runs: every BatchNorm (`origin_bn`, `dil_bn_*`, those of the stem and the
# down-sampling layers, the heads' ConvModule `bn`), the RepConvBlocks' LayerNorm `proj.0`, the ContMix position biases
# `rpb1` / `rpb2`, the layer scales and GRN's `gamma` / `beta`.
# configs/_base_/overlock_paramwise_norms-scales.py holds a broader rule that a config can opt into.
overlock_paramwise_cfg = dict(
    custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
    })
