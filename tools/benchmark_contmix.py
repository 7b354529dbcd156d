"""Benchmark the ContMix core: time and peak memory of every backend and of two baselines.

Methods (all compute the same numbers: bias from ``rpb``, softmax over the K*K taps, aggregation):

* ``fused-<backend>``: ``mmoverlock.ops.contmix_aggregate(weights, value, K, rpb=rpb, softmax=True)`` for each built
  backend (``cpu``/``cuda`` = the compiled kernels, ``torch`` = the pure-torch fallback).
* ``unfold``: the authors' pure-torch formulation: ``F.unfold`` of the values, which materialises K*K*C numbers per
  pixel. Their code pads before unfolding; to give exactly our (NATTEN-style, shifted-window) numbers this unfolds the
  valid windows and replicate-pads the window grid, which has the same cost.
* ``unfused``: the chain the fusion replaces, on our own kernel: gather rpb, add, ``softmax``, then
  ``contmix_aggregate(probs, value, K)`` without bias or softmax (NATTEN's ``na2d_av``).

Timing: the median of several runs after a warm-up, forward alone and forward + backward (gradients of weights,
value and rpb). Memory: the peak *extra* memory of one forward + backward (and of a forward alone, output kept
alive) above what the inputs already hold. On CUDA it comes from ``torch.cuda.max_memory_allocated``. On the CPU
torch has no allocator statistics, so each measurement runs in a fresh subprocess with glibc's mmap threshold fixed
at 64 KiB (every tensor is mmapped and returned on free); the peak resident set (VmHWM, reset through
/proc/self/clear_refs just before the run) minus the resident set before it is the number reported.

Writes ``results.json``, ``results.md`` and (with matplotlib) ``results.png`` under ``--out``
(default ``benchmarks/contmix/<device>``).

Examples::

    python tools/benchmark_contmix.py                    # CPU, default case list
    python tools/benchmark_contmix.py --device cuda      # GPU, adds the bandwidth figure at 4x batch
    python tools/benchmark_contmix.py --cases 2,8,50,84,16,13 --methods fused-cpu,unfused
"""
import argparse
import datetime
import gc
import json
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmoverlock.ops import available_backends, contmix_aggregate  # noqa: E402

DEFAULT_CASE = (2, 8, 50, 84, 16, 13)  # stage 3 of an 800x1333 detection image (B, G, H, W, C, K)
MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': '65536', 'MALLOC_TRIM_THRESHOLD_': '0'}


