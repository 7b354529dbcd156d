"""Benchmark the ContMix core: time, roofline figures and peak memory of every backend and of two baselines.

Methods (``mmoverlock.ops.contmix_baselines``; all compute the op with bias and softmax):
``fused-<backend>`` (``cpu``/``cuda`` = the compiled kernels, ``torch`` = the pure-torch fallback),
``fused-cpu:<isa>`` (the CPU kernels with one instruction set, timed at the default case), ``unfused`` (bias and
softmax in torch, then the aggregation kernel) and ``unfold`` (the authors' formulation).

Timing: median of several runs after a warm-up, forward alone and forward + backward, in this process. For each
case the op's minimum work and traffic (``contmix_cost``: multiply-adds, exps, bytes) give the achieved GFLOP/s
(2 per multiply-add) and GB/s, and the GB/s as a fraction of a large tensor copy's bandwidth measured in the same
run (STREAM-like: bytes read + written). Memory: peak extra memory of one call above the inputs; on the CPU each
measurement runs in a fresh subprocess (``contmix_peak_memory.py``), on CUDA from ``torch.cuda.max_memory_allocated``.

Writes ``results.json``, ``results.md`` (with the command that produced it) and, with matplotlib, ``results.png``
under ``--out`` (default ``benchmarks/contmix/<device>``). ``--traffic-only`` writes ``traffic.json`` and
``traffic.md`` instead, without timing anything: the bytes each pass of the CUDA kernels moves by their traffic
model (``contmix_cuda_traffic``) next to the op's minimum, per case and dtype size.

Examples::

    python tools/analysis_tools/benchmark_contmix.py                    # CPU, default case list
    python tools/analysis_tools/benchmark_contmix.py --device cuda
    python tools/analysis_tools/benchmark_contmix.py --cases "2,8,50,84,16,13" --methods fused-cpu,unfused
    python tools/analysis_tools/benchmark_contmix.py --traffic-only --out benchmarks/contmix/cuda-traffic
"""
import argparse
import datetime
import gc
import json
import os
import os.path as osp
import platform
import shlex
import statistics
import subprocess
import sys
import time

import torch

from mmoverlock.ops import available_backends
from mmoverlock.ops.contmix_baselines import contmix_cost, contmix_cuda_traffic, contmix_method, random_inputs

DEFAULT_CASE = (2, 8, 50, 84, 16, 13)  # stage 3 of an 800x1333 detection image (B, G, H, W, C, K)
PEAK_MEMORY_TOOL = osp.join(osp.dirname(osp.abspath(__file__)), 'contmix_peak_memory.py')


def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def run_once(fn, inputs, K, backward):
    """One forward (and backward); returns what must stay alive until the measurement ends."""
    out = fn(*inputs, K)
    return torch.autograd.grad(out, inputs, torch.ones_like(out)) if backward else out


def time_method(fn, inputs, K, device, backward, budget_s):
    """Median wall time and median CPU time of this process (all threads) in ms, and the number of runs: one
    warm-up, then as many runs (1..7) as fit in about budget_s. On a busy machine the CPU time is the steadier."""
    sync(device)
    start = time.perf_counter()
    run_once(fn, inputs, K, backward)
    sync(device)
    first = time.perf_counter() - start
    runs = max(1, min(7, int(budget_s / max(first, 1e-6))))
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        keep = run_once(fn, inputs, K, backward)
        sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        del keep
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu), runs


