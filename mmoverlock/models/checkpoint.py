"""Reading OverLoCK checkpoints: unwrapping a loaded file, telling its form, loading the backbone.

Accepted: an ImageNet classification checkpoint (``state_dict`` / ``model`` entry, or a bare state dict), its
deploy (re-parameterised) form, and a full mmdet/mmseg checkpoint, whose ``backbone.`` part is taken.
A checkpoint of another variant or form fails with a message that says what it looks like. The same unwrapping and
form detection serve :mod:`mmoverlock.models.checkpoint_conversion`, which converts whole released detectors and
segmentors.
"""
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn


#: Key fragment of the training-form re-parameterisable blocks; a deploy-form state dict has none.
TRAINING_FORM_MARKER = '.origin_bn.'
#: Key prefixes of the detection form's Overview-Net fusion, absent from the segmentation form.
FUSION_PREFIXES = ('h_proj.', 'extra_norm.4.')
#: Key prefix of a model saved while wrapped in (Distributed)DataParallel.
WRAPPER_PREFIX = 'module.'


class LoadResult(NamedTuple):
    """Keys of the model that the checkpoint lacked, and keys of the checkpoint that the model does not have."""
    missing_keys: List[str]
    unexpected_keys: List[str]


def split_checkpoint(checkpoint: dict) -> Tuple[Dict[str, torch.Tensor], dict]:
    """The weights inside a loaded checkpoint file, and its other top-level entries (``meta``, ``optimizer``, ...).

    Args:
        checkpoint (dict): What ``torch.load`` returned: ``{'state_dict': ...}`` as mmcv / mmengine save it,
            ``{'model': ...}`` as the ImageNet releases do, or a bare state dict.

    Returns:
        tuple[dict, dict]: The state dict and the remaining entries (empty for a bare state dict).
    """
    if not isinstance(checkpoint, dict):
        raise TypeError(f'OverLoCK: the checkpoint holds no state dict (got {type(checkpoint).__name__})')
    for entry in ('state_dict', 'model'):
        if isinstance(checkpoint.get(entry), dict):
            return checkpoint[entry], {k: v for k, v in checkpoint.items() if k != entry}
    return checkpoint, {}


def is_deploy_form(state_dict: Dict[str, torch.Tensor]) -> bool:
    """Whether an OverLoCK state dict is in deploy (re-parameterised) form: no training-form branches."""
    return not any(TRAINING_FORM_MARKER in k for k in state_dict)


def backbone_form(state_dict: Dict[str, torch.Tensor], prefix: str = 'backbone.') -> Optional[dict]:
    """Describe the OverLoCK backbone under ``prefix`` of a state dict.

    Returns:
        dict | None: ``overview_fusion`` (detection form), ``deploy`` and ``num_keys``; ``None`` when no key starts
        with ``prefix``.
    """
    keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    if not keys:
        return None
    return dict(overview_fusion=any(k.startswith(FUSION_PREFIXES) for k in keys), deploy=is_deploy_form(keys),
                num_keys=len(keys))


def extract_state_dict(checkpoint: dict, prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The backbone's state dict inside a loaded checkpoint file.

    Args:
        checkpoint (dict): What ``torch.load`` returned.
        prefix (str, optional): Keep only keys under this prefix (stripped). ``None`` takes ``backbone.`` when the
            checkpoint is a whole detector/segmentor, else everything.
    """
    state_dict, _entries = split_checkpoint(checkpoint)
    state_dict = {(k[len(WRAPPER_PREFIX):] if k.startswith(WRAPPER_PREFIX) else k): v for k, v in state_dict.items()}
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise KeyError(f'OverLoCK: the checkpoint has no keys under the prefix {prefix!r}')
    return state_dict


def describe_arch(state_dict: Dict[str, torch.Tensor]) -> Dict[str, list]:
    """Read depth, sub_depth and embed_dim off a state dict's key layout."""

    def count(name: str) -> int:
        return len({k.split('.')[1] for k in state_dict if k.startswith(name + '.')})

    dims = []
    for i in range(2, 5):
        weight = state_dict.get(f'patch_embed{i}.0.weight')
        if weight is None:
            raise KeyError(f'OverLoCK: the checkpoint has no patch_embed{i}.0.weight; it is not an OverLoCK '
                           f'backbone (first keys: {list(state_dict)[:5]})')
        if i == 2:
            dims.append(int(weight.shape[1]))
        dims.append(int(weight.shape[0]))
    return dict(depth=[count(f'blocks{i}') for i in range(1, 5)],
                sub_depth=[count('sub_blocks3'), count('sub_blocks4')], embed_dim=dims)


def _name_variant(found: Dict[str, list], presets: Dict[str, dict]) -> str:
    for name, arch in presets.items():
        if all(arch[k] == v for k, v in found.items()):
            return f"OverLoCK-{name.upper()} (arch='{name}')"
    return f'an OverLoCK variant with {found}'


def check_compatible(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> None:
    """Raise a clear error when the checkpoint is another variant or the other (training/deploy) form."""
    found = describe_arch(state_dict)
    expected = {k: list(model.arch[k]) for k in found}
    if found != expected:
        raise ValueError(f'OverLoCK: the checkpoint looks like {_name_variant(found, model.arch_settings)}, '
                         f'but this model is {_name_variant(expected, model.arch_settings)}; '
                         f'set arch to match the checkpoint')
    ckpt_deploy = is_deploy_form(state_dict)
    if ckpt_deploy and not model.deploy:
        raise ValueError('OverLoCK: the checkpoint is in deploy (re-parameterised) form; build the backbone '
                         'with deploy=True to load it')
    if model.deploy and not ckpt_deploy:
        raise ValueError('OverLoCK: the checkpoint is in training form but the backbone has deploy=True; build '
                         'it with deploy=False, load, then call switch_to_deploy()')


def load_overlock_checkpoint(model: nn.Module, filename: str, prefix: Optional[str] = None,
                             map_location: str = 'cpu', logger: str = 'current') -> LoadResult:
    """Load an OverLoCK checkpoint (file path or URL) into ``model`` non-strictly and log what did not match.

    For an ImageNet checkpoint the unexpected keys are exactly ``head.*`` and ``aux_head.*`` (the classifier) and
    the missing keys ``extra_norm.*`` (and ``h_proj.*`` in the detection form). The file is loaded weights-only
    (:func:`~mmoverlock.checkpoint_io.load_checkpoint_file`: a pickle that would run code is refused; URLs must be
    https).
    """
    from mmengine.logging import print_log  # the loader of the mmengine backbone (the rest here is torch-only)

    from ..checkpoint_io import load_checkpoint_file
    checkpoint = load_checkpoint_file(filename, map_location=map_location)
    state_dict = extract_state_dict(checkpoint, prefix)
    if not state_dict:
        raise ValueError(f'OverLoCK: the checkpoint {filename} holds an empty state dict (no weights)')
    check_compatible(model, state_dict)
    result = model.load_state_dict(state_dict, strict=False)
    result = LoadResult(sorted(result.missing_keys), sorted(result.unexpected_keys))
    print_log(f'OverLoCK: loaded {filename}; missing keys: {result.missing_keys or "none"}; '
              f'unexpected keys: {result.unexpected_keys or "none"}', logger=logger)
    return result