# ------------------------------------------------------------------------------------------------------- methods
def window_index(length, K, device):
    """[length, K] neighbour positions along one axis (windows shifted inwards at the borders)."""
    start = (torch.arange(length, device=device) - K // 2).clamp(0, length - K)
    return start[:, None] + torch.arange(K, device=device)


def bias_index(H, W, K, device):
    """[H, W, K*K] flat index into a group's (2K-1)^2 bias table."""
    rows = window_index(H, K, device) - torch.arange(H, device=device)[:, None] + K - 1
    cols = window_index(W, K, device) - torch.arange(W, device=device)[:, None] + K - 1
    return (rows[:, None, :, None] * (2 * K - 1) + cols[None, :, None, :]).reshape(H, W, K * K)


def biased_softmax(weights, rpb, K):
    """The unfused front half: gather the bias, add it, softmax (two K*K-per-pixel tensors, both kept by autograd)."""
    _, G, H, W, _ = weights.shape
    bias = rpb.flatten(1)[:, bias_index(H, W, K, weights.device)]  # [G, H, W, K*K]
    return (weights + bias.unsqueeze(0)).softmax(dim=-1)


def unfold_contmix(weights, value, rpb, K):
    """The authors' F.unfold formulation: K*K*C values per pixel, multiplied by the weights and summed."""
    B, G, H, W, C = value.shape
    r = K // 2
    probs = biased_softmax(weights, rpb, K)
    x = value.permute(0, 1, 4, 2, 3).reshape(B * G, C, H, W)
    cols = F.unfold(x, K).view(B * G, C * K * K, H - K + 1, W - K + 1)
    cols = F.pad(cols, (r, r, r, r), mode='replicate').view(B, G, C, K * K, H, W)
    out = (cols * probs.permute(0, 1, 4, 2, 3).unsqueeze(2)).sum(3)  # [B, G, C, H, W]
    return out.permute(0, 1, 3, 4, 2)


def make_method(name, device):
    """A function (weights, value, rpb, K) -> out for a method name."""
    if name.startswith('fused-'):
        backend = name[len('fused-'):]
        return lambda w, v, b, K: contmix_aggregate(w, v, K, rpb=b, softmax=True, backend=backend)
    if name == 'unfused':
        backend = 'cuda' if device == 'cuda' else ('cpu' if 'cpu' in available_backends() else 'torch')
        return lambda w, v, b, K: contmix_aggregate(biased_softmax(w, b, K), v, K, backend=backend)
    if name == 'unfold':
        return unfold_contmix
    raise ValueError(f'unknown method {name!r}')


def default_methods(device):
    built = [b for b in available_backends() if b != 'torch' and b == device]
    return [f'fused-{b}' for b in built] + ['fused-torch', 'unfused', 'unfold']


def make_inputs(case, device, dtype, seed=0):
    B, G, H, W, C, K = case
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(B, G, H, W, K * K, generator=gen).to(device, dtype).requires_grad_()
    value = torch.randn(B, G, H, W, C, generator=gen).to(device, dtype).requires_grad_()
    rpb = (0.1 * torch.randn(G, 2 * K - 1, 2 * K - 1, generator=gen)).to(device, dtype).requires_grad_()
    return weights, value, rpb


def run_once(fn, inputs, K, backward):
    """One forward (and backward); returns what must stay alive until the measurement ends."""
    out = fn(*inputs, K)
    if not backward:
        return out
    grads = torch.autograd.grad(out, inputs, torch.ones_like(out))
    return grads


# ------------------------------------------------------------------------------------------------------ measuring
def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def time_method(fn, inputs, K, device, backward, budget_s):
    """Median wall time in ms: one warm-up, then as many runs (1..7) as fit in about budget_s."""
    sync(device)
    start = time.perf_counter()
    run_once(fn, inputs, K, backward)
    sync(device)
    first = time.perf_counter() - start
    runs = max(1, min(7, int(budget_s / max(first, 1e-6))))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        keep = run_once(fn, inputs, K, backward)
        sync(device)
        times.append(time.perf_counter() - start)
        del keep
    return 1e3 * statistics.median(times), runs


def cuda_peak_extra(fn, inputs, K, backward):
    """Peak CUDA memory above the inputs during one run, in MiB."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    keep = run_once(fn, inputs, K, backward)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del keep
    return peak / 2**20


def _status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def cpu_child(spec):
    """Subprocess body: peak extra resident memory of one run of `spec` (run with MALLOC_ENV)."""
    import ctypes
    libc = ctypes.CDLL('libc.so.6')
    case, method, backward = tuple(spec['case']), spec['method'], spec['backward']
    torch.set_num_threads(spec['threads'])
    fn = make_method(method, 'cpu')
    K = case[5]
    # Warm up on a small case (library initialisation, thread pool) so that it is not counted.
    run_once(fn, make_inputs((1, 1, K, K, 2, K), 'cpu', torch.float32), K, True)
    inputs = make_inputs(case, 'cpu', torch.float32)
    gc.collect()
    libc.malloc_trim(0)
    base = _status_kib('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current resident set
    keep = run_once(fn, inputs, K, backward)
    peak = _status_kib('VmHWM')
    del keep
    print(json.dumps({'peak_extra_mib': (peak - base) / 1024}))


def cpu_peak_extra(case, method, backward, threads):
    spec = json.dumps({'case': list(case), 'method': method, 'backward': backward, 'threads': threads})
    env = dict(os.environ, **MALLOC_ENV)
    proc = subprocess.run([sys.executable, osp.abspath(__file__), '--child', spec], env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f'memory measurement of {method} {case} failed:\n{proc.stderr[-2000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])['peak_extra_mib']


# -------------------------------------------------------------------------------------------------------- reports
def machine_info(device):
    info = {
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'torch_cuda': torch.version.cuda,
        'platform': platform.platform(),
        'backends': available_backends(),
        'device': device,
    }
    if device == 'cuda':
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    else:
        model = platform.processor()
        try:
            with open('/proc/cpuinfo') as f:
                model = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
        except (OSError, StopIteration):
            pass
        info.update(cpu=model, cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                    load_average_before=list(os.getloadavg()))
    return info


def case_label(case):
    return 'B{}·G{}·{}×{}·C{}·K{}'.format(*case)


def summarise(results, device):
    """Target ratios at the default case (forward + backward, bias + softmax)."""
    rows = {r['method']: r for r in results if tuple(r['case']) == DEFAULT_CASE}
    fused = rows.get(f'fused-{device}')
    if fused is None:
        return {}
    summary = {'case': list(DEFAULT_CASE), 'fused': fused['method']}
    for base in ('unfold', 'unfused'):
        if base in rows:
            summary[f'speedup_vs_{base}'] = rows[base]['fwd_bwd_ms'] / fused['fwd_bwd_ms']
            summary[f'memory_fraction_of_{base}'] = fused['fwd_bwd_peak_mib'] / rows[base]['fwd_bwd_peak_mib']
    return summary


def write_markdown(path, info, results, summary, memory_method, bandwidth):
    lines = ['# ContMix core benchmark', '']
    lines += [f'- {k}: {v}' for k, v in info.items()]
    lines += [f'- memory: {memory_method}', '- all methods: rpb + softmax, float32, gradients of weights, value, rpb',
              '']
    lines += ['| case | method | fwd ms | fwd+bwd ms | fwd peak extra MiB | fwd+bwd peak extra MiB |',
              '| --- | --- | ---: | ---: | ---: | ---: |']
    for r in results:
        lines.append(f"| {case_label(r['case'])} | {r['method']} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | "
                     f"{r['fwd_peak_mib']:.1f} | {r['fwd_bwd_peak_mib']:.1f} |")
    if summary:
        lines += ['', f"## Default case {case_label(summary['case'])}, forward + backward ({summary['fused']})", '']
        for key, value in summary.items():
            if key.startswith(('speedup', 'memory')):
                lines.append(f'- {key}: {value:.3g}')
    if bandwidth:
        lines += ['', '## Forward bandwidth', '']
        lines += [f'- {k}: {v}' for k, v in bandwidth.items()]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def write_plot(path, results, device):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib is not installed: skipping the plot')
        return False
    kernel_sizes = sorted({r['case'][5] for r in results})
    fig, axes = plt.subplots(2, len(kernel_sizes), figsize=(4.5 * len(kernel_sizes), 7), squeeze=False)
    for col, K in enumerate(kernel_sizes):
        for method in sorted({r['method'] for r in results}):
            pts = sorted((r['case'][2] * r['case'][3], r['fwd_bwd_ms'], r['fwd_bwd_peak_mib']) for r in results
                         if r['method'] == method and r['case'][5] == K and r['case'][0] == DEFAULT_CASE[0])
            if not pts:
                continue
            px, ms, mib = zip(*pts)
            axes[0][col].plot(px, ms, marker='o', label=method)
            axes[1][col].plot(px, mib, marker='o', label=method)
        axes[0][col].set_title(f'K = {K}: forward + backward')
        axes[0][col].set_ylabel('time (ms)')
        axes[1][col].set_ylabel('peak extra memory (MiB)')
        axes[1][col].set_xlabel('pixels H×W (B=2, G=8, C=16)')
        for row in axes:
            row[col].set_yscale('log')
            row[col].grid(True, which='both', alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f'ContMix core on {device} (rpb + softmax, float32)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def forward_bandwidth(device, dtype):
    """GPU: forward bandwidth of the fused kernel at the default case x4 batch (bytes that must move once)."""
    B, G, H, W, C, K = DEFAULT_CASE
    case = (4 * B, G, H, W, C, K)
    inputs = make_inputs(case, device, dtype)
    fn = make_method('fused-cuda', device)
    with torch.no_grad():
        ms, _ = time_method(fn, inputs, K, device, False, 1.0)
    elem = torch.finfo(dtype).bits // 8
    moved = case[0] * G * H * W * (K * K + 2 * C) * elem  # read weights and value, write out
    gbs = moved / (ms / 1e3) / 1e9
    return {'case': case_label(case), 'dtype': str(dtype), 'fwd_ms': round(ms, 4), 'GB_moved': moved / 1e9,
            'achieved_GB_per_s': round(gbs, 1)}


# ------------------------------------------------------------------------------------------------------------ main
def parse_cases(text):
    return [tuple(int(x) for x in item.split(',')) for item in text.split(';') if item]


def default_cases(device):
    B, G, H, W, C, _ = DEFAULT_CASE
    scales = (0.5, 1.0, 1.5) if device == 'cpu' else (1.0, 2.0, 4.0)
    cases = [DEFAULT_CASE]
    for K in (5, 7, 13):
        for s in scales:
            case = (B, G, int(H * s), int(W * s), C, K)
            if case not in cases:
                cases.append(case)
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--cases', type=parse_cases, default=None,
                        help='";"-separated B,G,H,W,C,K tuples (default: the default case and K=5,7,13 at 3 sizes)')
    parser.add_argument('--methods', default=None, help='comma-separated (default: every backend + baselines)')
    parser.add_argument('--budget', type=float, default=3.0, help='seconds of repeated runs per measurement')
    parser.add_argument('--out', default=None, help='results folder (default: benchmarks/contmix/<device>)')
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        cpu_child(json.loads(args.child))
        return

    device = args.device
    cases = args.cases or default_cases(device)
    methods = args.methods.split(',') if args.methods else default_methods(device)
    out_dir = args.out or osp.join(REPO, 'benchmarks', 'contmix', device)
    os.makedirs(out_dir, exist_ok=True)
    info = machine_info(device)
    memory_method = ('torch.cuda.max_memory_allocated() minus memory_allocated() before the run' if device == 'cuda'
                     else 'fresh subprocess per measurement, MALLOC_MMAP_THRESHOLD_=65536: VmHWM (reset via '
                     '/proc/self/clear_refs) minus VmRSS before the run')
    print(json.dumps(info, indent=1))

    results = []
    for case in cases:
        K = case[5]
        inputs = make_inputs(case, device, torch.float32)
        for method in methods:
            fn = make_method(method, device)
            fwd_ms, fwd_runs = time_method(fn, inputs, K, device, False, args.budget)
            fb_ms, fb_runs = time_method(fn, inputs, K, device, True, args.budget)
            if device == 'cuda':
                fwd_mib = cuda_peak_extra(fn, inputs, K, False)
                fb_mib = cuda_peak_extra(fn, inputs, K, True)
            else:
                fwd_mib = cpu_peak_extra(case, method, False, torch.get_num_threads())
                fb_mib = cpu_peak_extra(case, method, True, torch.get_num_threads())
            row = dict(case=list(case), method=method, fwd_ms=fwd_ms, fwd_bwd_ms=fb_ms, fwd_runs=fwd_runs,
                       fwd_bwd_runs=fb_runs, fwd_peak_mib=fwd_mib, fwd_bwd_peak_mib=fb_mib)
            results.append(row)
            print(f"{case_label(case):>28} {method:>12}: fwd {fwd_ms:9.1f} ms  fwd+bwd {fb_ms:9.1f} ms  "
                  f"peak extra fwd {fwd_mib:8.1f} MiB  fwd+bwd {fb_mib:8.1f} MiB", flush=True)
        del inputs
        gc.collect()

    bandwidth = forward_bandwidth(device, torch.float32) if device == 'cuda' and 'cuda' in available_backends() \
        else None
    summary = summarise(results, device)
    if device == 'cpu':
        info['load_average_after'] = list(os.getloadavg())
    payload = dict(machine=info, memory_method=memory_method, results=results, summary=summary,
                   forward_bandwidth=bandwidth)
    with open(osp.join(out_dir, 'results.json'), 'w') as f:
        json.dump(payload, f, indent=1)
    write_markdown(osp.join(out_dir, 'results.md'), info, results, summary, memory_method, bandwidth)
    plotted = write_plot(osp.join(out_dir, 'results.png'), results, device)
    print(json.dumps(summary, indent=1))
    print(f"wrote {out_dir}/results.json, results.md{', results.png' if plotted else ''}")


if __name__ == '__main__':
    main()