def copy_bandwidth_gbs(device, mib=256):
    """STREAM-like copy bandwidth: bytes read + written per second by ``dst.copy_(src)`` of a ``mib`` buffer."""
    src = torch.ones(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(6):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / min(times[1:]) / 1e9


def peak_extra_mib(case, method, device, backward, inputs):
    """Peak extra memory of one call, MiB: a fresh subprocess on the CPU, the CUDA allocator's peak on a GPU."""
    if device == 'cuda':
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        keep = run_once(contmix_method(method, device), inputs, case[5], backward)
        torch.cuda.synchronize()
        del keep
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    cmd = [sys.executable, PEAK_MEMORY_TOOL, '--case', ','.join(map(str, case)), '--method', method,
           '--threads', str(torch.get_num_threads())] + (['--backward'] if backward else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f'memory measurement of {method} {case} failed:\n{proc.stderr[-2000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])['peak_extra_mib']


def roofline(case, ms, backward, copy_gbs):
    cost = contmix_cost(case, backward)
    seconds = ms / 1e3
    gbs = cost['bytes'] / seconds / 1e9
    return dict(cost, gflops=2 * cost['multiply_adds'] / seconds / 1e9, gbs=gbs, copy_fraction=gbs / copy_gbs)


# -------------------------------------------------------------------------------------------------------- reports
def machine_info(device):
    info = {
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'platform': platform.platform(),
        'backends': available_backends(),
        'device': device,
    }
    if device == 'cuda':
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    else:
        model = platform.processor()
        with open('/proc/cpuinfo') as f:
            model = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), model)
        info.update(cpu=model, cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                    load_average_before=[round(x, 2) for x in os.getloadavg()])
        if 'cpu' in available_backends():
            import mmoverlock._ext as ext
            info.update(cpu_capabilities=list(ext.cpu_capabilities()), cpu_capability=ext.cpu_capability())
    return info


def case_label(case):
    return 'B{}·G{}·{}×{}·C{}·K{}'.format(*case)


def summarise(results, device):
    """Ratios at the default case, forward + backward."""
    rows = {r['method']: r for r in results if tuple(r['case']) == DEFAULT_CASE}
    fused = rows.get(f'fused-{device}')
    if fused is None:
        return {}
    summary = {'case': list(DEFAULT_CASE), 'fused': fused['method']}
    for base in ('unfold', 'unfused'):
        if base in rows:
            summary[f'speedup_vs_{base}'] = rows[base]['fwd_bwd_ms'] / fused['fwd_bwd_ms']
            if rows[base].get('fwd_bwd_peak_mib'):
                summary[f'memory_fraction_of_{base}'] = fused['fwd_bwd_peak_mib'] / rows[base]['fwd_bwd_peak_mib']
    return summary


