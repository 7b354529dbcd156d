"""Parameters and FLOPs of an mmoverlock detector / segmentor and of its OverLoCK backbone, ContMix core included.

The counting is :func:`mmoverlock.analysis.config_complexity` (mmengine's FlopAnalyzer, one multiply-add = one FLOP,
the ContMix core counted as ``B*G*H*W*C*K^2`` multiply-adds). The input is a random tensor already normalised (the
data preprocessor is skipped), ``--shape`` H W, batch 1. Detectors are traced in ``tensor`` mode: backbone, neck,
RPN and RoI heads on the RPN's proposals, as mmdet's get_flops does.

Usage:
    python tools/analysis_tools/get_flops.py CONFIG [--shape 800 1333] [--deploy] [--backbone-only] [--out flops.json]
"""
import argparse
import json
import os
import os.path as osp

from mmengine.config import DictAction

from mmoverlock.analysis import config_complexity


def _fmt(n, unit):
    """Millions for parameters; GFLOPs, or MFLOPs below 0.1 G so small models do not print as 0.00."""
    if unit == 'FLOPs':
        return f'{n / 1e9:.2f} GFLOPs' if n >= 1e8 else f'{n / 1e6:.2f} MFLOPs'
    return f'{n / 1e6:.2f} M'


def format_result(result):
    """The printed summary of a :func:`config_complexity` result."""
    line = '=' * 60
    model_flops = 'not traced' if result['flops'] is None else _fmt(result['flops'], 'FLOPs')
    text = (f"{line}\n{result['config']}\ninput 1x3x{result['shape'][0]}x{result['shape'][1]}"
            f"{' (deploy backbone)' if result['deploy'] else ''}\n"
            f"model:    params {_fmt(result['params'], 'params')}, FLOPs {model_flops}\n"
            f"backbone: params {_fmt(result['backbone_params'], 'params')}, "
            f"FLOPs {_fmt(result['backbone_flops'], 'FLOPs')} "
            f"(ContMix core {_fmt(result['contmix_flops'], 'FLOPs')})\n")
    if result['mask_rois']:
        text += (f"mask heads: {_fmt(result['mask_head_flops'], 'FLOPs')} on {result['mask_rois']} RoIs (mmdet 3 "
                 f"tensor mode); model FLOPs with them on 100 RoIs as published figures count: "
                 f"{_fmt(result['flops_mask_head_on_100_rois'], 'FLOPs')}\n")
    uncounted = ', '.join(result['uncounted_ops']) or 'none'
    return text + f'not counted (element-wise or data-dependent): {uncounted}\n{line}'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Params and FLOPs of an mmoverlock model (ContMix counted)')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size (default: 800 1333 for detectors, 512 512 for segmentors)')
    parser.add_argument('--deploy', action='store_true', help='count the re-parameterised (deploy) backbone')
    parser.add_argument('--backbone-only', action='store_true', help='trace the backbone only (faster)')
    parser.add_argument('--out', help='also write the result as JSON')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings of the config')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    result = config_complexity(args.config, args.shape, args.cfg_options, args.deploy, args.backbone_only)
    print(format_result(result))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
