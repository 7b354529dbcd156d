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

``--device cuda`` measures the op's CUDA kernels against cuDNN (``F.conv2d`` on the GPU) instead, with the same
shapes (``--batch`` images each) and methods; every timed call runs the conv ``--reps`` times, so a launch's
overhead does not dominate the small maps. It writes under ``--out/cuda``.

Examples::

    python tools/analysis_tools/benchmark_depthwise.py --isa best avx2 --threads 1
    python tools/analysis_tools/benchmark_depthwise.py --device cuda --size 1024 --batch 2 --out benchmarks/depthwise
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys

from mmoverlock.analysis.measure import (ISA_ENV_VARS, ISA_SETTINGS, command_line, cpu_model, interleaved_times,
                                         run_isa_settings)

LAYOUTS = ('nchw', 'nhwc')


def methods(device):
    """Our op and the vendor library's conv (oneDNN on the CPU, cuDNN on CUDA), each in both layouts."""
    vendor = 'cudnn' if device == 'cuda' else 'onednn'
    return tuple(f'{who}-{layout}' for who in ('ours', vendor) for layout in LAYOUTS)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--isa', nargs='+', choices=sorted(ISA_SETTINGS), default=['best', 'avx2'],
                        help='ISA settings to measure, each but this process\'s in a child (default: best avx2)')
    parser.add_argument('--size', type=int, default=512, help='input image side (default 512)')
    parser.add_argument('--arch', default='t', help='OverLoCK arch preset (default t)')
    parser.add_argument('--iters', type=int, default=5, help='timed rounds per shape (default 5)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch default)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                        help='cpu (ours vs oneDNN, per --isa) or cuda (ours vs cuDNN); default cpu')
    parser.add_argument('--batch', type=int, default=1, help='images per call (default 1)')
    parser.add_argument('--reps', type=int, default=None,
                        help='conv calls per timed call (default 1 on the CPU, 3 on CUDA)')
    parser.add_argument('--out', default=None,
                        help='output folder (default benchmarks/depthwise/cpu; with --device cuda: '
                        'benchmarks/depthwise)')
    return parser.parse_args(argv)


def round_times_ms(fns, iters, warmup=1, device=None, reps=1):
    """Milliseconds per call of each function (a timed call runs it ``reps`` times), timed in interleaved rounds
    (one timed call of each per round; a GPU is synchronised around each)."""
    def repeated(fn):
        return fn if reps == 1 else (lambda: [fn() for _ in range(reps)])

    timings = interleaved_times({i: repeated(fn) for i, fn in enumerate(fns)}, rounds=iters, warmup=warmup,
                                device=device)
    return [[1e3 * t / reps for t in timings[i].wall_s] for i in range(len(fns))]


def depthwise_shapes(arch, size, device='cpu'):
    """{(C, H, W, K, dilation): calls per forward} of the model's depthwise convs on a size x size image.

    Every depthwise conv of the backbone (DilatedReparamBlock branches, ResDWConv, the ContMix block's convs) runs
    ``mmoverlock.ops.depthwise.depthwise_conv2d``; a hook around it records each call of one training-mode forward.
    """
    import torch

    from mmoverlock.models import OverLoCK
    from mmoverlock.ops import depthwise

    model = OverLoCK(arch=arch).to(device).train()
    counts = {}
    conv = depthwise.depthwise_conv2d

    def hooked(x, weight, bias=None, padding=0, dilation=1):
        key = (*x.shape[1:], weight.shape[-1], dilation)
        counts[key] = counts.get(key, 0) + 1
        return conv(x, weight, bias, padding, dilation)

    depthwise.depthwise_conv2d = hooked
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, size, size, device=device))
    finally:
        depthwise.depthwise_conv2d = conv
    return counts


def fma_peak_gflops(iters, device='cpu'):
    """float32 matmul GFLOP/s (2 per multiply-add, no TF32): the FMA peak this run can reach on the device."""
    import torch
    n = 1024 if device == 'cpu' else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ms = min(round_times_ms([lambda: torch.mm(a, b)], 2 * iters, warmup=2, device=device)[0])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2 * n**3 / ms / 1e6


