"""Benchmark the compiled depthwise conv against oneDNN (``F.conv2d``) on every depthwise shape of OverLoCK-T.

The shapes are read off the model: a hook on ``depthwise_conv2d``, which every depthwise conv of the backbone runs,
records each call's input [1, C, H, W], kernel size and dilation during one training-mode forward of OverLoCK-T
(a 512 x 512 image by default; a DilatedReparamBlock contributes its large kernel and every dilated branch), with
how often each shape occurs per forward pass.

For each shape, in interleaved rounds (one call of each method per round; the fastest round is tabled, the
medians are in the JSON): the op
(``mmoverlock::depthwise_*``) and ``F.conv2d`` (oneDNN), each in NCHW and channels-last, forward alone and
forward + backward (input and weight gradients). Achieved GFLOP/s (2 per multiply-add of the dense taps) sit next
to an FMA peak measured in the same run with a float32 matmul.

Timing, the ISA settings and the machine description come from :mod:`mmoverlock.analysis.measure`: ``--isa``
measures each named setting (``best``: the machine's widest ISA; ``avx2``: every library forced to AVX2), a
setting other than this process's in a child process, so both are measured in one run. Each writes
``depthwise.json`` and ``depthwise.md`` under ``--out/<setting>`` (default ``benchmarks/depthwise/cpu``).

Example::

    python tools/analysis_tools/benchmark_depthwise.py --isa best avx2 --threads 1
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys

from mmoverlock.analysis.measure import (ISA_ENV_VARS, ISA_SETTINGS, command_line, cpu_model, interleaved_times,
                                         run_isa_settings)

METHODS = ('ours-nchw', 'ours-nhwc', 'onednn-nchw', 'onednn-nhwc')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--isa', nargs='+', choices=sorted(ISA_SETTINGS), default=['best', 'avx2'],
                        help='ISA settings to measure, each but this process\'s in a child (default: best avx2)')
    parser.add_argument('--size', type=int, default=512, help='input image side (default 512)')
    parser.add_argument('--arch', default='t', help='OverLoCK arch preset (default t)')
    parser.add_argument('--iters', type=int, default=5, help='timed rounds per shape (default 5)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch default)')
    parser.add_argument('--out', default=osp.join('benchmarks', 'depthwise', 'cpu'), help='output folder')
    return parser.parse_args(argv)


def round_times_ms(fns, iters, warmup=1):
    """Milliseconds of each call of each function, timed in interleaved rounds (one call of each per round)."""
    timings = interleaved_times({i: fn for i, fn in enumerate(fns)}, rounds=iters, warmup=warmup)
    return [[1e3 * t for t in timings[i].wall_s] for i in range(len(fns))]


def depthwise_shapes(arch, size):
    """{(C, H, W, K, dilation): calls per forward} of the model's depthwise convs on a size x size image.

    Every depthwise conv of the backbone (DilatedReparamBlock branches, ResDWConv, the ContMix block's convs) runs
    ``mmoverlock.ops.depthwise.depthwise_conv2d``; a hook around it records each call of one training-mode forward.
    """
    import torch

    from mmoverlock.models import OverLoCK
    from mmoverlock.ops import depthwise

    model = OverLoCK(arch=arch).train()
    counts = {}
    conv = depthwise.depthwise_conv2d

    def hooked(x, weight, bias=None, padding=0, dilation=1):
        key = (*x.shape[1:], weight.shape[-1], dilation)
        counts[key] = counts.get(key, 0) + 1
        return conv(x, weight, bias, padding, dilation)

    depthwise.depthwise_conv2d = hooked
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, size, size))
    finally:
        depthwise.depthwise_conv2d = conv
    return counts


def fma_peak_gflops(iters):
    """float32 matmul GFLOP/s (2 per multiply-add): the FMA peak this run can reach with all its threads."""
    import torch
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    ms = min(round_times_ms([lambda: torch.mm(a, b)], 2 * iters, warmup=2)[0])
    return 2 * n**3 / ms / 1e6


def measure(shape, iters):
    """Forward and forward + backward milliseconds of every method at one shape."""
    import torch
    import torch.nn.functional as F
    C, H, W, K, r = shape
    p = r * (K - 1) // 2
    op = torch.ops.mmoverlock
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, C, H, W, generator=gen)
    weight = torch.randn(C, 1, K, K, generator=gen).requires_grad_()
    inputs = {'nchw': base.clone().requires_grad_(),
              'nhwc': base.contiguous(memory_format=torch.channels_last).requires_grad_()}
    grads = {k: torch.randn_like(v) for k, v in inputs.items()}
    convs = {'ours': lambda x: op.depthwise_forward(x, weight, None, p, r),
             'onednn': lambda x: F.conv2d(x, weight, None, 1, p, r, C)}
    forward, train = [], []
    for method in METHODS:
        conv, layout = convs[method.split('-')[0]], method.split('-')[1]
        x, g = inputs[layout], grads[layout]

        def fwd(conv=conv, x=x):
            with torch.no_grad():
                conv(x)

        def fwd_bwd(conv=conv, x=x, g=g):
            torch.autograd.grad(conv(x), (x, weight), g)

        forward.append(fwd)
        train.append(fwd_bwd)
    return dict(zip(METHODS, round_times_ms(forward, iters))), dict(zip(METHODS, round_times_ms(train, iters)))


def run_setting(args, setting, argv):
    import torch

    import mmoverlock._ext as ext
    if args.threads:
        torch.set_num_threads(args.threads)
    counts = depthwise_shapes(args.arch, args.size)
    peak = fma_peak_gflops(args.iters)
    rows = []
    for shape, calls in sorted(counts.items(), key=lambda kv: (-kv[0][1], kv[0][3], kv[0][4])):
        C, H, W, K, r = shape
        gflop = 2 * C * H * W * K * K / 1e9
        fwd_times, train_times = measure(shape, args.iters)
        fwd = {m: min(t) for m, t in fwd_times.items()}
        train = {m: min(t) for m, t in train_times.items()}
        medians = [{m: statistics.median(t) for m, t in times.items()} for times in (fwd_times, train_times)]
        rows.append(dict(C=C, H=H, W=W, K=K, dilation=r, calls=calls, gflop_fwd=gflop, forward_ms=fwd,
                         fwd_bwd_ms=train, forward_median_ms=medians[0], fwd_bwd_median_ms=medians[1]))
        print(f'[{setting}] C={C} {H}x{W} K={K} r={r}: fwd ' +
              ' '.join(f'{m} {t:.2f}' for m, t in fwd.items()) + ' | fwd+bwd ' +
              ' '.join(f'{m} {t:.2f}' for m, t in train.items()), flush=True)
    meta = dict(setting=setting, cpu=cpu_model(), isa_ours=ext.cpu_capability(),
                env={k: os.environ.get(k) for k in ISA_ENV_VARS}, threads=torch.get_num_threads(),
                torch=torch.__version__, arch=args.arch, size=args.size, iters=args.iters,
                fma_peak_gflops=peak, command=command_line(__file__, argv),
                load_average=os.getloadavg())
    out_dir = osp.join(args.out, setting)
    os.makedirs(out_dir, exist_ok=True)
    with open(osp.join(out_dir, 'depthwise.json'), 'w') as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    with open(osp.join(out_dir, 'depthwise.md'), 'w') as f:
        f.write(markdown(meta, rows))
    return dict(meta=meta, rows=rows)


def markdown(meta, rows):
    lines = [f"# Depthwise convs of OverLoCK-{meta['arch'].upper()} at {meta['size']}x{meta['size']}, "
             f"setting `{meta['setting']}`", '',
             f"CPU: {meta['cpu']}; our kernels: {meta['isa_ours']}; env: "
             + ', '.join(f'{k}={v}' for k, v in meta['env'].items() if v) + f"; {meta['threads']} thread(s); "
             f"torch {meta['torch']}; load average {', '.join(f'{x:.1f}' for x in meta['load_average'])}.", '',
             f"FMA peak (float32 1024² matmul, this run): **{meta['fma_peak_gflops']:.0f} GFLOP/s**. "
             f"Fastest of {meta['iters']} interleaved rounds (the JSON has the medians too: on a shared machine a "
             "median carries the other jobs' preemptions), ms per call; speed-up = oneDNN's faster layout ÷ "
             'our faster layout; GFLOP/s counts 2 per multiply-add of the K×K taps.', '',
             f"Command: `{meta['command']}`", '',
             '| C | H×W | K | r | calls | fwd ours nchw / nhwc | fwd oneDNN nchw / nhwc | fwd GFLOP/s ours (best) '
             '| fwd speed-up | fwd+bwd ours nchw / nhwc | fwd+bwd oneDNN nchw / nhwc | fwd+bwd speed-up |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        f, t = row['forward_ms'], row['fwd_bwd_ms']
        ours_f, dnn_f = min(f['ours-nchw'], f['ours-nhwc']), min(f['onednn-nchw'], f['onednn-nhwc'])
        ours_t, dnn_t = min(t['ours-nchw'], t['ours-nhwc']), min(t['onednn-nchw'], t['onednn-nhwc'])
        lines.append(
            f"| {row['C']} | {row['H']}×{row['W']} | {row['K']} | {row['dilation']} | {row['calls']} "
            f"| {f['ours-nchw']:.2f} / {f['ours-nhwc']:.2f} | {f['onednn-nchw']:.2f} / {f['onednn-nhwc']:.2f} "
            f"| {row['gflop_fwd'] / ours_f * 1e3:.0f} | {dnn_f / ours_f:.2f}× "
            f"| {t['ours-nchw']:.2f} / {t['ours-nhwc']:.2f} | {t['onednn-nchw']:.2f} / {t['onednn-nhwc']:.2f} "
            f"| {dnn_t / ours_t:.2f}× |")
    total = {m: sum(r['calls'] * r['fwd_bwd_ms'][m] for r in rows) for m in METHODS}
    lines += ['', 'Per forward + backward pass of the model (calls × fwd+bwd): ' +
              ', '.join(f'{m} {v:.0f} ms' for m, v in total.items()) + '.', '']
    return '\n'.join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)

    def load(setting):
        with open(osp.join(args.out, setting, 'depthwise.json')) as f:
            return json.load(f)

    run_isa_settings(args.isa, __file__, argv, lambda setting: run_setting(args, setting, argv), load)


if __name__ == '__main__':
    main()
