"""Benchmark the ContMix core: time, roofline figures and peak memory of every backend and of two baselines.

Methods (``mmoverlock.testing.contmix_baselines``; all compute the op with bias and softmax):
``fused-<backend>`` (``cpu``/``cuda`` = the compiled kernels, ``torch`` = the pure-torch fallback),
``fused-cpu:<isa>`` (the CPU kernels with one instruction set, timed at the default case), ``unfused`` (bias and
softmax in torch, then the aggregation kernel) and ``unfold`` (the authors' formulation).

Timing (:mod:`mmoverlock.analysis.measure`): per case the methods take turns (one call of each per round), as many
rounds (1..7) as fit in ``--budget`` seconds at each method's warm-up speed, medians; forward alone and forward +
backward, in this process. For each
case the op's minimum work and traffic (``contmix_cost``: multiply-adds, exps, bytes) give the achieved GFLOP/s
(2 per multiply-add) and GB/s, and the GB/s as a fraction of a large tensor copy's bandwidth measured in the same
run (STREAM-like: bytes read + written). Memory: the measuring module's one definition of peak memory (the inputs
are not counted); on the CPU each measurement runs in a fresh subprocess (``contmix_peak_memory.py``).

Writes ``results.json``, ``results.md`` (with the command that produced it) and, with matplotlib, ``results.png``
under ``--out`` (default ``benchmarks/contmix/<device>``); with ``--isa best avx2`` (CPU) one such folder per
instruction-set setting under ``--out`` and ``isa_comparison.{json,md}`` beside them. ``--traffic-only`` writes
``traffic.json`` and ``traffic.md`` instead, without timing anything: the bytes each pass of the CUDA kernels moves
by their traffic model (``contmix_cuda_traffic``) next to the op's minimum, per case and dtype size.

Examples::

    python tools/analysis_tools/benchmark_contmix.py                    # CPU, default case list
    python tools/analysis_tools/benchmark_contmix.py --device cuda
    python tools/analysis_tools/benchmark_contmix.py --cases "2,8,50,84,16,13" --methods fused-cpu,unfused
    python tools/analysis_tools/benchmark_contmix.py --cases "2,8,50,84,16,13" --isa best avx2
    python tools/analysis_tools/benchmark_contmix.py --traffic-only --out benchmarks/contmix/cuda-traffic
"""
import argparse
import gc
import json
import os
import os.path as osp
import sys

import torch

from mmoverlock.analysis.measure import (PEAK_MEMORY_DEFINITION, add_isa_argument, command_line, describe_machine,
                                         interleaved_times, isa_output, machine_info, measure_per_isa,
                                         peak_memory_in_fresh_process, peak_memory_mib, ratio, record, set_threads,
                                         synchronize, write_json)
from mmoverlock.analysis.visualization import save_chart
from mmoverlock.ops import available_backends
from mmoverlock.testing.contmix_baselines import contmix_cost, contmix_cuda_traffic, contmix_method, random_inputs

DEFAULT_CASE = (2, 8, 50, 84, 16, 13)  # stage 3 of an 800x1333 detection image (B, G, H, W, C, K)
PEAK_MEMORY_TOOL = osp.join(osp.dirname(osp.abspath(__file__)), 'contmix_peak_memory.py')
MAX_RUNS = 7  # timed runs per method and measurement at most


def run_once(fn, inputs, K, backward):
    """One forward (and backward); returns what must stay alive until the measurement ends."""
    out = fn(*inputs, K)
    return torch.autograd.grad(out, inputs, torch.ones_like(out)) if backward else out


def time_methods(fns, inputs, K, device, backward, budget_s):
    """Per method: median wall time and median CPU time of this process (all threads) in ms, and the number of
    runs; the methods take turns, each as many runs (1..7) as fit in about budget_s at its warm-up speed. On a busy
    machine the CPU time is the steadier."""
    calls = {method: (lambda fn=fn: run_once(fn, inputs, K, backward)) for method, fn in fns.items()}
    timings = interleaved_times(calls, MAX_RUNS, warmup=1, device=device, budget_s=budget_s)
    return {m: (1e3 * t.median_s, 1e3 * t.cpu_median_s, len(t.wall_s)) for m, t in timings.items()}


