"""Converting the authors' released COCO (mmdet 2.x) and ADE20K (mmseg 0.x) checkpoints for mmdet 3 / mmseg 1.

The authors trained their Mask R-CNN and UperNet models with mmdet 2.28 / mmseg 0.30. What differs in mmdet 3.3 /
mmseg 1.2 is mostly *around* the weights, not their names:

* the backbone keys are the authors' own (this project keeps their names), and the neck/head keys of Mask R-CNN
  (FPN, RPNHead, Shared2FCBBoxHead, FCNMaskHead) and UperNet (UPerHead, FCNHead) did not change between those
  versions, so a faithful release needs **no renames**; :data:`RENAME_RULES` still cover the layouts that do need
  them (``module.`` from a DDP-wrapped save, mmdet 1.x heads outside ``roi_head``), and every applied rename is
  reported;
* the class names moved from ``meta['CLASSES']`` / ``meta['PALETTE']`` to ``meta['dataset_meta']`` (what
  DetInferencer / MMSegInferencer read); the mmdet 2.x optimizer state cannot be resumed by mmengine and is dropped,
  as are EMA shadow weights (``ema_*``);
* :func:`compare_with_model` checks converted weights against the model a config builds: missing and unexpected keys
  and shape mismatches (e.g. a detection-form backbone in a segmentation config shows up as unexpected
  ``backbone.extra_norm.4`` / ``backbone.h_proj`` keys).

The converted checkpoint holds ``state_dict`` and ``meta`` only, so it loads with torch's ``weights_only=True``.
"""
import re
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .checkpoint import WRAPPER_PREFIX, backbone_form, split_checkpoint

#: (pattern, replacement, why) applied in order to every key; each key that changes is reported.
RENAME_RULES = (
    ('^' + re.escape(WRAPPER_PREFIX), '', 'DistributedDataParallel wrapper prefix'),
    (r'^(bbox_head|mask_head)\.', r'roi_head.\1.', 'mmdet 1.x two-stage heads live under roi_head since mmdet 2.0'),
)
#: Keys that carry no model weights in mmdet 3 / mmseg 1 (pattern, why).
DROP_RULES = ((r'^ema_', 'EMA shadow weights of an mmcv EMAHook'), )
#: Top-level checkpoint entries kept besides the weights.
KEEP_ENTRIES = ('meta', )


def task_of_state_dict(state_dict: Dict[str, torch.Tensor]) -> Optional[str]:
    """``'mmdet'`` for a detector (RPN / RoI heads), ``'mmseg'`` for a segmentor (decode head), else ``None``."""
    if any(k.startswith(('rpn_head.', 'roi_head.', 'bbox_head.')) for k in state_dict):
        return 'mmdet'
    if any(k.startswith(('decode_head.', 'auxiliary_head.')) for k in state_dict):
        return 'mmseg'
    return None


def _convert_meta(meta: Optional[dict], task: Optional[str]) -> dict:
    """mmdet 2 / mmseg 0 meta (``CLASSES``, ``PALETTE``, versions, config text) to mmengine's ``dataset_meta``."""
    meta = dict(meta or {})
    new = dict(converted_by='mmoverlock.models.checkpoint_conversion')
    dataset_meta = dict(meta.get('dataset_meta') or {})
    if meta.get('CLASSES') is not None:
        dataset_meta['classes'] = tuple(meta['CLASSES'])
    if meta.get('PALETTE') is not None:
        dataset_meta['palette'] = [tuple(int(c) for c in color) for color in meta['PALETTE']]
    if dataset_meta:
        new['dataset_meta'] = dataset_meta
    for key in ('mmdet_version', 'mmseg_version', 'mmcv_version', 'epoch', 'iter'):
        if key in meta:
            new[f'source_{key}'] = meta[key]
    if task is not None:
        new['task'] = task
    return new