def write_markdown(path, command, info, results, summary, memory_method):
    lines = ['# ContMix core benchmark', '', f'Produced by `{command}`.', '']
    lines += [f'- {k}: {v}' for k, v in info.items()]
    lines += [f'- memory: {memory_method}',
              '- all methods: rpb + softmax, float32, gradients of weights, value, rpb',
              '- roofline: MMAC = multiply-adds, Mexp = exps, MB = minimum bytes moved (inputs read once, outputs '
              'written once); GFLOP/s at 2 per multiply-add; copy = achieved GB/s / copy bandwidth', '']
    lines += ['- times: median wall time (ms), and CPU time of all threads (ms) in brackets; the roofline columns '
              'are for forward + backward, from the wall time', '']
    lines += ['| case | method | fwd ms | fwd+bwd ms | MMAC | Mexp | MB | GFLOP/s | GB/s | copy | '
              'fwd peak MiB | fwd+bwd peak MiB |', '| --- | --- |' + ' ---: |' * 10]
    for r in results:
        rf = r['fwd_bwd_roofline']
        mem = (f"{r['fwd_peak_mib']:.1f} | {r['fwd_bwd_peak_mib']:.1f}" if r.get('fwd_bwd_peak_mib') is not None
               else '– | –')
        lines.append(f"| {case_label(r['case'])} | {r['method']} | {r['fwd_ms']:.3g} ({r['fwd_cpu_ms']:.3g}) | "
                     f"{r['fwd_bwd_ms']:.3g} ({r['fwd_bwd_cpu_ms']:.3g}) | {rf['multiply_adds'] / 1e6:.3g} | "
                     f"{rf['exps'] / 1e6:.3g} | {rf['bytes'] / 1e6:.3g} | {rf['gflops']:.3g} | {rf['gbs']:.3g} | "
                     f"{rf['copy_fraction']:.3g} | {mem} |")
    if summary:
        lines += ['', f"## Default case {case_label(summary['case'])}, forward + backward ({summary['fused']})", '']
        lines += [f'- {k}: {v:.3g}' for k, v in summary.items() if k.startswith(('speedup', 'memory'))]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def write_traffic(out_dir, command, cases):
    """The CUDA kernels' traffic model for every case, float32 and float16, as traffic.json and traffic.md."""
    rows = [dict(case=list(case), element_size=e, deterministic=det, **contmix_cuda_traffic(case, e, det))
            for case in cases for e in (4, 2) for det in (False, True)]
    with open(osp.join(out_dir, 'traffic.json'), 'w') as f:
        json.dump(dict(command=command, rows=rows), f, indent=1)
    lines = ['# ContMix CUDA kernels: modelled traffic', '', f'Produced by `{command}` (a model, nothing timed).', '',
             '- MB each pass moves to/from global memory (each element a pass reads fetched once, each output '
             'written once; bias tables neglected), against the minimum of `contmix_cost` (inputs read once, '
             'outputs written once), with bias and softmax', '',
             '| case | bytes/elt | deterministic | forward MB | min MB | ratio | stats MB | grad_value MB | '
             'grad_weights MB | backward MB | min MB | ratio |', '| --- | ---: | --- |' + ' ---: |' * 9]
    for r in rows:
        fwd, bwd = r['forward'], r['backward']
        lines.append(f"| {case_label(r['case'])} | {r['element_size']} | {'yes' if r['deterministic'] else 'no'} | "
                     f"{sum(fwd.values()) / 1e6:.1f} | {r['forward_min'] / 1e6:.1f} | {r['forward_ratio']:.2f} | "
                     f"{bwd['stats'] / 1e6:.1f} | {bwd['grad_value'] / 1e6:.1f} | {bwd['grad_weights'] / 1e6:.1f} | "
                     f"{sum(bwd.values()) / 1e6:.1f} | {r['backward_min'] / 1e6:.1f} | {r['backward_ratio']:.2f} |")
    with open(osp.join(out_dir, 'traffic.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return rows


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
        for method in sorted({r['method'] for r in results if ':' not in r['method']}):
            pts = sorted((r['case'][2] * r['case'][3], r['fwd_bwd_ms'], r['fwd_bwd_roofline']['gflops'])
                         for r in results if r['method'] == method and r['case'][5] == K)
            if not pts:
                continue
            px, ms, gflops = zip(*pts)
            axes[0][col].plot(px, ms, marker='o', label=method)
            axes[1][col].plot(px, gflops, marker='o', label=method)
        axes[0][col].set_title(f'K = {K}: forward + backward')
        axes[0][col].set_ylabel('time (ms)')
        axes[1][col].set_ylabel('achieved GFLOP/s')
        axes[1][col].set_xlabel('pixels H×W (B=2, G=8, C=16)')
        for row in axes:
            row[col].set_yscale('log')
            row[col].grid(True, which='both', alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f'ContMix core on {device} (rpb + softmax, float32)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


# ------------------------------------------------------------------------------------------------------------ main
def parse_cases(text):
    cases = [tuple(int(x) for x in item.split(',')) for item in text.split(';') if item]
    if any(len(c) != 6 for c in cases):
        raise argparse.ArgumentTypeError(f'cases must be ";"-separated B,G,H,W,C,K tuples, got {text!r}')
    return cases


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


def default_methods(device):
    built = [b for b in available_backends() if b != 'torch' and b == device]
    return [f'fused-{b}' for b in built] + ['fused-torch', 'unfused', 'unfold']


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--cases', type=parse_cases, default=None,
                        help='";"-separated B,G,H,W,C,K tuples (default: the default case and K=5,7,13 at 3 sizes)')
    parser.add_argument('--methods', default=None, help='comma-separated (default: every backend + baselines)')
    parser.add_argument('--budget', type=float, default=3.0, help='seconds of repeated runs per measurement')
    parser.add_argument('--no-memory', action='store_true', help='time only')
    parser.add_argument('--out', default=None, help='results folder (default: benchmarks/contmix/<device>)')
    parser.add_argument('--traffic-only', action='store_true',
                        help='write the CUDA kernels\' traffic model for the cases (traffic.json/.md) and exit')
    args = parser.parse_args()
    if args.traffic_only:
        out_dir = args.out or osp.join('benchmarks', 'contmix', 'cuda-traffic')
        os.makedirs(out_dir, exist_ok=True)
        command = ' '.join(['python', 'tools/analysis_tools/benchmark_contmix.py'] +
                           [shlex.quote(a) for a in sys.argv[1:]])
        write_traffic(out_dir, command, args.cases or default_cases('cuda'))
        print(f'wrote {out_dir}/traffic.json, traffic.md')
        return

    device = args.device
    cases = args.cases or default_cases(device)
    methods = args.methods.split(',') if args.methods else default_methods(device)
    out_dir = args.out or osp.join('benchmarks', 'contmix', device)
    os.makedirs(out_dir, exist_ok=True)
    info = machine_info(device)
    # The instruction-set variants of the CPU kernels, at the default case.
    isa_methods = [f'fused-cpu:{isa}' for isa in info.get('cpu_capabilities', ())] if 'fused-cpu' in methods else []
    info['copy_bandwidth_gbs'] = round(copy_bandwidth_gbs(device), 2)
    memory_method = ('torch.cuda.max_memory_allocated() minus memory_allocated() before the run' if device == 'cuda'
                     else 'fresh subprocess per measurement (contmix_peak_memory.py: 64 KiB mmap threshold, VmHWM '
                     'minus VmRSS before the run); timings come from this process, without that setting')
    print(json.dumps(info, indent=1))

    results = []
    for case in cases:
        K = case[5]
        inputs = random_inputs(case, device)
        for method in methods + (isa_methods if case == DEFAULT_CASE else []):
            fn = contmix_method(method, device)
            fwd_ms, fwd_cpu_ms, fwd_runs = time_method(fn, inputs, K, device, False, args.budget)
            fb_ms, fb_cpu_ms, fb_runs = time_method(fn, inputs, K, device, True, args.budget)
            row = dict(case=list(case), method=method, fwd_ms=fwd_ms, fwd_bwd_ms=fb_ms, fwd_cpu_ms=fwd_cpu_ms,
                       fwd_bwd_cpu_ms=fb_cpu_ms, fwd_runs=fwd_runs, fwd_bwd_runs=fb_runs, fwd_roofline=roofline(case, fwd_ms, False, info['copy_bandwidth_gbs']),
                       fwd_bwd_roofline=roofline(case, fb_ms, True, info['copy_bandwidth_gbs']))
            if not args.no_memory and ':' not in method:
                row['fwd_peak_mib'] = peak_extra_mib(case, method, device, False, inputs)
                row['fwd_bwd_peak_mib'] = peak_extra_mib(case, method, device, True, inputs)
            results.append(row)
            print(f"{case_label(case):>28} {method:>18}: fwd {fwd_ms:9.1f} ms  fwd+bwd {fb_ms:9.1f} ms  "
                  f"{row['fwd_bwd_roofline']['gflops']:6.2f} GFLOP/s  {row['fwd_bwd_roofline']['gbs']:6.2f} GB/s  "
                  f"peak extra {row.get('fwd_bwd_peak_mib', float('nan')):8.1f} MiB", flush=True)
        del inputs
        gc.collect()

    summary = summarise(results, device)
    if device == 'cpu':
        info['load_average_after'] = [round(x, 2) for x in os.getloadavg()]
    command = ' '.join(['python', 'tools/analysis_tools/benchmark_contmix.py'] + [shlex.quote(a) for a in sys.argv[1:]])
    payload = dict(command=command, machine=info, memory_method=memory_method, results=results, summary=summary)
    with open(osp.join(out_dir, 'results.json'), 'w') as f:
        json.dump(payload, f, indent=1)
    write_markdown(osp.join(out_dir, 'results.md'), command, info, results, summary, memory_method)
    plotted = write_plot(osp.join(out_dir, 'results.png'), results, device)
    print(json.dumps(summary, indent=1))
    print(f"wrote {out_dir}/results.json, results.md{', results.png' if plotted else ''}")


if __name__ == '__main__':
    main()