def runnable(fns, inputs, K, device):
    """The methods whose forward + backward runs at this case, and why each other one fails (the authors' unfold
    needs a [B, G, C, K*K, H, W] tensor: past 2^31 elements CUDA refuses its padding, or memory runs out)."""
    ok, failed = {}, {}
    for method, fn in fns.items():
        try:
            run_once(fn, inputs, K, True)
            synchronize(device)
            ok[method] = fn
        except RuntimeError as err:  # torch.OutOfMemoryError is one
            failed[method] = f'{type(err).__name__}: {str(err).splitlines()[0][:200]}'
        gc.collect()
        if device == 'cuda':
            torch.cuda.empty_cache()
    return ok, failed


def copy_bandwidth_gbs(device, mib=256):
    """STREAM-like copy bandwidth: bytes read + written per second by ``dst.copy_(src)`` of a ``mib`` buffer."""
    src = torch.ones(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    best = interleaved_times({'copy': lambda: dst.copy_(src)}, rounds=5, warmup=1, device=device)['copy'].min_s
    return 2 * src.numel() * 4 / best / 1e9


def peak_extra_mib(case, method, device, backward, inputs):
    """Peak extra memory of one call, MiB: a fresh subprocess on the CPU, the CUDA allocator's peak on a GPU."""
    if device == 'cuda':
        fn = contmix_method(method, device)
        return peak_memory_mib(lambda: run_once(fn, inputs, case[5], backward), device, warmup=1)['peak_mib']
    kwargs = dict(case=list(case), method=method, backward=backward)
    return peak_memory_in_fresh_process(f'{PEAK_MEMORY_TOOL}:contmix_call', kwargs,
                                        threads=torch.get_num_threads())['peak_mib']


def roofline(case, ms, backward, copy_gbs):
    cost = contmix_cost(case, backward)
    seconds = ms / 1e3
    gbs = cost['bytes'] / seconds / 1e9
    return dict(cost, gflops=2 * cost['multiply_adds'] / seconds / 1e9, gbs=gbs, copy_fraction=gbs / copy_gbs)


# -------------------------------------------------------------------------------------------------------- reports
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


def write_markdown(path, command, info, results, summary, memory_method, failures=()):
    lines = ['# ContMix core benchmark', '', f'Produced by `{command}`.', '', f'- machine: {describe_machine(info)}',
             f"- backends: {', '.join(info['backends'])}; copy bandwidth {info['copy_bandwidth_gbs']} GB/s"]
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
    if failures:
        lines += ['', '## Methods that do not run at a case', '']
        lines += [f"- {case_label(f['case'])} {f['method']}: {f['error']}" for f in failures]
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
             '| case | bytes/elt | deterministic | forward MB | min MB | ratio | backward pass MB | '
             'grad_rpb gather MB | copy MB | backward MB | min MB | ratio |', '| --- | ---: | --- |' + ' ---: |' * 9]
    for r in rows:
        fwd, bwd = r['forward'], r['backward']
        lines.append(f"| {case_label(r['case'])} | {r['element_size']} | {'yes' if r['deterministic'] else 'no'} | "
                     f"{sum(fwd.values()) / 1e6:.1f} | {r['forward_min'] / 1e6:.1f} | {r['forward_ratio']:.2f} | "
                     f"{bwd['backward'] / 1e6:.1f} | {bwd.get('grad_rpb', 0) / 1e6:.1f} | "
                     f"{bwd.get('copy', 0) / 1e6:.1f} | {sum(bwd.values()) / 1e6:.1f} | "
                     f"{r['backward_min'] / 1e6:.1f} | {r['backward_ratio']:.2f} |")
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
    save_chart(fig, path)
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--cases', type=parse_cases, default=None,
                        help='";"-separated B,G,H,W,C,K tuples (default: the default case and K=5,7,13 at 3 sizes)')
    parser.add_argument('--methods', default=None, help='comma-separated (default: every backend + baselines)')
    parser.add_argument('--budget', type=float, default=3.0, help='seconds of repeated runs per measurement')
    parser.add_argument('--no-memory', action='store_true', help='time only')
    parser.add_argument('--threads', type=int, help='torch intra-op threads (default: torch\'s choice)')
    parser.add_argument('--out', default=None, help='results folder (default: benchmarks/contmix/<device>)')
    parser.add_argument('--traffic-only', action='store_true',
                        help='write the CUDA kernels\' traffic model for the cases (traffic.json/.md) and exit')
    add_isa_argument(parser)
    args = parser.parse_args(argv)
    if args.isa and args.device != 'cpu':
        parser.error('--isa sets the instruction sets of the CPU libraries; it needs --device cpu')
    return args


