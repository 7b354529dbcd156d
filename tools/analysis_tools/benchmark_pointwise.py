"""Benchmark the 1 x 1 convs of OverLoCK-T: oneDNN's convolution backward against ``pointwise_conv2d``'s matrix
products, on every 1 x 1 shape the model trains with.

The shapes are read off the model: during one training-mode forward of OverLoCK-T (512 x 512 by default) run with
plain autograd (``plain_autograd``: every 1 x 1 conv then goes through ``PointwiseConv2d._conv_forward``), each
call's input [1, C, H, W] and output channels are recorded, with how often each occurs.

For each shape, channels-last as the model runs, in interleaved rounds: forward + backward (input, weight and bias
gradients) through ``F.conv2d`` (oneDNN both ways) and through ``pointwise_conv2d`` (the same ``F.conv2d`` forward,
the backward as ``torch.mm``), and the backward alone of each (``convolution_backward`` against
``pointwise_conv2d_backward``). Fastest round tabled, medians in the JSON; GFLOP/s count 2 per multiply-add.

``--isa`` as in the other tools (``best``, ``avx2``: every library forced to AVX2), each setting written to
``--out/<setting>/pointwise.{json,md}`` (default ``benchmarks/pointwise/cpu``), the per-step totals of all of them
side by side in ``--out/isa_comparison.{json,md}``; without it, this process as it is, to ``--out/pointwise.*``.

Example::

    python tools/analysis_tools/benchmark_pointwise.py --isa best avx2 --threads 2
"""
import argparse
import os.path as osp
import statistics
import sys

from mmoverlock.analysis.measure import (add_isa_argument, command_line, interleaved_times, isa_output, machine_info,
                                         markdown_table, measure_per_isa, ratio, record, report_header, write_json,
                                         write_markdown)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_isa_argument(parser)
    parser.add_argument('--size', type=int, default=512, help='input image side (default 512)')
    parser.add_argument('--arch', default='t', help='OverLoCK arch preset (default t)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch default)')
    parser.add_argument('--iters', type=int, default=7, help='timed rounds per shape (default 7)')
    parser.add_argument('--out', default=osp.join('benchmarks', 'pointwise', 'cpu'),
                        help='output folder (default benchmarks/pointwise/cpu)')
    return parser.parse_args(argv)


def pointwise_shapes(arch, size):
    """{(C, O, H, W): calls per forward} of the model's 1 x 1 convs in a training-mode forward."""
    import torch

    from mmoverlock.models import OverLoCK
    from mmoverlock.models.recompute import plain_autograd
    from mmoverlock.ops.pointwise import PointwiseConv2d

    model = OverLoCK(arch=arch).train()
    counts = {}
    conv_forward = PointwiseConv2d._conv_forward

    def recorded(self, x, weight, bias):
        key = (x.shape[1], weight.shape[0], *x.shape[2:])
        counts[key] = counts.get(key, 0) + 1
        return conv_forward(self, x, weight, bias)

    PointwiseConv2d._conv_forward = recorded
    try:
        with plain_autograd():
            model(torch.randn(1, 3, size, size))
    finally:
        PointwiseConv2d._conv_forward = conv_forward
    return counts


def measure(shape, iters):
    """Milliseconds per round of forward + backward and of the backward alone, per method, at one shape."""
    import torch
    import torch.nn.functional as F

    from mmoverlock.ops.pointwise import pointwise_conv2d, pointwise_conv2d_backward

    C, O, H, W = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, C, H, W, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(O, C, 1, 1, generator=gen).requires_grad_()
    bias = torch.randn(O, generator=gen).requires_grad_()
    grad = torch.randn(1, O, H, W, generator=gen).contiguous(memory_format=torch.channels_last)
    mask = [True, True, True]
    candidates = {
        'train onednn': lambda: torch.autograd.grad(F.conv2d(x, weight, bias), (x, weight, bias), grad),
        'train products': lambda: torch.autograd.grad(pointwise_conv2d(x, weight, bias), (x, weight, bias), grad),
        'backward onednn': lambda: torch.ops.aten.convolution_backward(grad, x, weight, [O], [1, 1], [0, 0], [1, 1],
                                                                      False, [0, 0], 1, mask),
        'backward products': lambda: pointwise_conv2d_backward(grad, x, weight, mask),
    }
    timings = interleaved_times(candidates, rounds=iters, warmup=2)
    return {name: [1e3 * t for t in timing.wall_s] for name, timing in timings.items()}


