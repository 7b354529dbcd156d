"""Check and convert the authors' released COCO (mmdet 2.x) and ADE20K (mmseg 0.x) checkpoints for mmdet 3 / mmseg 1.

The authors trained their Mask R-CNN and UperNet models with mmdet 2.28 / mmseg 0.30. What differs in mmdet 3.3 /
mmseg 1.2 is mostly *around* the weights, not their names:

* the backbone keys are the authors' own (this project keeps their names), and the neck/head keys of Mask R-CNN
  (FPN, RPNHead, Shared2FCBBoxHead, FCNMaskHead) and UperNet (UPerHead, FCNHead) did not change between those
  versions, so a faithful release needs **no renames**; the rules below still cover the layouts that do need them
  (``module.`` from a DDP-wrapped save, mmdet 1.x heads outside ``roi_head``), and every applied rename is reported;
* the class names moved from ``meta['CLASSES']`` / ``meta['PALETTE']`` to ``meta['dataset_meta']`` (what
  DetInferencer / MMSegInferencer read); the mmdet 2.x optimizer state cannot be resumed by mmengine and is dropped,
  as are EMA shadow weights (``ema_*``);
* given ``--config``, the converted weights are checked against the model that config builds: missing and unexpected
  keys and shape mismatches are reported (e.g. a detection-form backbone in a segmentation config shows up as
  unexpected ``backbone.extra_norm.4`` / ``backbone.h_proj`` keys), and ``--strict`` turns any of them into an error.

The output holds ``state_dict`` and ``meta`` only, so it loads with torch's ``weights_only=True`` and evaluates with
``tools/test.py`` or ``mim test``.

Usage:
    python tools/convert_checkpoint.py SRC DST [--config CONFIG] [--strict] [--report report.json]

SRC may be a path or the release URL (downloaded through mmengine's cache).
"""
import argparse
import json
import os
import os.path as osp
import re
from collections import OrderedDict

import torch

#: (pattern, replacement, why) applied in order to every key; each key that changes is reported.
RENAME_RULES = (
    (r'^module\.', '', 'DistributedDataParallel wrapper prefix'),
    (r'^(bbox_head|mask_head)\.', r'roi_head.\1.', 'mmdet 1.x two-stage heads live under roi_head since mmdet 2.0'),
)
#: Keys that carry no model weights in mmdet 3 / mmseg 1 (pattern, why).
DROP_RULES = ((r'^ema_', 'EMA shadow weights of an mmcv EMAHook'), )
#: Top-level checkpoint entries kept besides the weights.
KEEP_ENTRIES = ('meta', )


def detect_task(state_dict):
    """``'mmdet'`` for a detector (RPN / RoI heads), ``'mmseg'`` for a segmentor (decode head), else ``None``."""
    if any(k.startswith(('rpn_head.', 'roi_head.', 'bbox_head.')) for k in state_dict):
        return 'mmdet'
    if any(k.startswith(('decode_head.', 'auxiliary_head.')) for k in state_dict):
        return 'mmseg'
    return None


def backbone_form(state_dict):
    """Describe the OverLoCK backbone in a model state dict: detection/segmentation form, training/deploy form."""
    keys = [k for k in state_dict if k.startswith('backbone.')]
    if not keys:
        return None
    fusion = any(k.startswith(('backbone.h_proj.', 'backbone.extra_norm.4.')) for k in keys)
    deploy = not any('.origin_bn.' in k for k in keys)
    return dict(overview_fusion=fusion, deploy=deploy, num_keys=len(keys))


def _convert_meta(meta, task):
    """mmdet 2 / mmseg 0 meta (``CLASSES``, ``PALETTE``, versions, config text) to mmengine's ``dataset_meta``."""
    meta = dict(meta or {})
    new = dict(converted_by='mmoverlock tools/convert_checkpoint.py')
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


def convert(checkpoint):
    """Convert a loaded checkpoint; return ``(new_checkpoint, report)``.

    Args:
        checkpoint (dict): What ``torch.load`` returned: ``{'state_dict': ..., 'meta': ..., 'optimizer': ...}`` as
            mmcv 1.x saves it, a ``{'model': ...}`` dict, or a bare state dict.

    Returns:
        tuple[dict, dict]: ``{'state_dict', 'meta'}`` ready for mmengine, and a report with ``renamed``
        (old → new), ``dropped`` keys, ``dropped_entries`` (top-level), ``task`` and ``backbone`` form.
    """
    if isinstance(checkpoint.get('state_dict'), dict):
        state_dict, entries = checkpoint['state_dict'], checkpoint
    elif isinstance(checkpoint.get('model'), dict):
        state_dict, entries = checkpoint['model'], checkpoint
    else:
        state_dict, entries = checkpoint, {}
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise TypeError('the checkpoint state dict holds non-tensor values; is this a model checkpoint?')

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

    task = detect_task(out)
    report = dict(
        task=task,
        backbone=backbone_form(out),
        num_keys=len(out),
        renamed=renamed,
        dropped=dropped,
        dropped_entries=sorted(k for k in entries if k not in KEEP_ENTRIES and k not in ('state_dict', 'model')))
    new_checkpoint = dict(state_dict=out, meta=_convert_meta(entries.get('meta'), task))
    report['classes'] = len(new_checkpoint['meta'].get('dataset_meta', {}).get('classes', ()))
    return new_checkpoint, report


def build_model_for(config, cfg_options=None):
    """The model a config builds, weights left at their init (no pretrained download): the reference key layout."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope, init_default_scope
    from mmengine.registry import MODELS

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.model.backbone.init_cfg = None
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(cfg.model)


def compare_with_model(state_dict, model):
    """Missing / unexpected keys and shape mismatches of ``state_dict`` against ``model.state_dict()``."""
    expected = model.state_dict()
    return dict(
        missing=sorted(set(expected) - set(state_dict)),
        unexpected=sorted(set(state_dict) - set(expected)),
        shape_mismatch=sorted((k, list(state_dict[k].shape), list(v.shape)) for k, v in expected.items()
                              if k in state_dict and state_dict[k].shape != v.shape))


def load_checkpoint_file(src):
    """Load a path or URL on the CPU through mmengine (download cache for URLs, torch's weights_only default)."""
    from mmengine.runner.checkpoint import CheckpointLoader
    import mmoverlock  # noqa: F401  (allow-lists the non-tensor types mmengine checkpoints hold)
    return CheckpointLoader.load_checkpoint(src, map_location='cpu')


def format_report(report):
    """Human-readable summary: counts, then every renamed / dropped / mismatched key."""
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Convert the authors\' mmdet 2.x / mmseg 0.x OverLoCK checkpoints')
    parser.add_argument('src', help='authors\' checkpoint (path or URL)')
    parser.add_argument('dst', help='output checkpoint for mmdet 3 / mmseg 1')
    parser.add_argument('--config', help='check the converted weights against the model of this config')
    parser.add_argument('--strict', action='store_true', help='fail on any missing/unexpected/mismatched key')
    parser.add_argument('--report', help='also write the report as JSON to this file')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    new_checkpoint, report = convert(load_checkpoint_file(args.src))
    if args.config:
        report['check'] = compare_with_model(new_checkpoint['state_dict'], build_model_for(args.config))
    print(format_report(report))
    if args.strict and 'check' in report and any(report['check'].values()):
        raise SystemExit('conversion check failed (--strict): the weights do not match the config\'s model')
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    torch.save(new_checkpoint, args.dst)
    if args.report:
        with open(args.report, 'w') as f:
            json.dump(report, f, indent=1)
    print(f'saved {args.dst}')
    return report


if __name__ == '__main__':
    main()