def measure(shape, iters, device='cpu', batch=1, reps=1):
    """Forward and forward + backward milliseconds of every method at one shape."""
    import torch
    import torch.nn.functional as F
    C, H, W, K, r = shape
    p = r * (K - 1) // 2
    op = torch.ops.mmoverlock
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(batch, C, H, W, generator=gen).to(device)
    weight = torch.randn(C, 1, K, K, generator=gen).to(device).requires_grad_()
    inputs = {'nchw': base.clone().requires_grad_(),
              'nhwc': base.contiguous(memory_format=torch.channels_last).requires_grad_()}
    grads = {k: torch.randn_like(v) for k, v in inputs.items()}
    ours = lambda x: op.depthwise_forward(x, weight, None, p, r)  # noqa: E731
    vendor = lambda x: F.conv2d(x, weight, None, 1, p, r, C)  # noqa: E731
    names = methods(device)
    forward, train = [], []
    for method in names:
        conv, layout = (ours if method.startswith('ours') else vendor), method.split('-')[1]
        x, g = inputs[layout], grads[layout]

        def fwd(conv=conv, x=x):
            with torch.no_grad():
                conv(x)

        def fwd_bwd(conv=conv, x=x, g=g):
            torch.autograd.grad(conv(x), (x, weight), g)

        forward.append(fwd)
        train.append(fwd_bwd)
    timed = [round_times_ms(fns, iters, device=device, reps=reps) for fns in (forward, train)]
    return dict(zip(names, timed[0])), dict(zip(names, timed[1]))


def run_setting(args, setting, argv):
    import torch

    import mmoverlock._ext as ext
    if args.threads:
        torch.set_num_threads(args.threads)
    device, reps = args.device, args.reps or (3 if args.device == 'cuda' else 1)
    counts = depthwise_shapes(args.arch, args.size, device)
    peak = fma_peak_gflops(args.iters, device)
    rows = []
    for shape, calls in sorted(counts.items(), key=lambda kv: (-kv[0][1], kv[0][3], kv[0][4])):
        C, H, W, K, r = shape
        gflop = 2 * args.batch * C * H * W * K * K / 1e9
        fwd_times, train_times = measure(shape, args.iters, device, args.batch, reps)
        fwd = {m: min(t) for m, t in fwd_times.items()}
        train = {m: min(t) for m, t in train_times.items()}
        medians = [{m: statistics.median(t) for m, t in times.items()} for times in (fwd_times, train_times)]
        rows.append(dict(C=C, H=H, W=W, K=K, dilation=r, calls=calls, gflop_fwd=gflop, forward_ms=fwd,
                         fwd_bwd_ms=train, forward_median_ms=medians[0], fwd_bwd_median_ms=medians[1]))
        print(f'[{setting}] C={C} {H}x{W} K={K} r={r}: fwd ' +
              ' '.join(f'{m} {t:.2f}' for m, t in fwd.items()) + ' | fwd+bwd ' +
              ' '.join(f'{m} {t:.2f}' for m, t in train.items()), flush=True)
    meta = dict(setting=setting, device=device, cpu=cpu_model(), isa_ours=ext.cpu_capability(),
                gpu=torch.cuda.get_device_name() if device == 'cuda' else None,
                env={k: os.environ.get(k) for k in ISA_ENV_VARS}, threads=torch.get_num_threads(),
                torch=torch.__version__, arch=args.arch, size=args.size, batch=args.batch, iters=args.iters,
                reps=reps, methods=list(methods(device)), fma_peak_gflops=peak,
                command=command_line(__file__, argv), load_average=os.getloadavg())
    out_dir = osp.join(args.out, setting)
    os.makedirs(out_dir, exist_ok=True)
    with open(osp.join(out_dir, 'depthwise.json'), 'w') as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    with open(osp.join(out_dir, 'depthwise.md'), 'w') as f:
        f.write(markdown(meta, rows))
    return dict(meta=meta, rows=rows)


