"""OverLoCK-T against its peers on the CPU or a GPU: inference and training-step time, peak training memory, FLOPs.

Models (batch 1 unless ``--batch``, random weights, as a user builds them by default):

* ``overlock``: ``OverLoCK(arch='t', overview_fusion=True)`` (the detection form), eval form for inference;
* ``overlock-deploy``: the same after ``switch_to_deploy()`` (inference only);
* ``overlock-authors``: the same model with the authors' ContMix formulation (``contmix_backend='unfused'``: bias
  and softmax in torch, then the aggregation alone, what their NATTEN ``na2d_av`` path computes, on this package's
  kernel), to show what the fused op saves in the whole backbone;
* ``convnext`` / ``swin``: timm's ConvNeXt-T and Swin-T feature extractors (``features_only=True``).

Every figure is also given as a ratio to ConvNeXt-T measured in the same process: timings are interleaved (one call
of every model per round, median over rounds; :mod:`mmoverlock.analysis.measure`), so a load change hits all models
alike. Peak memory follows the measuring module's one definition, each (model, size) in a fresh process. FLOPs come
from mmengine's jit-trace counter (one multiply-add = one FLOP) with the ContMix core counted as ``B*G*H*W*C*K^2``.
"ops" count the operators one inference and one training step dispatch (about the kernels they launch on a GPU,
each a few microseconds of host time whatever its size). With two or more sizes, each model's inference and
training-step times are also split into a per-call part, paid whatever the image size, and a part per megapixel
(a least-squares fit over the sizes, :mod:`mmoverlock.analysis.measure.scaling`), with ratios to ConvNeXt-T: that
says whether a ratio at one size comes from the work per pixel or from the work every call repeats. A
torch.profiler run of ``overlock`` (eval, then a training step) splits its time by module type (exclusive of child
modules), by operator, and by operator and input shapes.
``--saved-sizes`` counts, per model and in a fresh process, the bytes each module's layers save for the backward of a
training step and the backward's own transient memory (``OUT_DIR/saved_<size>.{md,json}``).
With ``--isa best avx2`` the whole comparison runs once per instruction-set setting (``avx2`` in a child process
with AVX2 forced on mmoverlock, oneDNN, ATen and MKL), each in ``OUT_DIR/<setting>/``, and
``OUT_DIR/isa_comparison.{md,json}`` puts the settings side by side.

``--device cuda`` runs the same comparison on the GPU (``OUT_DIR`` defaults to ``benchmarks/backbone/cuda``): times
synchronise the GPU around every call, peak memory is the measuring module's CUDA definition (each model in a fresh
process), ``--amp`` runs the forwards under float16 autocast, as mixed-precision training does, and a profile
splits the GPU time by operator and by kernel. Saved-tensor counts and ISA settings do not apply there.

Usage:
    python tools/analysis_tools/compare_backbones.py [--sizes 224 512 800x1333] [--models ...] [--rounds 3]
        [--threads 2] [--saved-sizes 512] [--isa best avx2] [--out-dir benchmarks/backbone/cpu]
    python tools/analysis_tools/compare_backbones.py --device cuda --batch 2 --sizes 800x1333 [--amp] --no-flops
"""
import argparse
import math
import os.path as osp
import sys
from collections import Counter
from typing import Sequence, Tuple

import torch
from torch import nn

from mmoverlock.analysis.measure import (DISPATCHED_OPS_DEFINITION, PEAK_MEMORY_DEFINITION, SIZE_SCALING_DEFINITION,
                                         add_isa_argument, command_line, dispatched_ops, interleaved_times,
                                         isa_output, machine_info, markdown_table, measure_per_isa,
                                         peak_memory_in_fresh_process, ratio, record, report_header,
                                         saved_activations_in_fresh_process, set_threads, size_scaling, switch_mode,
                                         time_call, with_ratio,
                                         write_json, write_markdown, write_saved_activations)
from mmoverlock.analysis.visualization import save_chart

MODELS = ('overlock', 'overlock-deploy', 'overlock-authors', 'convnext', 'swin')
TRAINABLE = ('overlock', 'overlock-authors', 'convnext', 'swin')
BASELINE = 'convnext'
DEFAULT_SIZES = ('224', '512', '800x1333')
TIMM_NAMES = dict(convnext='convnext_tiny', swin='swin_tiny_patch4_window7_224')
METRICS = (('infer_s', 'inference s', '{:.3f}'), ('train_s', 'training step s', '{:.3f}'),
           ('train_mem_mib', 'training peak MiB', '{:.0f}'), ('gflops', 'GFLOPs', '{:.2f}'),
           ('infer_ops', 'inference ops', '{:.0f}'), ('train_ops', 'training-step ops', '{:.0f}'))
