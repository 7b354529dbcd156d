# "OverLoCK-pico": a small OverLoCK for the smoke configs (CPU training in minutes on the bundled shapes data).
# The architecture of the backbone's float64 parity tests (the 'arch' of tests/data/reference/tiny_*.pt), and the one
# definition the tests read it from: every module of the real network (RepConvBlocks, both ContMix stages, the
# Overview-Net context, the detection-form fusion), one block per stage, narrow widths. Level channels:
# [16, 32, 64 + 24, 96 + 24] = [16, 32, 88, 120].
overlock_pico_arch = dict(
    depth=[1, 1, 1, 1],
    sub_depth=[2, 2],
    embed_dim=[16, 32, 64, 96],
    kernel_size=[17, 15, 13, 7],
    mlp_ratio=[2, 2, 2, 2],
    sub_mlp_ratio=[2, 2],
    sub_num_heads=[2, 3],
    smk_size=5,
    ls_init_value=[None, None, 1, 1],
    res_scale=True)
overlock_pico_channels = [16, 32, 88, 120]
# The backbone of both smoke configs, in segmentation form (the detection config turns on overview_fusion).
overlock_pico_backbone = dict(
    _delete_=True,
    type='OverLoCK',
    arch=overlock_pico_arch,
    out_indices=(0, 1, 2, 3),
    overview_fusion=False,
    drop_path_rate=0.0)
