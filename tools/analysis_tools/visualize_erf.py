"""Effective receptive field (ERF) of one or more backbones: a heatmap per model, the map as JSON, the area ratios.

Each MODEL is an mmdet / mmseg config file (its backbone is used) or a timm model name (``convnext_tiny``,
``swin_tiny_patch4_window7_224``, ``overlock_t``, ...), with random weights unless ``--checkpoints`` gives a file for
it (random weights drawn after ``torch.manual_seed(--seed)``, default 0, so a run is reproducible). The ERF is
RepLKNet's (:mod:`mmoverlock.analysis.erf` defines it precisely): the input gradient of the central
pixel of the chosen output map (``--stage``, default the last), its channels summed after a ReLU, positive part of
the gradient summed over the colour channels, averaged over the images; drawn as ``log10(M + 1)`` divided by its
maximum (one panel per model, one colour scale from 0 to 1); the high-contribution area ratio at t is the area of the
smallest centred square holding more than t of the log-scaled map's total, over the image area.

Images: the first ``--num-images`` (default 8, a quick look; RepLKNet averages 50) in ``--images`` (default: the
bundled synthetic ADE20K-format validation images, written by ``tools/misc/generate_data.py`` first if they are
absent), resized bicubically to ``--size`` and normalised as the model expects; ``--batch-size`` of them per pass
(the maps do not depend on it).

Writes ``OUT_DIR/erf.png`` and ``OUT_DIR/erf.json`` (per model: the raw map M, the ratios on log10(M + 1) and on M,
image count, seconds, with the CPU named) and prints the ratio table.

Usage:
    python tools/analysis_tools/visualize_erf.py MODEL [MODEL ...] [--checkpoints CKPT|none ...] [--images DIR]
        [--num-images N] [--batch-size 4] [--size 224 | HxW] [--stage -1] [--out-dir outputs/erf] [--seed 0]
        [--threads N]
"""
import argparse
import json
import os
import os.path as osp
import sys
import time

import torch
from tqdm import tqdm

from mmoverlock.analysis.erf import ERF_THRESHOLDS, accumulate_erf, area_ratios, display_map, format_ratio_table
from mmoverlock.analysis.visualization import DEFAULT_IMAGES, cpu_name, image_folder, parse_size
from mmoverlock.apis.feature_extractor import build_feature_extractor, list_image_files

GENERATOR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'misc', 'generate_data.py')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Effective receptive field (RepLKNet definition) of backbones')
    parser.add_argument('models', nargs='+', help='config files (.py, their backbone) and/or timm model names')
    parser.add_argument('--checkpoints', nargs='+', default=None,
                        help="one per model, in order: a checkpoint file or 'none' for random weights")
    parser.add_argument('--labels', nargs='+', default=None, help='panel titles, one per model')
    parser.add_argument('--images', default=None, help=f'folder of images (default: {DEFAULT_IMAGES}, generated '
                        'if absent)')
    parser.add_argument('--num-images', type=int, default=8,
                        help='use the first N images, sorted by name (default 8, a quick look; 0: all)')
    parser.add_argument('--size', type=parse_size, default=(224, 224), help='input size: N or HxW (default 224)')
    parser.add_argument('--batch-size', type=int, default=4,
                        help='images per forward/backward pass (default 4; same maps, lower it for large inputs)')
    parser.add_argument('--stage', type=int, default=-1, help='index of the output map (default -1: the last)')
    parser.add_argument('--out-dir', default='outputs/erf', help='where erf.png and erf.json go')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the random weights, set before each model (default 0)')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    args = parser.parse_args(argv)
    for name in ('checkpoints', 'labels'):
        given = getattr(args, name)
        if given is not None and len(given) != len(args.models):
            parser.error(f'--{name} needs one entry per model ({len(args.models)}), got {len(given)}')
    if args.batch_size < 1:
        parser.error(f'--batch-size must be a positive integer, got {args.batch_size}')
    if args.num_images < 0:
        parser.error(f'--num-images must be 0 (all) or a positive integer, got {args.num_images}')
    return args