def measure(args, command, setting=None):
    """Every case and method in this process; writes results.{json,md,png} and returns the payload."""
    set_threads(args.threads)
    device = args.device
    cases = args.cases or default_cases(device)
    methods = args.methods.split(',') if args.methods else default_methods(device)
    out_dir = isa_output(args.out or osp.join('benchmarks', 'contmix', device), setting)
    info = machine_info(device)
    info['backends'] = available_backends()
    # The instruction-set variants of the CPU kernels, at the default case.
    supported = info['isa']['mmoverlock_supported'] or ()
    isa_methods = [f'fused-cpu:{isa}' for isa in supported] if 'fused-cpu' in methods else []
    info['copy_bandwidth_gbs'] = round(copy_bandwidth_gbs(device), 2)
    memory_method = PEAK_MEMORY_DEFINITION + ' (inputs not counted); timings come from this process'
    print(describe_machine(info), flush=True)

    results, failures = [], []
    for case in cases:
        K = case[5]
        inputs = random_inputs(case, device)
        names = methods + (isa_methods if case == DEFAULT_CASE else [])
        fns, failed = runnable({method: contmix_method(method, device) for method in names}, inputs, K, device)
        for method, error in failed.items():
            failures.append(dict(case=list(case), method=method, error=error))
            print(f'{case_label(case):>28} {method:>18}: fails: {error}', flush=True)
        names = [m for m in names if m in fns]
        forward = time_methods(fns, inputs, K, device, False, args.budget)
        both = time_methods(fns, inputs, K, device, True, args.budget)
        for method in names:
            (fwd_ms, fwd_cpu_ms, fwd_runs), (fb_ms, fb_cpu_ms, fb_runs) = forward[method], both[method]
            row = dict(case=list(case), method=method, fwd_ms=fwd_ms, fwd_bwd_ms=fb_ms, fwd_cpu_ms=fwd_cpu_ms,
                       fwd_bwd_cpu_ms=fb_cpu_ms, fwd_runs=fwd_runs, fwd_bwd_runs=fb_runs,
                       fwd_roofline=roofline(case, fwd_ms, False, info['copy_bandwidth_gbs']),
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
    payload = dict(command=command, machine=info, memory_method=memory_method, results=results, failures=failures,
                   summary=summary)
    write_json(osp.join(out_dir, 'results.json'), payload)
    write_markdown(osp.join(out_dir, 'results.md'), command, info, results, summary, memory_method, failures)
    plotted = write_plot(osp.join(out_dir, 'results.png'), results, device)
    print(json.dumps(summary, indent=1))
    print(f"wrote {out_dir}/results.json, results.md{', results.png' if plotted else ''}")
    return payload


def records(payload):
    """Per case and method: forward and forward + backward ms, with the ratio to the fused method of the device."""
    fused = f"fused-{payload['machine']['device']}"
    base = {tuple(r['case']): r for r in payload['results'] if r['method'] == fused}
    rows = []
    for r in payload['results']:
        ref = base.get(tuple(r['case']), {})
        for key, metric in (('fwd_ms', 'forward ms'), ('fwd_bwd_ms', 'forward + backward ms')):
            rows.append(record(f"{case_label(r['case'])} {r['method']}", metric, r[key], ratio(r[key], ref.get(key))))
    return rows


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.traffic_only:
        out_dir = args.out or osp.join('benchmarks', 'contmix', 'cuda-traffic')
        os.makedirs(out_dir, exist_ok=True)
        write_traffic(out_dir, command_line(__file__, argv), args.cases or default_cases('cuda'))
        print(f'wrote {out_dir}/traffic.json, traffic.md')
        return None
    out = args.out or osp.join('benchmarks', 'contmix', args.device)
    return measure_per_isa(args.isa, __file__, argv, lambda setting: measure(args, command_line(__file__, argv),
                                                                             setting),
                           lambda setting: osp.join(isa_output(out, setting), 'results.json'),
                           osp.join(out, 'isa_comparison'), 'ContMix core benchmark', records,
                           f'fused-{args.device} (the compiled op)')


if __name__ == '__main__':
    main()
