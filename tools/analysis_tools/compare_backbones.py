"""OverLoCK-T against its peers on the CPU: inference and training-step time, peak training memory, FLOPs.

Models (all batch 1, random weights, as a user builds them by default):

* ``overlock``: ``OverLoCK(arch='t', overview_fusion=True)`` (the detection form), eval form for inference;
* ``overlock-deploy``: the same after ``switch_to_deploy()`` (inference only);
* ``overlock-authors``: the same model with the authors' ContMix formulation: bias gathered and added, softmax in
  torch, then the aggregation without softmax (what their NATTEN ``na2d_av`` path computes), on this package's op;
* ``convnext`` / ``swin``: timm's ConvNeXt-T and Swin-T feature extractors (``features_only=True``).

Every figure is also given as a ratio to ConvNeXt-T measured in the same run: timings are interleaved (one call of
every model per round, median over rounds), so a load change hits all models alike. Peak memory is measured in a
fresh subprocess per (model, size): peak RSS (``VmHWM``) during one training step minus the RSS before it; the
timing runs never carry that harness. FLOPs come from mmengine's jit-trace counter (one multiply-add = one FLOP) with
the ContMix core counted as ``B*G*H*W*C*K^2``. A torch.profiler run of ``overlock`` (eval) splits its time by module
type (exclusive of child modules) and by operator.

Usage:
    python tools/analysis_tools/compare_backbones.py [--sizes 224 512 800x1333] [--models ...] [--rounds 3]
        [--threads 2] [--out-dir benchmarks/backbone/cpu]
"""
import argparse
import json
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

MODELS = ('overlock', 'overlock-deploy', 'overlock-authors', 'convnext', 'swin')
TRAINABLE = ('overlock', 'overlock-authors', 'convnext', 'swin')
BASELINE = 'convnext'
DEFAULT_SIZES = ('224', '512', '800x1333')
TIMM_NAMES = dict(convnext='convnext_tiny', swin='swin_tiny_patch4_window7_224')


# ------------------------------------------------------------------------------------------------ models
def _authors_aggregate(logits: torch.Tensor, value: torch.Tensor, kernel_size: int, rpb: torch.Tensor):
    """The authors' ContMix core: gather and add the bias, softmax in torch, then aggregate without softmax."""
    from mmoverlock.ops.contmix_baselines import unfused_contmix
    return unfused_contmix(logits, value, rpb, kernel_size)


def build(name: str, height: int, width: int) -> nn.Module:
    """A model returning a tuple of feature maps for an image of the given size."""
    if name.startswith('overlock'):
        from mmoverlock.models import OverLoCK
        from mmoverlock.models.blocks import ContMixBlock
        model = OverLoCK(arch='t', overview_fusion=True)
        model.init_weights()
        if name == 'overlock-deploy':
            model.switch_to_deploy()
        elif name == 'overlock-authors':
            for module in model.modules():
                if isinstance(module, ContMixBlock):
                    module._aggregate = _authors_aggregate  # instance attribute: only this model changes
        return model
    import timm
    kwargs = dict(img_size=(height, width)) if name == 'swin' else {}
    return timm.create_model(TIMM_NAMES[name], features_only=True, pretrained=False, **kwargs)


def _loss(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(out.float().mean() for out in outputs)


class Runner:
    """One model at one size: an inference call and a training step (forward, backward) on a fixed input."""

    def __init__(self, name: str, height: int, width: int, seed: int = 0):
        torch.manual_seed(seed)
        self.name = name
        self.model = build(name, height, width)
        self.image = torch.rand(1, 3, height, width)

    def infer(self) -> None:
        self.model.eval()
        with torch.inference_mode():
            self.model(self.image)

    def train_step(self) -> None:
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        _loss(self.model(self.image)).backward()


# ------------------------------------------------------------------------------------------------ measuring
def _seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_times(runners: Dict[str, Runner], phase: str, rounds: int) -> Dict[str, List[float]]:
    """``rounds`` timed calls of ``phase`` per model after one warm-up call, the models taking turns."""
    for runner in runners.values():
        getattr(runner, phase)()
    times = defaultdict(list)
    for _ in range(rounds):
        for name, runner in runners.items():
            times[name].append(_seconds(getattr(runner, phase)))
    return dict(times)


def _rss_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'/proc/self/status has no {field}')


def measure_memory_here(name: str, height: int, width: int, phase: str) -> dict:
    """Peak RSS growth (MiB) of one ``phase`` call in this process, which must be fresh (see ``memory_mib``)."""
    runner = Runner(name, height, width)
    with open('/proc/self/clear_refs', 'w') as f:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        f.write('5')
    before = _rss_kib('VmRSS')
    getattr(runner, phase)()
    return dict(peak_mib=(_rss_kib('VmHWM') - before) / 1024, baseline_mib=before / 1024)


