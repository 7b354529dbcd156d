"""OverLoCK's architecture settings in one place: the presets of the released variants, the parsing of ``arch``, and
the checks of the constructor arguments of the trunk, the mmdet/mmseg backbone and the timm classifier.

Every check runs before a layer is built and raises naming the argument and the form it expects, instead of letting
a wrong value fail deep in a layer or, worse, build a different network silently. This module needs torch only.
"""
import copy
from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from ..ops.contmix import CONTMIX_BACKENDS
from .layers import DILATED_BRANCHES

#: The entries of an architecture: a preset, or a dict with exactly these keys.
ARCH_KEYS = ('depth', 'sub_depth', 'embed_dim', 'kernel_size', 'mlp_ratio', 'sub_mlp_ratio', 'sub_num_heads',
             'smk_size', 'ls_init_value', 'res_scale')
#: How many entries each list-valued key holds: one per stage (Base-Net 1-3 and Overview-Net 4) or one per Focus-Net
#: sub-stage (3 and 4).
_LENGTHS = dict(depth=4, sub_depth=2, embed_dim=4, kernel_size=4, mlp_ratio=4, sub_mlp_ratio=2, sub_num_heads=2,
                ls_init_value=4)


def _preset(depth, sub_depth, embed_dim, sub_num_heads) -> dict:
    return dict(depth=depth, sub_depth=sub_depth, embed_dim=embed_dim, kernel_size=[17, 15, 13, 7],
                mlp_ratio=[4, 4, 4, 4], sub_mlp_ratio=[3, 3], sub_num_heads=sub_num_heads, smk_size=5,
                ls_init_value=[None, None, 1, 1], res_scale=True)


#: The four variants of the paper, as the authors' ``overlock_xt`` / ``_t`` / ``_s`` / ``_b`` build them.
ARCH_SETTINGS: Dict[str, dict] = {
    'xt': _preset(depth=[2, 2, 3, 2], sub_depth=[6, 2], embed_dim=[56, 112, 256, 336], sub_num_heads=[4, 6]),
    't': _preset(depth=[4, 4, 6, 2], sub_depth=[12, 2], embed_dim=[64, 128, 256, 512], sub_num_heads=[4, 8]),
    's': _preset(depth=[6, 6, 8, 3], sub_depth=[16, 3], embed_dim=[64, 128, 320, 512], sub_num_heads=[8, 16]),
    'b': _preset(depth=[8, 8, 10, 4], sub_depth=[20, 4], embed_dim=[80, 160, 384, 576], sub_num_heads=[6, 9]),
}
#: The authors' ImageNet-1K release of each preset; the deploy form has its own file.
RELEASE_URL = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_{arch}_in1k_224{form}.pth'
#: ``memory_format`` choices: what ``'auto'`` picks per device type, or a fixed layout.
MEMORY_FORMATS = dict(auto=None, channels_last=torch.channels_last, contiguous=torch.contiguous_format)
#: The classifier's ``global_pool`` choices: timm's pooling types whose output width is the input's, or ``''`` for
#: none.
POOL_TYPES = ('avg', 'max', 'avgmax', '')


def is_int(value) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or a float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------------------------
# arch
# ---------------------------------------------------------------------------------------------------------------
def parse_arch(arch: Union[str, dict]) -> dict:
    """A copy of the preset ``arch`` names (``'xt'``, ``'t'``, ``'s'``, ``'b'``, any case), or of ``arch`` itself
    when it is a dict with exactly the keys ``ARCH_KEYS`` and values a network can be built from."""
    if isinstance(arch, str):
        key = arch.lower()
        if key not in ARCH_SETTINGS:
            raise KeyError(f'OverLoCK: arch must be one of {sorted(ARCH_SETTINGS)} or a dict, got {arch!r}')
        return copy.deepcopy(ARCH_SETTINGS[key])
    if not isinstance(arch, dict):
        raise TypeError(f'OverLoCK: arch must be a str or a dict, got {type(arch).__name__}')
    missing, extra = set(ARCH_KEYS) - set(arch), set(arch) - set(ARCH_KEYS)
    if missing or extra:
        raise KeyError(f'OverLoCK: an arch dict needs exactly the keys {list(ARCH_KEYS)}; '
                       f'missing {sorted(missing)}, unexpected {sorted(extra)}')
    for key, n in _LENGTHS.items():
        if len(arch[key]) != n:
            raise ValueError(f'OverLoCK: arch[{key!r}] must have {n} entries, got {arch[key]}')
    _check_arch_values(arch)
    return copy.deepcopy(dict(arch))


