"""Training-step time and peak memory of the OverLoCK backbone alone (no neck, head or data pipeline).

One step = forward of a random batch, a scalar loss over the four output levels, backward and an AdamW update,
optionally under ``torch.autocast`` (bfloat16, or float16 with a gradient scaler). Time: the median (and mean/min)
of ``--iters`` steps after ``--warmup`` untimed ones (:mod:`mmoverlock.analysis.measure`, GPU synchronised around
each). Peak memory: the measuring module's one definition, for one more step after the timed ones. ``--isa``
repeats the run per instruction-set setting, writing ``<dir>/<setting>/<name>.json`` for ``--out <dir>/<name>.json``.

Usage:
    python tools/analysis_tools/benchmark_backbone.py --arch t --shape 800 1333 --batch-size 2 --device cuda \\
        --out backbone.json
"""
import argparse
import os.path as osp
import sys

import torch

from mmoverlock.analysis.measure import (PEAK_MEMORY_DEFINITION, add_isa_argument, command_line, interleaved_times,
                                         isa_output, machine_info, measure_per_isa, peak_memory_mib, record,
                                         set_threads, write_json)
from mmoverlock.models import OverLoCK
from mmoverlock.ops import available_backends

AMP_DTYPES = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


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

    timing = interleaved_times({'step': step}, iters, warmup, device)['step']
    memory = peak_memory_mib(step, device)  # after the timed steps: nothing is timed after this
    on_gpu = device.type == 'cuda'
    return dict(
        arch=arch, shape=list(shape), batch_size=batch_size, amp=amp, device=str(device),
        device_name=torch.cuda.get_device_name(device) if on_gpu else machine_info(probe_onednn=False)['cpu'],
        torch=torch.__version__, contmix_backends=available_backends(),
        params=sum(p.numel() for p in model.parameters()), warmup=warmup, iters=iters,
        step_s_median=timing.median_s, step_s_mean=timing.summary()['mean_s'], step_s_min=timing.min_s,
        images_per_s=batch_size / timing.median_s, peak_memory_mib=memory['peak_mib'],
        peak_memory_method=PEAK_MEMORY_DEFINITION, loss_finite=all(torch.isfinite(loss).item() for loss in losses))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Training-step time and peak memory of the OverLoCK backbone')
    parser.add_argument('--arch', default='t', help="variant: 'xt', 't', 's' or 'b'")
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=(800, 1333), help='input size')
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--iters', type=int, default=5, help='timed steps')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps before timing')
    parser.add_argument('--amp', choices=sorted(AMP_DTYPES), default='none', help='autocast dtype')
    parser.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--threads', type=int, help='torch intra-op threads (default: torch\'s choice)')
    parser.add_argument('--out', default='benchmark_backbone.json', help='where to write the JSON result')
    add_isa_argument(parser)
    return parser.parse_args(argv)


def measure(args, command, setting=None):
    set_threads(args.threads)
    result = benchmark(args.arch, tuple(args.shape), args.batch_size, args.iters, args.warmup, args.amp, args.device)
    result.update(command=command, machine=machine_info(torch.device(result['device']).type))
    out = isa_output(args.out, setting)
    write_json(out, result)
    print(f"OverLoCK-{args.arch.upper()} training step, batch {args.batch_size}, {args.shape[0]}x{args.shape[1]}, "
          f"amp {args.amp}: {result['step_s_median'] * 1e3:.1f} ms (median of {args.iters}), peak memory "
          f"{result['peak_memory_mib']:.0f} MiB ({result['device_name']}); wrote {out}")
    if not result['loss_finite']:
        raise SystemExit('the loss was not finite')
    return result


def records(result):
    name = f"OverLoCK-{result['arch'].upper()} {result['shape'][0]}x{result['shape'][1]} b{result['batch_size']}"
    return [record(name, 'training step s', result['step_s_median']),
            record(name, 'training peak MiB', result['peak_memory_mib'])]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    return measure_per_isa(args.isa, __file__, argv, lambda setting: measure(args, command_line(__file__, argv),
                                                                             setting),
                           lambda setting: isa_output(args.out, setting), osp.splitext(args.out)[0] + '_isa',
                           'OverLoCK backbone training step', records)


if __name__ == '__main__':
    main()
