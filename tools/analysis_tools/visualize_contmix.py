"""The dynamic kernels that OverLoCK's ContMix blocks generate for an image, at chosen query pixels.

MODEL is an mmdet / mmseg config with an OverLoCK backbone or a timm OverLoCK name (``overlock_t``, ...), with random
weights (drawn after ``torch.manual_seed(--seed)``) unless ``--checkpoint`` is given. The image (default: the first
bundled ADE20K-format validation image, generated if absent) is resized to ``--size`` and run once; every ContMix
block's call of the ContMix op is recorded (:mod:`mmoverlock.analysis.contmix_kernels`: the logits and relative
position bias the op received, nothing recomputed), and the kernel it applied at each query pixel is
``softmax(logits + bias)`` over its K x K taps.

Writes to ``--out-dir``:

* ``kernels_q<n>.png`` per query pixel: one row per block; the group mean and each group's K x K kernel drawn over
  the image in the window the op aggregated (windows are shifted inwards at the borders), the query marked; one
  colour scale per row, from the row's smallest weight to its largest (the range is printed beside the row);
* ``mean_distance.png``: per block, the map of the kernels' mean distance (``sum_t p_t * |offset_t|``, in input
  pixels, averaged over the groups), one colour scale for all blocks;
* ``contmix.json``: per block the grid, cell size, mean-distance map and, per query, every group's kernel, their
  mean, their sums and mean distances; seconds and the CPU's name.

Usage:
    python tools/analysis_tools/visualize_contmix.py MODEL [--checkpoint CKPT] [--image PATH] [--size 224 | HxW]
        [--query X,Y ...] [--kernel large|small] [--blocks NAME ...] [--seed 0] [--out-dir outputs/contmix]
"""
import argparse
import json
import os
import os.path as osp
import sys
import time

import numpy as np
import torch

from mmoverlock.analysis.contmix_kernels import (KERNELS, cell_size, kernel_probabilities, mean_distance, query_cell,
                                                 record_contmix_calls, window_starts)
from mmoverlock.analysis.visualization import DEFAULT_IMAGES, cpu_name, image_folder, parse_size
from mmoverlock.apis.feature_extractor import build_feature_extractor, list_image_files

GENERATOR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'misc', 'generate_data.py')


def parse_query(text: str):
    """``'X,Y'`` (column, row of the resized input) -> (x, y)."""
    try:
        x, y = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'--query must be X,Y with integer pixel coordinates, got {text!r}')
    return x, y


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='ContMix dynamic kernels of an OverLoCK model at query pixels')
    parser.add_argument('model', help='config file (.py) with an OverLoCK backbone, or a timm name (overlock_t)')
    parser.add_argument('--checkpoint', default=None, help='weights (default: random initialisation)')
    parser.add_argument('--image', default=None, help=f'image file (default: the first image of {DEFAULT_IMAGES})')
    parser.add_argument('--size', type=parse_size, default=(224, 224), help='input size: N or HxW (default 224)')
    parser.add_argument('--query', type=parse_query, nargs='+', default=None,
                        help='query pixels X,Y in the resized input (default: the centre)')
    parser.add_argument('--kernel', choices=KERNELS, default='large', help='which dynamic kernel (default large)')
    parser.add_argument('--blocks', nargs='+', default=None, help='block names to draw (default: all)')
    parser.add_argument('--out-dir', default='outputs/contmix', help='where the figures and contmix.json go')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random weights (default 0)')
    parser.add_argument('--dpi', type=int, default=72, help='resolution of the figures (default 72)')
    return parser.parse_args(argv)


