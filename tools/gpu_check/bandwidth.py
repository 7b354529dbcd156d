"""Achieved memory bandwidth of the fused ContMix op, as a percentage of a device-to-device copy timed in the same run.

The op is memory-bound: its floor is the bytes it must move once (forward: read weights and value, write out;
backward: read grad_out, weights and value, write grad_weights and grad_value). Bandwidth = those bytes over the
measured time; the copy (a large ``Tensor.copy_``, bytes read plus written) is the ceiling on the same device.
Times are medians of timed repeats after a warm-up (CUDA events on a GPU). Writes a JSON file.

Usage:
    python tools/gpu_check/bandwidth.py --device cuda --out bandwidth.json
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import time

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmoverlock.ops import contmix_aggregate  # noqa: E402

# Stage 3 of an 800x1333 detection image at batch 8 (B, G, H, W, C, K): large enough to fill a GPU.
DEFAULT_CASE = (8, 8, 50, 84, 16, 13)


def median_ms(fn, device, repeats=20, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_gb_per_s(device, nbytes):
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * 4 / (ms / 1e3) / 1e9  # read + write


def contmix_figures(case, dtype, device, copy_gbs, seed=0):
    B, G, H, W, C, K = case
    T = K * K
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(B, G, H, W, T, generator=gen).to(device, dtype).requires_grad_()
    value = torch.randn(B, G, H, W, C, generator=gen).to(device, dtype).requires_grad_()
    rpb = torch.randn(G, 2 * K - 1, 2 * K - 1, generator=gen).to(device, dtype).requires_grad_()
    grad_out = torch.randn(B, G, H, W, C, generator=gen).to(device, dtype)
    elem = torch.finfo(dtype).bits // 8
    pixels = B * G * H * W

    def forward():
        with torch.no_grad():
            contmix_aggregate(weights, value, K, rpb=rpb, softmax=True)

    def forward_backward():
        out = contmix_aggregate(weights, value, K, rpb=rpb, softmax=True)
        torch.autograd.grad(out, (weights, value, rpb), grad_out)

    figures = {}
    for name, fn, elements in (('forward', forward, T + 2 * C), ('forward_backward', forward_backward, 3 * T + 5 * C)):
        ms = median_ms(fn, device)
        gbs = pixels * elements * elem / (ms / 1e3) / 1e9
        figures[name] = dict(ms=round(ms, 4), GB_moved=round(pixels * elements * elem / 1e9, 4),
                             achieved_GB_per_s=round(gbs, 1), percent_of_copy=round(100 * gbs / copy_gbs, 1))
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description='ContMix bandwidth as a percentage of a device-to-device copy')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--case', default=','.join(map(str, DEFAULT_CASE)), help='B,G,H,W,C,K')
    parser.add_argument('--dtypes', default='float32,bfloat16', help='comma-separated torch dtypes')
    parser.add_argument('--out', default='bandwidth.json')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    case = tuple(int(x) for x in args.case.split(','))
    copy_gbs = copy_gb_per_s(device, 2**30 if device.type == 'cuda' else 2**26)
    result = dict(device=str(device), case=list(case), copy_GB_per_s=round(copy_gbs, 1),
                  device_name=torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
                  torch=torch.__version__, dtypes={})
    for name in args.dtypes.split(','):
        dtype = getattr(torch, name)
        if device.type == 'cpu' and dtype not in (torch.float32, torch.float64):
            continue  # the CPU kernels take float32/float64 only
        result['dtypes'][name] = contmix_figures(case, dtype, device, copy_gbs)
        for phase, fig in result['dtypes'][name].items():
            print(f"{name} {phase}: {fig['ms']:.3f} ms, {fig['achieved_GB_per_s']:.0f} GB/s = "
                  f"{fig['percent_of_copy']:.0f}% of the copy's {copy_gbs:.0f} GB/s")
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