def _rename_and_drop(state_dict: Dict[str, torch.Tensor]):
    """Apply :data:`RENAME_RULES` and :data:`DROP_RULES`; return the new state dict, the renames and the drops."""
    renamed, dropped, out = [], [], OrderedDict()
    for key, value in state_dict.items():
        new_key = key
        for pattern, replacement, _why in RENAME_RULES:
            new_key = re.sub(pattern, replacement, new_key)
        reason = next((why for pattern, why in DROP_RULES if re.search(pattern, new_key)), None)
        if reason is not None:
            dropped.append((key, reason))
            continue
        if new_key != key:
            renamed.append((key, new_key))
        if new_key in out:
            raise KeyError(f'two keys map to {new_key!r} (the second is {key!r})')
        out[new_key] = value
    return out, renamed, dropped


def convert_release_checkpoint(checkpoint: dict) -> Tuple[dict, dict]:
    """Convert a loaded mmdet 2.x / mmseg 0.x checkpoint; return ``(new_checkpoint, report)``.

    Args:
        checkpoint (dict): What ``torch.load`` returned: ``{'state_dict': ..., 'meta': ..., 'optimizer': ...}`` as
            mmcv 1.x saves it, a ``{'model': ...}`` dict, or a bare state dict.

    Returns:
        tuple[dict, dict]: ``{'state_dict', 'meta'}`` ready for mmengine, and a report with ``renamed``
        (old → new), ``dropped`` keys, ``dropped_entries`` (top-level), ``task``, ``backbone`` form
        (:func:`~mmoverlock.models.checkpoint.backbone_form`), ``num_keys`` and ``classes``.
    """
    state_dict, entries = split_checkpoint(checkpoint)
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise TypeError('the checkpoint state dict holds non-tensor values; is this a model checkpoint?')
    out, renamed, dropped = _rename_and_drop(state_dict)
    task = task_of_state_dict(out)
    new_checkpoint = dict(state_dict=out, meta=_convert_meta(entries.get('meta'), task))
    report = dict(
        task=task,
        backbone=backbone_form(out),
        num_keys=len(out),
        renamed=renamed,
        dropped=dropped,
        dropped_entries=sorted(k for k in entries if k not in KEEP_ENTRIES),
        classes=len(new_checkpoint['meta'].get('dataset_meta', {}).get('classes', ())))
    return new_checkpoint, report


def compare_with_model(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> dict:
    """Missing / unexpected keys and shape mismatches of ``state_dict`` against ``model.state_dict()``."""
    expected = model.state_dict()
    return dict(
        missing=sorted(set(expected) - set(state_dict)),
        unexpected=sorted(set(state_dict) - set(expected)),
        shape_mismatch=sorted((k, list(state_dict[k].shape), list(v.shape)) for k, v in expected.items()
                              if k in state_dict and state_dict[k].shape != v.shape))


def format_report(report: dict) -> str:
    """Human-readable summary of a conversion report: counts, then every renamed / dropped / mismatched key."""
    lines = [f"task: {report['task']}; backbone: {report['backbone']}; {report['num_keys']} weights; "
             f"classes in meta: {report['classes']}",
             f"renamed {len(report['renamed'])} keys" + (':' if report['renamed'] else ' (none needed)')]
    lines += [f'  {old} -> {new}' for old, new in report['renamed']]
    lines.append(f"dropped {len(report['dropped'])} keys" + (':' if report['dropped'] else ''))
    lines += [f'  {key} ({why})' for key, why in report['dropped']]
    if report['dropped_entries']:
        lines.append(f"dropped checkpoint entries: {', '.join(report['dropped_entries'])}")
    if 'check' in report:
        check = report['check']
        lines.append(f"against the config's model: {len(check['missing'])} missing, {len(check['unexpected'])} "
                     f"unexpected, {len(check['shape_mismatch'])} shape mismatches")
        lines += [f'  missing {k}' for k in check['missing']]
        lines += [f'  unexpected {k}' for k in check['unexpected']]
        lines += [f'  shape {k}: checkpoint {a} vs model {b}' for k, a, b in check['shape_mismatch']]
    return '\n'.join(lines)
