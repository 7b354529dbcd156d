"""Speed and memory of detectors / segmentors side by side: inference time, training-step time, peak memory, and
their ratios to the first config, measured in one run (:func:`mmoverlock.analysis.benchmark_models`).

Runs each config's model on synthetic batches of a given size (no dataset, so any resolution): inference with
post-processing, one full training step with synthetic ground truth; rounds interleaved across the configs, medians;
peak memory as defined in :mod:`mmoverlock.analysis.measure` (each config and phase in a fresh process on the CPU).
A config may be an installed package's own, e.g. ``mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py``.
Writes ``--out`` (JSON) and the same name with ``.md`` (a table naming the command and the machine); with
``--isa``, one such pair per instruction-set setting in a subfolder, and ``<name>_isa.{json,md}`` comparing them.

Usage:
    python tools/analysis_tools/benchmark.py mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py \
        configs/mask_rcnn/mask-rcnn_overlock-t_fpn_1x_coco.py --shape 800 1333 --iters 3 --isa best avx2 \
        --out benchmarks/detector/mask-rcnn_overlock-t_vs_swin-t_800x1333.json
"""
import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

from mmoverlock.analysis import PHASES, benchmark_models, benchmark_records, benchmark_table, config_label
from mmoverlock.analysis.measure import (PEAK_MEMORY_DEFINITION, add_isa_argument, command_line, isa_output,
                                         markdown_table, measure_per_isa, report_header, set_threads, write_json,
                                         write_markdown)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Inference time, training step time and peak memory of configs '
                                     'side by side')
    parser.add_argument('configs', nargs='+', metavar='config',
                        help="config file paths or 'mmdet::...' (ratios are to the first)")
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=(512, 512), help='input size')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--iters', '--rounds', dest='iters', type=int, default=3,
                        help='timed rounds per phase (one call of every config per round; medians)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed calls of every config before timing')
    parser.add_argument('--phases', nargs='+', choices=PHASES, default=list(PHASES))
    parser.add_argument('--deploy', action='store_true', help='re-parameterised backbones (inference only)')
    parser.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--threads', type=int, help='torch intra-op threads (default: torch\'s choice)')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurements')
    parser.add_argument('--out', default='benchmark.json', help='the JSON result (the markdown table beside it)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings of every config')
    add_isa_argument(parser)
    return parser.parse_args(argv)


def _markdown_path(json_path):
    return osp.splitext(json_path)[0] + '.md'


def measure(args, command, setting=None):
    """One run under this process's settings; writes its JSON and markdown and returns the result."""
    set_threads(args.threads)
    result = benchmark_models(args.configs, tuple(args.shape), args.batch_size, args.iters, args.warmup, args.phases,
                              args.cfg_options, args.deploy, args.device, memory=not args.no_memory)
    result['command'] = command
    out = isa_output(args.out, setting)
    write_json(out, result)
    notes = [f"Batch {args.batch_size}, {args.shape[0]}×{args.shape[1]}, device {result['device']}. Times are "
             f"medians of {args.iters} rounds, each round one call of every model in turn, after {args.warmup} "
             f"warm-up call(s); in brackets the ratio to {result['baseline']} in the same run. Inference includes "
             'post-processing; a training step is forward, backward and the optimizer update.']
    if not args.no_memory:
        notes.append(f'Peak memory: {PEAK_MEMORY_DEFINITION}.')
    columns, rows = benchmark_table(result)
    write_markdown(_markdown_path(out), report_header('Detector / segmentor speed and memory', command,
                                                     result['machine'], notes) + markdown_table(columns, rows))
    print('\n'.join(markdown_table(columns, rows)))
    print(f'wrote {out} and {_markdown_path(out)}')
    return result


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = command_line(__file__, argv)
    return measure_per_isa(args.isa, __file__, argv, lambda setting: measure(args, command, setting),
                           lambda setting: isa_output(args.out, setting), osp.splitext(args.out)[0] + '_isa',
                           'Detector / segmentor speed and memory', benchmark_records,
                           f'{config_label(args.configs[0])} (the first config)')


if __name__ == '__main__':
    main()