def analyse(calls, image_size, queries):
    """Per recorded call: kernels at each query and the mean-distance map (see the module docstring)."""
    blocks = []
    for call in calls:
        probs = kernel_probabilities(call)[0]  # [G, h, w, K, K]
        distance = mean_distance(probs[None], call, image_size)[0]  # [G, h, w]
        k = call.kernel_size
        rows, cols = window_starts(call.grid_size[0], k), window_starts(call.grid_size[1], k)
        cell_h, cell_w = cell_size(call, image_size)
        per_query = []
        for x, y in queries:
            i, j = query_cell(call, image_size, x, y)
            kernels = probs[:, i, j]  # [G, K, K]
            per_query.append(dict(
                query=[x, y], cell=[i, j], window_cell=[int(rows[i]), int(cols[j])],
                window_box=[cols[j].item() * cell_w, rows[i].item() * cell_h, (cols[j].item() + k) * cell_w,
                            (rows[i].item() + k) * cell_h],
                kernel_mean=kernels.mean(0).tolist(), kernels=kernels.tolist(),
                kernel_sums=kernels.sum(dim=(1, 2)).tolist(), mean_distance=distance[:, i, j].tolist()))
        distance_map = distance.mean(0)
        blocks.append(dict(block=call.block, kernel=call.kernel, kernel_size=k, groups=call.num_groups,
                           block_size=list(call.block_size), grid_size=list(call.grid_size), cell_size=[cell_h, cell_w],
                           mean_distance_map=distance_map.tolist(), mean_distance_px=distance_map.mean().item(),
                           queries=per_query))
    return blocks