def run_setting(args, setting, argv):
    """Every shape's timings under this process's ISA setting; writes ``pointwise.{json,md}``, returns the payload."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for shape, calls in sorted(pointwise_shapes(args.arch, args.size).items(), key=lambda kv: -kv[0][2]):
        C, O, H, W = shape
        times = measure(shape, args.iters)
        fastest = {name: min(t) for name, t in times.items()}
        rows.append(dict(C=C, O=O, H=H, W=W, calls=calls, gflop_backward=4 * C * O * H * W / 1e9, ms=fastest,
                         median_ms={name: statistics.median(t) for name, t in times.items()}))
        print(f'[{setting or "as is"}] {C}->{O} {H}x{W} x{calls}: ' + ' '.join(f'{k} {v:.3f}' for k, v in fastest.items()),
              flush=True)
    payload = dict(command=command_line(__file__, argv), machine=machine_info(), setting=setting, arch=args.arch,
                   size=args.size, iters=args.iters, rows=rows,
                   per_step_ms={name: sum(r['calls'] * r['ms'][name] for r in rows) for name in rows[0]['ms']})
    stem = osp.join(isa_output(args.out, setting), 'pointwise')
    write_json(stem + '.json', payload)
    write_markdown(stem + '.md', markdown(payload))
    return payload


def markdown(payload):
    notes = [f"Channels-last maps, batch 1. Fastest of {payload['iters']} interleaved rounds, ms per call (medians in "
             "the JSON). train: forward + input, weight and bias gradients; backward: the gradients alone "
             "(`convolution_backward` against `pointwise_conv2d_backward`). Backward GFLOP/s count 2 per "
             "multiply-add of both products."]
    lines = report_header(f"1 x 1 convs of OverLoCK-{payload['arch'].upper()} at {payload['size']}x{payload['size']}",
                          payload['command'], payload['machine'], notes)
    table = []
    for row in payload['rows']:
        ms, gflop = row['ms'], row['gflop_backward']
        table.append([f"{row['C']} → {row['O']}", f"{row['H']}×{row['W']}", row['calls'],
                      f"{ms['train onednn']:.3f}", f"{ms['train products']:.3f}",
                      f"{ms['train onednn'] / ms['train products']:.2f}×", f"{ms['backward onednn']:.3f}",
                      f"{ms['backward products']:.3f}", f"{ms['backward onednn'] / ms['backward products']:.2f}×",
                      f"{gflop / ms['backward onednn'] * 1e3:.0f} / {gflop / ms['backward products'] * 1e3:.0f}"])
    lines += markdown_table(['C → O', 'H×W', 'calls', 'train oneDNN', 'train products', 'speed-up',
                             'backward oneDNN', 'backward products', 'speed-up',
                             'backward GFLOP/s oneDNN / products'], table)
    total = payload['per_step_ms']
    lines += ['', 'Per training step of the model (calls × ms): ' +
              ', '.join(f'{name} {v:.1f} ms' for name, v in total.items()) +
              f"; train speed-up {total['train onednn'] / total['train products']:.2f}×, backward speed-up "
              f"{total['backward onednn'] / total['backward products']:.2f}×."]
    return lines


def records(payload):
    """The per-step totals for the ISA comparison, each products figure with its ratio to oneDNN's."""
    total = payload['per_step_ms']
    return [record(f'{part} per step, {method}', 'ms', total[f'{part} {method}'],
                   None if method == 'onednn' else ratio(total[f'{part} products'], total[f'{part} onednn']))
            for part in ('train', 'backward') for method in ('onednn', 'products')]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    measure_per_isa(args.isa, __file__, argv, lambda setting: run_setting(args, setting, argv),
                    lambda setting: osp.join(isa_output(args.out, setting), 'pointwise.json'),
                    osp.join(args.out, 'isa_comparison'), '1 x 1 convs: oneDNN backward against matrix products',
                    records, baseline="oneDNN's backward")


if __name__ == '__main__':
    main()
