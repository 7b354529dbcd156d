"""Speed and memory of an mmoverlock detector / segmentor: inference images/s, training step time, peak memory.

Runs the config's model on synthetic batches of a given size (no dataset needed, so any resolution can be measured;
:func:`mmoverlock.analysis.benchmark_model`): inference with post-processing, one full training step with synthetic
ground truth, and the peak memory of each (CUDA allocator peak, or the process's peak resident set on the CPU).
Inputs are random, already-normalised images (the data preprocessor is skipped); pretrained weights are not loaded.

Usage:
    python tools/analysis_tools/benchmark.py CONFIG --shape 800 1333 --batch-size 1 --iters 3 --warmup 1 \
        --out bench.json
"""
import argparse
import json
import os
import os.path as osp

from mmengine.config import DictAction

from mmoverlock.analysis import PHASES, benchmark_model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Inference speed, training step time and peak memory')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=(512, 512), help='input size')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--iters', type=int, default=3, help='timed iterations per phase')
    parser.add_argument('--warmup', type=int, default=1, help='untimed iterations before timing')
    parser.add_argument('--phases', nargs='+', choices=PHASES, default=list(PHASES))
    parser.add_argument('--deploy', action='store_true', help='re-parameterised backbone (inference only)')
    parser.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--out', default='benchmark.json', help='where to write the JSON result')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings of the config')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    result = benchmark_model(args.config, tuple(args.shape), args.batch_size, args.iters, args.warmup, args.phases,
                             args.cfg_options, args.deploy, args.device)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    for phase in PHASES:
        if phase in result:
            r = result[phase]
            speed = (f"{r['images_per_s']:.3f} images/s" if phase == 'infer' else f"{r['step_s']:.3f} s/step")
            print(f"{phase}: {speed} at batch {args.batch_size}, {args.shape[0]}x{args.shape[1]}, "
                  f"peak memory {r['peak_memory_mib']:.0f} MiB ({result['device']})")
    print(f'wrote {args.out}')
    return result


if __name__ == '__main__':
    main()
