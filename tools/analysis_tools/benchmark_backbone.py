"""Training-step time and peak memory of the OverLoCK backbone alone (no neck, head or data pipeline).

One step = forward of a random batch, a scalar loss over the four output levels, backward and an AdamW update,
optionally under ``torch.autocast`` (bfloat16, or float16 with a gradient scaler). Time: the median (and mean/min)
of ``--iters`` steps after ``--warmup`` untimed ones, synchronising the GPU around each. Peak memory:
``torch.cuda.max_memory_allocated`` over the timed steps on a GPU; on the CPU the process's peak resident set.

Usage:
    python tools/analysis_tools/benchmark_backbone.py --arch t --shape 800 1333 --batch-size 2 --device cuda \\
        --out backbone.json
"""
import argparse
import json
import os
import os.path as osp
import platform
import resource
import statistics

import torch

from mmoverlock.analysis import time_calls
from mmoverlock.models import OverLoCK
from mmoverlock.ops import available_backends

AMP_DTYPES = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def peak_memory_mib(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def benchmark(arch='t', shape=(800, 1333), batch_size=2, iters=5, warmup=2, amp='none', device=None, seed=0):
    """Time ``iters`` training steps of the backbone; return the result dict written to JSON."""
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    torch.manual_seed(seed)
    model = OverLoCK(arch=arch, overview_fusion=True).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    amp_dtype = AMP_DTYPES[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    inputs = torch.randn(batch_size, 3, *shape, device=device)
    losses = []

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(inputs)
            loss = sum(out.float().square().mean() for out in outputs)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.detach())

    for _ in range(warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = time_calls(step, iters, warmup=0, device=device)
    median = statistics.median(times)
    on_gpu = device.type == 'cuda'
    return dict(
        arch=arch, shape=list(shape), batch_size=batch_size, amp=amp, device=str(device),
        device_name=torch.cuda.get_device_name(device) if on_gpu else platform.processor() or platform.machine(),
        torch=torch.__version__, contmix_backends=available_backends(),
        params=sum(p.numel() for p in model.parameters()), warmup=warmup, iters=iters,
        step_s_median=median, step_s_mean=statistics.fmean(times), step_s_min=min(times),
        images_per_s=batch_size / median, peak_memory_mib=peak_memory_mib(device),
        peak_memory_method='torch.cuda.max_memory_allocated' if on_gpu else 'process peak RSS',
        loss_finite=all(torch.isfinite(loss).item() for loss in losses))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Training-step time and peak memory of the OverLoCK backbone')
    parser.add_argument('--arch', default='t', help="variant: 'xt', 't', 's' or 'b'")
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=(800, 1333), help='input size')
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--iters', type=int, default=5, help='timed steps')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps before timing')
    parser.add_argument('--amp', choices=sorted(AMP_DTYPES), default='none', help='autocast dtype')
    parser.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--out', default='benchmark_backbone.json', help='where to write the JSON result')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    result = benchmark(args.arch, tuple(args.shape), args.batch_size, args.iters, args.warmup, args.amp, args.device)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    print(f"OverLoCK-{args.arch.upper()} training step, batch {args.batch_size}, {args.shape[0]}x{args.shape[1]}, "
          f"amp {args.amp}: {result['step_s_median'] * 1e3:.1f} ms (median of {args.iters}), peak memory "
          f"{result['peak_memory_mib']:.0f} MiB ({result['device_name']}); wrote {args.out}")
    if not result['loss_finite']:
        raise SystemExit('the loss was not finite')
    return result


if __name__ == '__main__':
    main()