def _setup_matplotlib():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _overlay(ax, image, kernel, per_query, limits, title):
    """``kernel`` (K x K) over ``image`` in its window, the view cropped to the window, the query marked."""
    left, top, right, bottom = per_query['window_box']
    ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0), interpolation='bilinear')
    ax.imshow(np.asarray(kernel), cmap='magma', vmin=limits[0], vmax=limits[1], alpha=0.6,
              extent=(left, right, bottom, top), interpolation='nearest')
    ax.plot(*per_query['query'], marker='+', color='cyan', markersize=7, mew=1.5)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_title(title, fontsize=6, pad=2)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_kernels(blocks, image, index, path, dpi):
    """One row per block: the group mean, then every group's kernel, over the image (query ``index``)."""
    plt = _setup_matplotlib()
    columns = 1 + max(block['groups'] for block in blocks)
    height = len(blocks) * 1.2 + 0.45
    fig, axes = plt.subplots(len(blocks), columns, figsize=(columns * 1.05, height), squeeze=False)
    fig.subplots_adjust(left=0.03, right=0.995, bottom=0.01, top=1 - 0.45 / height, wspace=0.06, hspace=0.3)
    for row, block in zip(axes, blocks):
        per_query = block['queries'][index]
        limits = (min(np.min(per_query['kernels']), np.min(per_query['kernel_mean'])),
                  max(np.max(per_query['kernels']), np.max(per_query['kernel_mean'])))
        _overlay(row[0], image, per_query['kernel_mean'], per_query, limits, 'group mean')
        row[0].set_ylabel(f"{block['block']} K={block['kernel_size']}\np {limits[0]:.4f}-{limits[1]:.4f}", fontsize=6)
        for g, kernel in enumerate(per_query['kernels']):
            _overlay(row[g + 1], image, kernel, per_query, limits, f'group {g}')
        for ax in row[block['groups'] + 1:]:
            ax.axis('off')
    x, y = blocks[0]['queries'][index]['query']
    fig.suptitle(f'ContMix {blocks[0]["kernel"]} kernels at pixel (x={x}, y={y}), drawn over the window they '
                 'aggregate; colour: weight p, dark = the row\'s smallest, light = its largest', fontsize=8)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def draw_distances(blocks, image, queries, path, dpi):
    """The image, then each block's mean-distance map (input pixels), one colour scale."""
    plt = _setup_matplotlib()
    panels = len(blocks) + 1
    columns = min(panels, 5)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.0), squeeze=False)
    axes = axes.flatten()
    height, width = image.shape[:2]
    axes[0].imshow(image)
    for x, y in queries:
        axes[0].plot(x, y, marker='+', color='cyan', markersize=8, mew=1.5)
    axes[0].set_title('input', fontsize=7)
    vmax = max(np.max(block['mean_distance_map']) for block in blocks)
    shown = None
    for ax, block in zip(axes[1:], blocks):
        shown = ax.imshow(np.asarray(block['mean_distance_map']), cmap='viridis', vmin=0, vmax=vmax,
                          extent=(0, width, height, 0), interpolation='nearest')
        ax.set_title(f"{block['block']} K={block['kernel_size']}\nmean {block['mean_distance_px']:.1f} px",
                     fontsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[panels:]:
        ax.axis('off')
    fig.colorbar(shown, ax=axes.tolist(), fraction=0.02, pad=0.02, label='mean distance of the kernel mass (px)')
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)  # the same random weights on every run: the figures are reproducible
    start = time.perf_counter()
    extractor = build_feature_extractor(args.model, args.checkpoint, input_size=args.size)
    image_path = args.image or list_image_files(image_folder(None, GENERATOR))[0]
    inputs = extractor.preprocess(image_path, args.size)
    queries = args.query or [(args.size[1] // 2, args.size[0] // 2)]
    for x, y in queries:
        if not (0 <= x < args.size[1] and 0 <= y < args.size[0]):
            raise ValueError(f'--query {x},{y} lies outside the {args.size[1]}x{args.size[0]} (WxH) input')
    with record_contmix_calls(extractor.network) as calls, torch.no_grad():
        extractor(inputs)
    calls = [call for call in calls if call.kernel == args.kernel]
    if args.blocks:
        names = [call.block for call in calls]
        unknown = sorted(set(args.blocks) - set(names))
        if unknown:
            raise ValueError(f'--blocks {unknown} are not ContMix blocks of {args.model}; they are {names}')
        calls = [call for call in calls if call.block in args.blocks]
    blocks = analyse(calls, args.size, queries)
    seconds = time.perf_counter() - start

    os.makedirs(args.out_dir, exist_ok=True)
    image = extractor.preprocess(image_path, args.size) * extractor.std + extractor.mean
    image = image[0].permute(1, 2, 0).clamp(0, 1).numpy()
    figures = []
    for index in range(len(queries)):
        figures.append(osp.join(args.out_dir, f'kernels_q{index}.png'))
        draw_kernels(blocks, image, index, figures[-1], args.dpi)
    figures.append(osp.join(args.out_dir, 'mean_distance.png'))
    draw_distances(blocks, image, queries, figures[-1], args.dpi)
    payload = dict(model=args.model, checkpoint=args.checkpoint, random_init=args.checkpoint is None,
                   image=image_path, input_size=list(args.size), kernel=args.kernel, seed=args.seed,
                   queries=[list(q) for q in queries],
                   seconds=round(seconds, 3), cpu=cpu_name(), torch_threads=torch.get_num_threads(),
                   command=' '.join([osp.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])),
                   blocks=blocks)
    with open(osp.join(args.out_dir, 'contmix.json'), 'w') as f:
        json.dump(payload, f)

    print(f'{args.kernel} ContMix kernels of {extractor.label}{"" if args.checkpoint else " (random init)"} on '
          f'{image_path} at {args.size[0]}x{args.size[1]}:')
    for block in blocks:
        at_queries = ', '.join(f'{np.mean(q["mean_distance"]):.1f}' for q in block['queries'])
        print(f"  {block['block']:<16} K={block['kernel_size']:<3} G={block['groups']:<3} grid "
              f"{block['grid_size'][0]}x{block['grid_size'][1]}  mean distance {block['mean_distance_px']:.1f} px "
              f"(at the queries: {at_queries})")
    print(f'analysis {seconds:.1f} s on {payload["cpu"]} ({payload["torch_threads"]} threads); wrote '
          f'{", ".join(figures)} and {osp.join(args.out_dir, "contmix.json")}')


if __name__ == '__main__':
    main()