def markdown(meta, rows):
    ours_nchw, ours_nhwc, vendor_nchw, vendor_nhwc = meta['methods']
    vendor = {'onednn': 'oneDNN', 'cudnn': 'cuDNN'}[vendor_nchw.split('-')[0]]
    if meta['device'] == 'cuda':
        machine = (f"GPU: {meta['gpu']}, batch {meta['batch']}, {meta['reps']} convs per timed call; "
                   f"torch {meta['torch']}.")
        peak = 'float32 8192² matmul without TF32'
    else:
        machine = (f"CPU: {meta['cpu']}; our kernels: {meta['isa_ours']}; env: "
                   + ', '.join(f'{k}={v}' for k, v in meta['env'].items() if v) + f"; {meta['threads']} thread(s); "
                   f"torch {meta['torch']}; load average {', '.join(f'{x:.1f}' for x in meta['load_average'])}.")
        peak = 'float32 1024² matmul'
    lines = [f"# Depthwise convs of OverLoCK-{meta['arch'].upper()} at {meta['size']}x{meta['size']}, "
             f"setting `{meta['setting']}`", '', machine, '',
             f"FMA peak ({peak}, this run): **{meta['fma_peak_gflops']:.0f} GFLOP/s**. "
             f"Fastest of {meta['iters']} interleaved rounds (the JSON has the medians too: on a shared machine a "
             f"median carries the other jobs' preemptions), ms per call; speed-up = {vendor}'s faster layout ÷ "
             'our faster layout; GFLOP/s counts 2 per multiply-add of the K×K taps.', '',
             f"Command: `{meta['command']}`", '',
             f'| C | H×W | K | r | calls | fwd ours nchw / nhwc | fwd {vendor} nchw / nhwc | fwd GFLOP/s ours (best) '
             f'| fwd speed-up | fwd+bwd ours nchw / nhwc | fwd+bwd {vendor} nchw / nhwc | fwd+bwd speed-up |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        f, t = row['forward_ms'], row['fwd_bwd_ms']
        ours_f, dnn_f = min(f[ours_nchw], f[ours_nhwc]), min(f[vendor_nchw], f[vendor_nhwc])
        ours_t, dnn_t = min(t[ours_nchw], t[ours_nhwc]), min(t[vendor_nchw], t[vendor_nhwc])
        lines.append(
            f"| {row['C']} | {row['H']}×{row['W']} | {row['K']} | {row['dilation']} | {row['calls']} "
            f"| {f[ours_nchw]:.3f} / {f[ours_nhwc]:.3f} | {f[vendor_nchw]:.3f} / {f[vendor_nhwc]:.3f} "
            f"| {row['gflop_fwd'] / ours_f * 1e3:.0f} | {dnn_f / ours_f:.2f}× "
            f"| {t[ours_nchw]:.3f} / {t[ours_nhwc]:.3f} | {t[vendor_nchw]:.3f} / {t[vendor_nhwc]:.3f} "
            f"| {dnn_t / ours_t:.2f}× |")
    total = {m: sum(r['calls'] * r['fwd_bwd_ms'][m] for r in rows) for m in meta['methods']}
    lines += ['', 'Per forward + backward pass of the model (calls × fwd+bwd): ' +
              ', '.join(f'{m} {v:.1f} ms' for m, v in total.items()) + '.', '']
    return '\n'.join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.device == 'cuda':
        args.out = args.out or 'benchmarks/depthwise'
        run_setting(args, 'cuda', argv)
        return
    args.out = args.out or osp.join('benchmarks', 'depthwise', 'cpu')

    def load(setting):
        with open(osp.join(args.out, setting, 'depthwise.json')) as f:
            return json.load(f)

    run_isa_settings(args.isa, __file__, argv, lambda setting: run_setting(args, setting, argv), load)


if __name__ == '__main__':
    main()