def _check_arch_values(arch: dict) -> None:
    """Refuse arch entries that would only fail later, deep in a layer (``ValueError`` naming the entry)."""
    for key in ('depth', 'sub_depth', 'embed_dim', 'sub_num_heads'):
        if not all(is_int(v) and v > 0 for v in arch[key]):
            raise ValueError(f'OverLoCK: arch[{key!r}] must hold positive ints, got {arch[key]}')
    for key in ('mlp_ratio', 'sub_mlp_ratio'):
        if not all(is_number(v) and v > 0 for v in arch[key]):
            raise ValueError(f'OverLoCK: arch[{key!r}] must hold positive numbers, got {arch[key]}')
    if any(k not in DILATED_BRANCHES for k in arch['kernel_size']):
        raise ValueError(f"OverLoCK: arch['kernel_size'] entries must be among {sorted(DILATED_BRANCHES)} (the "
                         f"sizes of the dilated re-parameterisable block), got {arch['kernel_size']}")
    smk = arch['smk_size']
    if not is_int(smk) or smk < 1 or smk % 2 == 0:
        raise ValueError(f"OverLoCK: arch['smk_size'] must be a positive odd int, got {smk!r}")
    if not all(v is None or is_number(v) for v in arch['ls_init_value']):
        raise ValueError(f"OverLoCK: arch['ls_init_value'] must hold numbers or None (no LayerScale), "
                         f"got {arch['ls_init_value']}")
    if not isinstance(arch['res_scale'], bool):
        raise ValueError(f"OverLoCK: arch['res_scale'] must be a bool, got {arch['res_scale']!r}")
    for sub, stage in enumerate((2, 3)):
        # A ContMix block splits its channels into 2 kernels x 2*heads groups, and its queries into 2*heads.
        dim, heads = arch['embed_dim'][stage], arch['sub_num_heads'][sub]
        if dim % (4 * heads):
            raise ValueError(f"OverLoCK: arch['embed_dim'][{stage}] = {dim} must be a multiple of "
                             f"4 * arch['sub_num_heads'][{sub}] = {4 * heads}")


def release_checkpoint(pretrained: Union[bool, str], arch: Union[str, dict], deploy: bool) -> str:
    """The checkpoint that a backbone's ``pretrained`` argument names: the authors' release of the preset ``arch``
    for ``True`` (the re-parameterised file for ``deploy``), or the path/URL string itself."""
    if pretrained is True:
        if not isinstance(arch, str) or arch not in ARCH_SETTINGS:
            raise ValueError(f'OverLoCK: pretrained=True loads the release of a preset arch, one of '
                             f'{sorted(ARCH_SETTINGS)}; got arch={arch!r}. Give a checkpoint path or URL '
                             f'(init_cfg=dict(type="Pretrained", checkpoint=...)) for another architecture')
        return RELEASE_URL.format(arch=arch, form='_reparam' if deploy else '')
    if isinstance(pretrained, str):
        return pretrained
    raise TypeError(f'OverLoCK: pretrained must be True, False, None or a checkpoint path/URL string, '
                    f'got {pretrained!r}')


# ---------------------------------------------------------------------------------------------------------------
# constructor arguments
# ---------------------------------------------------------------------------------------------------------------
def check_trunk_arguments(in_channels: int, drop_path_rate: float, memory_format: str,
                          contmix_backend: Optional[str]) -> None:
    """The arguments that the network itself takes (the backbone and the classifier both pass them on)."""
    if not is_int(in_channels) or in_channels < 1:
        raise ValueError(f'OverLoCK: in_channels must be a positive int, got {in_channels!r}')
    if not is_number(drop_path_rate) or not 0 <= drop_path_rate < 1:
        raise ValueError(f'OverLoCK: drop_path_rate must be a number in [0, 1), got {drop_path_rate!r}')
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f'OverLoCK: memory_format must be one of {list(MEMORY_FORMATS)}, got {memory_format!r}')
    if contmix_backend is not None and contmix_backend not in CONTMIX_BACKENDS:
        raise ValueError(f'OverLoCK: contmix_backend must be None (automatic) or one of {list(CONTMIX_BACKENDS)}, '
                         f'got {contmix_backend!r}')


def check_levels(out_indices: Union[int, Sequence[int]], frozen_stages: int) -> Tuple[int, ...]:
    """The backbone's level arguments; returns ``out_indices`` as a tuple (a single int is one level, as in
    mmpretrain's backbones)."""
    if is_int(out_indices):
        levels = (out_indices, )
    else:
        levels = tuple(out_indices) if isinstance(out_indices, (list, tuple, range)) else ()
    if not levels or len(set(levels)) != len(levels) or any(not is_int(i) or not 0 <= i <= 3 for i in levels):
        raise ValueError(f'OverLoCK: out_indices must be a non-empty sequence of distinct levels in 0..3, '
                         f'got {out_indices!r}')
    if not is_int(frozen_stages) or not -1 <= frozen_stages <= 4:
        raise ValueError(f'OverLoCK: frozen_stages must be an int in -1..4, got {frozen_stages!r}')
    return levels


def check_head_arguments(num_classes: int, projection: int, global_pool: str, drop_rate: float) -> None:
    """The classifier's head arguments."""
    if not is_int(num_classes) or num_classes < 0:
        raise ValueError(f'OverLoCKClassifier: num_classes must be an int >= 0, got {num_classes!r}')
    if not is_int(projection) or projection <= 0:
        raise ValueError(f'OverLoCKClassifier: projection must be a positive int, got {projection!r}')
    if global_pool not in POOL_TYPES:
        raise ValueError(f'OverLoCKClassifier: global_pool must be one of {list(POOL_TYPES)}, got {global_pool!r}')
    if not is_number(drop_rate) or not 0 <= drop_rate < 1:
        raise ValueError(f'OverLoCKClassifier: drop_rate must be in [0, 1), got {drop_rate!r}')