def draw(results, path):
    """One panel per model: log10(M + 1) / max, one colour scale [0, 1] for all panels."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.3 * len(results) + 0.6, 3.6), squeeze=False)
    image = None
    for ax, result in zip(axes[0], results):
        image = ax.imshow(display_map(result['map']), cmap='RdYlGn', vmin=0, vmax=1, interpolation='nearest')
        ratios = result['area_ratios']
        lines = [result['label']] + [
            ' '.join(f't={t}: {ratios[str(t)]["area_ratio"]:.3f}' if ratios[str(t)] else f't={t}: -'
                     for t in pair) for pair in (ERF_THRESHOLDS[:2], ERF_THRESHOLDS[2:])]
        ax.set_title('\n'.join(lines), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.025, pad=0.02, label='log10(M + 1) / max')
    fig.savefig(path, dpi=100, bbox_inches='tight')
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = image_folder(args.images, GENERATOR)
    files = list_image_files(folder)[:args.num_images or None]
    # Gradients far from the centre reach denormal magnitudes, which the CPU handles tens of times slower (3x the
    # time per image for OverLoCK-T at 224); flushing them to zero changes no figure (they are below 1.2e-38).
    torch.set_flush_denormal(True)
    os.makedirs(args.out_dir, exist_ok=True)
    results = []
    for index, model in enumerate(args.models):
        checkpoint = args.checkpoints[index] if args.checkpoints else None
        checkpoint = None if checkpoint in (None, 'none') else checkpoint
        torch.manual_seed(args.seed)  # the same random weights on every run: the figures are reproducible
        start = time.perf_counter()
        extractor = build_feature_extractor(model, checkpoint, input_size=args.size)
        build_s = time.perf_counter() - start
        label = args.labels[index] if args.labels else extractor.label + ('' if checkpoint else ' (random init)')
        images = (extractor.preprocess(path, args.size) for path in files)
        start, cpu_start = time.perf_counter(), time.process_time()
        erf = accumulate_erf(extractor, tqdm(images, total=len(files), desc=label, unit='image'), args.stage,
                             args.batch_size)
        erf_s, erf_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        results.append(dict(label=label, model=model, checkpoint=checkpoint, random_init=checkpoint is None,
                            num_images=erf.num_images, num_skipped=erf.num_skipped, build_s=round(build_s, 3),
                            erf_s=round(erf_s, 3), erf_cpu_s=round(erf_cpu_s, 3), area_ratios=area_ratios(erf.map),
                            area_ratios_raw=area_ratios(erf.map, log_scale=False), map=erf.map))

    draw(results, osp.join(args.out_dir, 'erf.png'))
    payload = dict(
        definition='RepLKNet: M = mean over images of sum_rgb relu(d/dx sum_c relu(y[c, h//2, w//2])); '
        'area ratio at t = area of the smallest centred odd square with more than t of sum(log10(M + 1)), over H*W '
        '(area_ratios_raw: the same on M)',
        input_size=list(args.size), stage=args.stage, batch_size=args.batch_size, seed=args.seed, images=folder,
        image_files=[osp.basename(f) for f in files],
        thresholds=list(ERF_THRESHOLDS), cpu=cpu_name(), torch_threads=torch.get_num_threads(),
        command=' '.join([osp.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])),
        models=[dict(r, map=r['map'].tolist()) for r in results])
    with open(osp.join(args.out_dir, 'erf.json'), 'w') as f:
        json.dump(payload, f)

    print(f'ERF at {args.size[0]}x{args.size[1]}, output map {args.stage}, {len(files)} images from {folder}; '
          f'high-contribution area ratio (square side) on log10(M + 1):')
    print('\n'.join(format_ratio_table({r['label']: r['area_ratios'] for r in results})))
    for r in results:
        print(f"{r['label']}: {r['num_images']} images ({r['num_skipped']} skipped), build {r['build_s']:.1f} s, "
              f"ERF {r['erf_s']:.1f} s ({r['erf_cpu_s']:.1f} s of CPU time) on {payload['cpu']} "
              f"({payload['torch_threads']} threads)")
    print(f'wrote {osp.join(args.out_dir, "erf.png")} and {osp.join(args.out_dir, "erf.json")}')


if __name__ == '__main__':
    main()