def memory_mib(name: str, height: int, width: int, phase: str, threads: int) -> dict:
    """Run ``measure_memory_here`` in a fresh interpreter, so no allocation of another model or phase counts."""
    cmd = [sys.executable, osp.abspath(__file__), '--memory-child', name, f'{height}x{width}', phase,
           '--threads', str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def flops(name: str, height: int, width: int) -> float:
    """Multiply-adds of one inference (mmengine's counter, the ContMix core included)."""
    from mmoverlock.analysis.flops import flop_analyzer
    runner = Runner(name, height, width)
    runner.model.eval()
    return float(flop_analyzer(runner.model, (runner.image, )).total())


def profile(name: str, height: int, width: int, phase: str, top: int = 12) -> dict:
    """Where one call's time goes: per module type (exclusive of child modules) and per operator (self time)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile, record_function
    runner = Runner(name, height, width)
    getattr(runner, phase)()  # warm-up (oneDNN primitive creation)
    contexts = []

    def enter(module, args):
        ctx = record_function(f'module::{type(module).__name__}')
        ctx.__enter__()
        contexts.append(ctx)

    def leave(module, args, output):
        contexts.pop().__exit__(None, None, None)

    handles = [m.register_forward_pre_hook(enter) for m in runner.model.modules()]
    handles += [m.register_forward_hook(leave) for m in runner.model.modules()]
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        total = _seconds(getattr(runner, phase))
    for handle in handles:
        handle.remove()
    per_module = Counter()
    for event in prof.events():
        if event.name.startswith('module::'):
            children = sum(c.cpu_time_total for c in event.cpu_children if c.name.startswith('module::'))
            per_module[event.name[len('module::'):]] += (event.cpu_time_total - children) / 1e6
    per_op = Counter()
    for avg in prof.key_averages():
        if not avg.key.startswith('module::'):
            per_op[avg.key] += avg.self_cpu_time_total / 1e6
    wall = sum(per_module.values())
    return dict(model=name, size=[height, width], phase=phase, profiled_s=total,
                modules={k: round(v, 4) for k, v in per_module.most_common()},
                module_share={k: round(v / wall, 4) for k, v in per_module.most_common()},
                ops={k: round(v, 4) for k, v in per_op.most_common(top)})


# ------------------------------------------------------------------------------------------------ reporting
def _ratio(value, base):
    return None if value is None or not base else value / base


def summarise(results: dict) -> dict:
    """Medians and ratios to the baseline model, per size and metric."""
    table = {}
    for size, per_size in results['sizes'].items():
        rows = {}
        base = {metric: per_size[metric].get(BASELINE) for metric in ('infer_s', 'train_s', 'train_mem_mib', 'gflops')}
        for name in results['models']:
            row = {}
            for metric in base:
                value = per_size[metric].get(name)
                row[metric] = value
                row[metric + '_ratio'] = _ratio(value, base[metric])
            rows[name] = row
        table[size] = rows
    return table


def _fmt(value, ratio, unit_fmt):
    if value is None:
        return '–'
    return f'{unit_fmt.format(value)} ({ratio:.2f}×)' if ratio is not None else unit_fmt.format(value)


def _load(loadavg: Sequence[float]) -> str:
    return ' / '.join(f'{v:.2f}' for v in loadavg)


def write_markdown(path: str, results: dict) -> None:
    lines = ['# OverLoCK-T against ConvNeXt-T and Swin-T on the CPU', '',
             f"Command: `{results['command']}`", '',
             f"Machine: {results['machine']}, torch {results['torch']}, {results['threads']} threads, batch 1; "
             f"load average (1, 5, 15 min) {_load(results['load_before'])} before and {_load(results['load_after'])} "
             f"after the run. "
             f"ContMix core: the compiled op of this checkout ({results['contmix_backend']}).", '',
             f"Times are medians of {results['rounds']} interleaved calls (after one warm-up); ratios in brackets are to "
             f"ConvNeXt-T in the same run. Training = one forward + backward of the sum of the feature-map means. "
             f"Peak memory = peak RSS growth during one training step, in a fresh process. GFLOPs = multiply-adds "
             f"of one inference (mmengine's counter, ContMix core included).", '']
    for size, rows in results['summary'].items():
        lines += [f'## {size}', '', '| model | inference s | training step s | training peak MiB | GFLOPs |',
                  '|---|---|---|---|---|']
        for name, row in rows.items():
            lines.append(f"| {name} | {_fmt(row['infer_s'], row['infer_s_ratio'], '{:.3f}')} | "
                         f"{_fmt(row['train_s'], row['train_s_ratio'], '{:.3f}')} | "
                         f"{_fmt(row['train_mem_mib'], row['train_mem_mib_ratio'], '{:.0f}')} | "
                         f"{_fmt(row['gflops'], row['gflops_ratio'], '{:.2f}')} |")
        lines.append('')
    for prof in results.get('profiles', []):
        size = 'x'.join(map(str, prof['size']))
        lines += [f"## Profile: {prof['model']} {prof['phase']} at {size} ({prof['profiled_s']:.3f} s under the "
                  f"profiler)", '', '| module type (exclusive) | s | share |', '|---|---|---|']
        lines += [f'| {k} | {v:.3f} | {prof["module_share"][k]:.1%} |' for k, v in list(prof['modules'].items())[:12]]
        lines += ['', '| operator (self time) | s |', '|---|---|']
        lines += [f'| `{k}` | {v:.3f} |' for k, v in prof['ops'].items()]
        lines.append('')
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


def write_plot(path: str, results: dict) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    metrics = [('infer_s', 'inference time'), ('train_s', 'training step time'),
               ('train_mem_mib', 'training peak memory'), ('gflops', 'FLOPs')]
    sizes = list(results['summary'])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), sharey=False)
    names = results['models']
    width = 0.8 / len(names)
    for ax, (metric, title) in zip(axes, metrics):
        for i, name in enumerate(names):
            values = [results['summary'][s][name][metric + '_ratio'] or 0 for s in sizes]
            ax.bar([j + i * width for j in range(len(sizes))], values, width, label=name)
        ax.axhline(1, color='k', lw=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))], sizes)
        ax.set_title(f'{title} / ConvNeXt-T')
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------------------ main
def parse_size(text: str) -> Tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().split('x')]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 32:
        raise argparse.ArgumentTypeError(f'a size is N or HxW with sides >= 32, got {text!r}')
    return parts[0], parts[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', nargs='+', default=list(DEFAULT_SIZES), help='N or HxW, e.g. 512 800x1333')
    parser.add_argument('--models', nargs='+', choices=MODELS, default=list(MODELS),
                        help=f'models to measure ({BASELINE} is always added: ratios are to it)')
    parser.add_argument('--rounds', type=int, default=3, help='timed calls per model and phase (median)')
    parser.add_argument('--threads', type=int, default=2, help='torch intra-op threads')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory subprocesses')
    parser.add_argument('--no-flops', action='store_true', help='skip FLOP counting')
    parser.add_argument('--profile-sizes', nargs='*', default=['512'],
                        help='sizes at which to profile overlock inference and training (none: skip)')
    parser.add_argument('--out-dir', default='benchmarks/backbone/cpu')
    parser.add_argument('--memory-child', nargs=3, metavar=('MODEL', 'SIZE', 'PHASE'), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        name, size, phase = args.memory_child
        print(json.dumps(measure_memory_here(name, *parse_size(size), phase)))
        return
    from mmoverlock.ops import available_backends
    models = [BASELINE] + [m for m in args.models if m != BASELINE]
    sizes = [parse_size(s) for s in args.sizes]
    results = dict(command='python ' + ' '.join([osp.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])),
                   machine=f'{platform.machine()} {os.cpu_count()} CPUs', torch=torch.__version__,
                   threads=args.threads, rounds=args.rounds, models=models, load_before=os.getloadavg(),
                   contmix_backend=available_backends()[0], sizes={})
    for height, width in sizes:
        key = f'{height}x{width}'
        print(f'== {key}', flush=True)
        per_size = dict(infer_s={}, train_s={}, train_mem_mib={}, gflops={})
        runners = {name: Runner(name, height, width) for name in models}
        for name, times in interleaved_times(runners, 'infer', args.rounds).items():
            per_size['infer_s'][name] = statistics.median(times)
        trainable = {name: r for name, r in runners.items() if name in TRAINABLE}
        for name, times in interleaved_times(trainable, 'train_step', args.rounds).items():
            per_size['train_s'][name] = statistics.median(times)
        del runners, trainable
        print('   times', {m: {n: round(v, 3) for n, v in d.items()} for m, d in per_size.items() if d}, flush=True)
        for name in models:
            if not args.no_memory and name in TRAINABLE:
                per_size['train_mem_mib'][name] = memory_mib(name, height, width, 'train_step', args.threads)['peak_mib']
            if not args.no_flops and name != 'overlock-deploy':  # the deploy form has the eval form's FLOPs + fold
                per_size['gflops'][name] = flops(name, height, width) / 1e9
        print('   memory/flops', per_size['train_mem_mib'], per_size['gflops'], flush=True)
        results['sizes'][key] = per_size
    results['profiles'] = []
    for size in args.profile_sizes:
        height, width = parse_size(size)
        for phase in ('infer', 'train_step'):
            results['profiles'].append(profile('overlock', height, width, phase))
    results['load_after'] = os.getloadavg()
    results['summary'] = summarise(results)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    write_markdown(osp.join(args.out_dir, 'results.md'), results)
    write_plot(osp.join(args.out_dir, 'results.png'), results)
    print(open(osp.join(args.out_dir, 'results.md')).read())


if __name__ == '__main__':
    main()
