"""Check and convert the authors' released COCO (mmdet 2.x) and ADE20K (mmseg 0.x) checkpoints for mmdet 3 / mmseg 1.

A faithful release needs no key renames; the class names move to ``meta['dataset_meta']``, the optimizer state and
EMA weights are dropped, and every rename or drop is reported (:mod:`mmoverlock.models.checkpoint_conversion`).
Given ``--config``, the converted weights are checked against the model that config builds (missing, unexpected and
mismatched keys), and ``--strict`` turns any of them into an error. The output holds ``state_dict`` and ``meta``
only, so it loads with torch's ``weights_only=True`` and evaluates with ``tools/test.py`` or ``mim test``.

Usage:
    python tools/model_converters/convert_checkpoint.py SRC DST [--config CONFIG] [--strict] [--report report.json]

SRC may be a path or the release URL (https only, downloaded once into torch's hub cache). SRC is loaded weights-only
(a pickle that would run code is refused), DST is written atomically and may not be SRC itself.
"""
import argparse
import io
import json
import os.path as osp

import torch

from mmoverlock.apis import build_model
from mmoverlock.checkpoint_io import load_checkpoint_file, write_atomic
from mmoverlock.models.checkpoint_conversion import compare_with_model, convert_release_checkpoint, format_report


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
    if '://' not in args.src and (osp.realpath(args.src) == osp.realpath(args.dst) or (
            osp.exists(args.src) and osp.exists(args.dst) and osp.samefile(args.src, args.dst))):
        raise ValueError(f'dst {args.dst} is the input checkpoint src {args.src}: the converter never writes over '
                         f'its input; give another output path')
    new_checkpoint, report = convert_release_checkpoint(load_checkpoint_file(args.src, map_location='cpu'))
    if args.config:
        model, _cfg = build_model(args.config, init=False)
        report['check'] = compare_with_model(new_checkpoint['state_dict'], model)
    print(format_report(report))
    if args.strict and 'check' in report and any(report['check'].values()):
        raise SystemExit('conversion check failed (--strict): the weights do not match the config\'s model')
    with io.BytesIO() as buffer:
        torch.save(new_checkpoint, buffer)
        write_atomic(args.dst, buffer.getvalue())
    if args.report:
        with open(args.report, 'w') as f:
            json.dump(report, f, indent=1)
    print(f'saved {args.dst}')
    return report


if __name__ == '__main__':
    main()