#: The times split into a per-call and a per-megapixel part when two or more sizes are measured.
SCALED_METRICS = {'infer_s': 'Inference time', 'train_s': 'Training-step time'}


# ------------------------------------------------------------------------------------------------ models
def build(name: str, height: int, width: int) -> nn.Module:
    """A model returning a tuple of feature maps for an image of the given size."""
    if name.startswith('overlock'):
        from mmoverlock.models import OverLoCK
        model = OverLoCK(arch='t', overview_fusion=True,
                         contmix_backend='unfused' if name == 'overlock-authors' else None)
        model.init_weights()
        if name == 'overlock-deploy':
            model.switch_to_deploy()
        return model
    import timm
    kwargs = dict(img_size=(height, width)) if name == 'swin' else {}
    return timm.create_model(TIMM_NAMES[name], features_only=True, pretrained=False, **kwargs)


def _loss(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(out.float().mean() for out in outputs)


class Runner:
    """One model at one size: an inference call and a training step (forward, backward) on a fixed input."""

    def __init__(self, name: str, height: int, width: int, seed: int = 0, device: str = 'cpu', batch: int = 1,
                 amp: bool = False):
        torch.manual_seed(seed)
        self.name = name
        self.model = build(name, height, width).to(device)
        self.image = torch.rand(batch, 3, height, width, device=device)
        self.autocast = torch.autocast(torch.device(device).type, dtype=torch.float16, enabled=amp)

    def infer(self) -> None:
        switch_mode(self.model, False)
        with torch.inference_mode(), self.autocast:
            self.model(self.image)

    def loss(self) -> torch.Tensor:
        """The forward of a training step: its loss, ready for ``backward()``."""
        switch_mode(self.model, True)
        self.model.zero_grad(set_to_none=True)
        with self.autocast:
            return _loss(self.model(self.image))

    def train_step(self) -> None:
        self.loss().backward()


# ------------------------------------------------------------------------------------------------ measuring
def phase_call(name: str, height: int, width: int, phase: str, device: str = 'cpu', batch: int = 1,
               amp: bool = False):
    """A model's ``phase`` call at a size: what a fresh memory-measuring process runs."""
    return getattr(Runner(name, height, width, device=device, batch=batch, amp=amp), phase)


def train_memory_mib(name: str, height: int, width: int, threads: int, device: str = 'cpu', batch: int = 1,
                     amp: bool = False) -> float:
    """Peak memory of one training step, in a fresh process (the measuring module's definition)."""
    kwargs = dict(name=name, height=height, width=width, phase='train_step', device=device, batch=batch, amp=amp)
    return peak_memory_in_fresh_process(f'{osp.abspath(__file__)}:phase_call', kwargs, device=device,
                                        threads=threads)['peak_mib']


def saved_call(name: str, height: int, width: int):
    """What a fresh process hooks to count a training step's saved tensors: the model, its forward, its input."""
    runner = Runner(name, height, width)
    return runner.model, runner.loss, [runner.image]


def saved_activations(models: Sequence[str], size: str, threads: int) -> dict:
    """Saved tensors by module and the backward's transient memory of each model's training step (fresh processes)."""
    height, width = parse_size(size)
    return {name: saved_activations_in_fresh_process(f'{osp.abspath(__file__)}:saved_call',
                                                     dict(name=name, height=height, width=width), threads=threads)
            for name in models if name in TRAINABLE}


def flops(name: str, height: int, width: int) -> float:
    """Multiply-adds of one inference (mmengine's counter, the ContMix core included)."""
    from mmoverlock.analysis.flops import flop_analyzer
    runner = Runner(name, height, width)
    runner.model.eval()
    return float(flop_analyzer(runner.model, (runner.image, )).total())


def profile(name: str, height: int, width: int, phase: str, top: int = 12, device: str = 'cpu', batch: int = 1,
            amp: bool = False) -> dict:
    """Where one call's time goes: per module type (exclusive of child modules), per operator (self time) and per
    operator and input shapes (which call of an operator is slow: a layout or shape its library serves badly shows
    there, not in the operator's total); on a GPU per operator by the GPU time of the kernels it launched, and per
    kernel."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile as torch_profile, record_function
    runner = Runner(name, height, width, device=device, batch=batch, amp=amp)
    getattr(runner, phase)()  # warm-up (oneDNN primitive creation, cuDNN autotuning)
    cuda = torch.device(device).type == 'cuda'
    contexts = []

    def enter(module, args):
        ctx = record_function(f'module::{type(module).__name__}')
        ctx.__enter__()
        contexts.append(ctx)

    def leave(module, args, output):
        contexts.pop().__exit__(None, None, None)

    handles = [] if cuda else [m.register_forward_pre_hook(enter) for m in runner.model.modules()]
    handles += [] if cuda else [m.register_forward_hook(leave) for m in runner.model.modules()]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities, record_shapes=True) as prof:
        total = time_call(getattr(runner, phase), device).wall_s[0]
    for handle in handles:
        handle.remove()
    per_module = Counter()
    for event in prof.events():
        if event.name.startswith('module::'):
            children = sum(c.cpu_time_total for c in event.cpu_children if c.name.startswith('module::'))
            per_module[event.name[len('module::'):]] += (event.cpu_time_total - children) / 1e6
    # One pass over the events grouped by operator and input shapes; an operator's total is the sum of its shapes.
    per_op, kernels, by_shape = Counter(), Counter(), []
    for avg in prof.key_averages(group_by_input_shape=True):
        if avg.key.startswith('module::'):
            continue
        if cuda and avg.device_type == DeviceType.CUDA:
            kernels[avg.key[:120]] += avg.self_device_time_total / 1e6
            continue
        seconds = (avg.self_device_time_total if cuda else avg.self_cpu_time_total) / 1e6
        if cuda and seconds <= 0:
            continue
        per_op[avg.key] += seconds
        if seconds > 0:
            by_shape.append(dict(op=avg.key, input_shapes=_shapes_text(avg.input_shapes), calls=avg.count,
                                 s=round(seconds, 4)))
    by_shape.sort(key=lambda row: -row['s'])
    wall = sum(per_module.values()) or 1.0
    result = dict(model=name, size=[height, width], phase=phase, profiled_s=total, device=device,
                  modules={k: round(v, 4) for k, v in per_module.most_common()},
                  module_share={k: round(v / wall, 4) for k, v in per_module.most_common()},
                  ops={k: round(v, 4) for k, v in per_op.most_common(top)}, ops_by_shape=by_shape[:2 * top])
    if cuda:
        result.update(gpu_busy_s=round(sum(kernels.values()), 4),
                      kernels={k: round(v, 4) for k, v in kernels.most_common(top)})
    return result


def _shapes_text(shapes: list, most: int = 4) -> str:
    """A profiler event's input shapes, short: the scalar and optional arguments after the last tensor dropped, and
    at most ``most`` shapes (e.g. the branch-sum op's 24 kernels and BN parameters)."""
    shapes = list(shapes)
    while shapes and not shapes[-1]:
        shapes.pop()
    text = ', '.join(str(shape) for shape in shapes[:most])
    return f"[{text}{', ...' if len(shapes) > most else ''}]"


# ------------------------------------------------------------------------------------------------ reporting
def summarise(results: dict) -> dict:
    """Medians and ratios to the baseline model, per size and metric."""
    table = {}
    for size, per_size in results['sizes'].items():
        rows = {}
        for name in results['models']:
            row = {}
            for metric, _, _ in METRICS:
                row[metric] = per_size[metric].get(name)
                row[metric + '_ratio'] = ratio(row[metric], per_size[metric].get(BASELINE))
            rows[name] = row
        table[size] = rows
    return table


def scaling(results: dict) -> dict:
    """Per timed metric and model measured at two or more sizes: its time split into a per-call (fixed) part and a
    part per megapixel of the batch (``size_scaling``), with ratios to ConvNeXt-T and the fixed part's share at the
    largest size."""
    table = {}
    for metric in SCALED_METRICS:
        fits = {}
        for name in results['models']:
            points = [(results.get('batch', 1) * math.prod(parse_size(key)), per_size[metric][name])
                      for key, per_size in results['sizes'].items() if per_size[metric].get(name) is not None]
            if len({pixels for pixels, _ in points}) >= 2:
                fit = size_scaling(*zip(*points))
                largest = max(pixels for pixels, _ in points)
                fits[name] = dict(fixed_s=fit.fixed_s, per_megapixel_s=fit.per_megapixel_s,
                                  max_residual_s=fit.max_residual_s, largest_pixels=largest,
                                  fixed_share_at_largest=fit.fixed_s / fit.at(largest))
        for name, fit in fits.items():
            for key in ('fixed_s', 'per_megapixel_s'):
                fit[key + '_ratio'] = ratio(fit[key], fits.get(BASELINE, {}).get(key))
        if fits:
            table[metric] = fits
    return table


def comparison_records(results: dict) -> list:
    """Every (size, model, metric) figure with its ratio to ConvNeXt-T, for the comparison across settings."""
    return [record(f'{name} {size}', title, row[metric], row[metric + '_ratio'])
            for size, rows in results['summary'].items() for name, row in rows.items()
            for metric, title, _ in METRICS if row[metric] is not None]


def write_report(path: str, results: dict) -> None:
    cuda = results.get('device', 'cpu') == 'cuda'
    notes = [f"Batch {results.get('batch', 1)}{', float16 autocast' if results.get('amp') else ''}; times are "
             f"medians of {results['rounds']} interleaved calls (after one warm-up"
             f"{', the GPU synchronised around each' if cuda else ''}); ratios in "
             'brackets are to ConvNeXt-T in the same process. Training = one forward + backward of the sum of the '
             f'feature-map means. Peak memory of one training step: {PEAK_MEMORY_DEFINITION}. GFLOPs = '
             "multiply-adds of one inference (mmengine's counter, ContMix core included). Ops: "
             f"{DISPATCHED_OPS_DEFINITION}. ContMix core: the "
             f"compiled op of this checkout ({results['contmix_backend']})."]
    where = f"on {results['machine']['gpu']}" if cuda else 'on the CPU'
    lines = report_header(f'OverLoCK-T against ConvNeXt-T and Swin-T {where}', results['command'],
                          results['machine'], notes)
    for size, rows in results['summary'].items():
        lines += [f'## {size}', '']
        lines += markdown_table(['model'] + [title for _, title, _ in METRICS],
                                [[name] + [with_ratio(row[m], row[m + '_ratio'], fmt) for m, _, fmt in METRICS]
                                 for name, row in rows.items()])
        lines.append('')
    for metric, fits in results.get('scaling', {}).items():
        lines += [f'## {SCALED_METRICS[metric]} against input size', '',
                  f'{SIZE_SCALING_DEFINITION}; the fixed part is paid by every call whatever the image size.', '']
        lines += markdown_table(
            ['model', 'fixed s', 's per megapixel', 'fixed share at the largest size', 'largest residual s'],
            [[name, with_ratio(fit['fixed_s'], fit['fixed_s_ratio'], '{:.3f}'),
              with_ratio(fit['per_megapixel_s'], fit['per_megapixel_s_ratio'], '{:.3f}'),
              f"{fit['fixed_share_at_largest']:.0%}", f"{fit['max_residual_s']:.3f}"] for name, fit in fits.items()])
        lines.append('')
    for prof in results.get('profiles', []):
        size = 'x'.join(map(str, prof['size']))
        lines += [f"## Profile: {prof['model']} {prof['phase']} at {size} ({prof['profiled_s']:.3f} s under the "
                  'profiler' + (f", GPU busy {prof['gpu_busy_s']:.3f} s" if 'gpu_busy_s' in prof else '') + ')', '']
        if prof['modules']:
            lines += markdown_table(['module type (exclusive)', 's', 'share'],
                                    [[k, f'{v:.3f}', f"{prof['module_share'][k]:.1%}"]
                                     for k, v in list(prof['modules'].items())[:12]])
            lines.append('')
        what = 'GPU time of its kernels' if 'kernels' in prof else 'self time'
        lines += markdown_table([f'operator ({what})', 's'], [[f'`{k}`', f'{v:.4f}'] for k, v in prof['ops'].items()])
        lines.append('')
        if prof.get('ops_by_shape'):
            lines += markdown_table(
                [f'operator ({what})', 'input shapes', 'calls', 's', 'ms per call'],
                [[f"`{row['op']}`", f"`{row['input_shapes']}`", str(row['calls']), f"{row['s']:.4f}",
                  f"{row['s'] / row['calls'] * 1e3:.2f}"] for row in prof['ops_by_shape']])
            lines.append('')
        if 'kernels' in prof:
            lines += markdown_table(['GPU kernel', 's'], [[f'`{k}`', f'{v:.4f}'] for k, v in prof['kernels'].items()])
            lines.append('')
    write_markdown(path, lines)


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
    save_chart(fig, path)


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
    parser.add_argument('--profile-sizes', nargs='*', default=None,
                        help='sizes at which to profile overlock inference and training (default 512 on the CPU, '
                        'none on CUDA; none: skip)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu', help='where to run (default cpu)')
    parser.add_argument('--batch', type=int, default=1, help='images per call (default 1)')
    parser.add_argument('--amp', action='store_true', help='float16 autocast for the forwards (mixed precision)')
    parser.add_argument('--saved-sizes', nargs='*', default=[],
                        help='sizes at which to count the tensors each model\'s training step saves for its backward, '
                        'by module, with the backward\'s transient memory (OUT_DIR/saved_<size>.{md,json})')
    parser.add_argument('--out-dir', default=None,
                        help='output folder (default benchmarks/backbone/cpu, or benchmarks/backbone/cuda)')
    add_isa_argument(parser)
    args = parser.parse_args(argv)
    if args.device == 'cuda' and (args.isa or args.saved_sizes):
        parser.error('--isa and --saved-sizes measure the CPU; leave them out with --device cuda')
    if args.batch < 1:
        parser.error(f'--batch must be at least 1, got {args.batch}')
    if args.profile_sizes is None:
        args.profile_sizes = ['512'] if args.device == 'cpu' else []
    args.out_dir = args.out_dir or osp.join('benchmarks', 'backbone', args.device)
    return args


def measure(args, command: str, setting=None) -> dict:
    """The whole comparison in this process; writes results.{json,md,png} and returns the results."""
    set_threads(args.threads)
    models = [BASELINE] + [m for m in args.models if m != BASELINE]
    from mmoverlock.ops import available_backends
    device = args.device
    backend = [b for b in available_backends() if b == device or b == 'torch'][0]
    results = dict(command=command, machine=machine_info(device), device=device, batch=args.batch, amp=args.amp,
                   threads=args.threads, rounds=args.rounds, models=models, contmix_backend=backend, sizes={})
    for height, width in (parse_size(s) for s in args.sizes):
        key = f'{height}x{width}'
        print(f'== {key}', flush=True)
        per_size = {metric: {} for metric, _, _ in METRICS}
        runners = {name: Runner(name, height, width, device=device, batch=args.batch, amp=args.amp)
                   for name in models}
        timings = interleaved_times({n: r.infer for n, r in runners.items()}, args.rounds, device=device)
        for name, timing in timings.items():
            per_size['infer_s'][name] = timing.median_s
        trainable = {n: r.train_step for n, r in runners.items() if n in TRAINABLE}
        for name, timing in interleaved_times(trainable, args.rounds, device=device).items():
            per_size['train_s'][name] = timing.median_s
        for name, runner in runners.items():  # after the timed calls: the counting mode slows the call it sees
            # An inference call as the timed ones ran: after another (the first one after eval() also folds the
            # BatchNorms into the convs, mmoverlock.models.fold_cache, some 1,500 operators more for OverLoCK-T).
            runner.infer()
            per_size['infer_ops'][name] = dispatched_ops(runner.infer)['total']
            if name in TRAINABLE:
                per_size['train_ops'][name] = dispatched_ops(runner.train_step)['total']
        del runners, trainable
        print('   times', {m: {n: round(v, 3) for n, v in d.items()} for m, d in per_size.items() if d}, flush=True)
        for name in models:
            if not args.no_memory and name in TRAINABLE:
                per_size['train_mem_mib'][name] = train_memory_mib(name, height, width, args.threads, device,
                                                                   args.batch, args.amp)
            if not args.no_flops and name != 'overlock-deploy':  # the deploy form has the eval form's FLOPs + fold
                per_size['gflops'][name] = flops(name, height, width) / 1e9
        print('   memory/flops', per_size['train_mem_mib'], per_size['gflops'], flush=True)
        results['sizes'][key] = per_size
    results['profiles'] = []
    for size in args.profile_sizes:
        height, width = parse_size(size)
        for phase in ('infer', 'train_step'):
            results['profiles'].append(profile('overlock', height, width, phase, top=25 if device == 'cuda' else 12,
                                               device=device, batch=args.batch, amp=args.amp))
    results['summary'] = summarise(results)
    results['scaling'] = scaling(results)
    out_dir = isa_output(args.out_dir, setting)
    for size in args.saved_sizes:
        height, width = parse_size(size)
        stem = osp.join(out_dir, f'saved_{height}x{width}')
        write_saved_activations(stem, f'Saved tensors of one training step at {height}x{width}', command,
                                results['machine'], saved_activations(models, size, args.threads))
        print(f'wrote {stem}.md and {stem}.json', flush=True)
    write_json(osp.join(out_dir, 'results.json'), results)
    write_report(osp.join(out_dir, 'results.md'), results)
    write_plot(osp.join(out_dir, 'results.png'), results)
    print(open(osp.join(out_dir, 'results.md')).read())
    return results


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = command_line(__file__, argv)
    return measure_per_isa(args.isa, __file__, argv, lambda setting: measure(args, command, setting),
                           lambda setting: osp.join(isa_output(args.out_dir, setting), 'results.json'),
                           osp.join(args.out_dir, 'isa_comparison'),
                           'OverLoCK-T against ConvNeXt-T and Swin-T on the CPU', comparison_records, 'ConvNeXt-T')


if __name__ == '__main__':
    main()
