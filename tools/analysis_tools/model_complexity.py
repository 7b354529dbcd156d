"""Params and FLOPs of every OverLoCK backbone and every detector/segmentor config, as one table for the README.

Each row is :func:`mmoverlock.analysis.config_complexity` (mmengine's FlopAnalyzer with the ContMix core counted), so
the figures are exactly what ``tools/analysis_tools/get_flops.py`` prints for the same config and shape:

- backbones ``xt``/``t``/``s``/``b`` at 224x224 (ImageNet resolution), training and deploy (re-parameterised) form;
  the paper's 16/33/56/95 M are its classifiers in deploy form, i.e. these backbones plus the classification head;
- the Cascade Mask R-CNN and Mask R-CNN configs at 800x1333 (mmdet's convention for COCO FLOPs);
- the UperNet configs at 512x2048 (the ADE20K convention of the OverLoCK, Swin and ConvNeXt papers).

Usage:
    python tools/analysis_tools/model_complexity.py [--out-dir benchmarks/complexity] [--skip-models]
Writes ``results.json`` and ``results.md`` in ``--out-dir``.
"""
import argparse
import datetime
import json
import os
import os.path as osp
import platform
import sys
import time

import torch

from mmoverlock.analysis import config_complexity

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: Any mmdet config serves for the backbone rows (only its backbone is traced, with ``arch`` overridden).
BACKBONE_CONFIG = 'configs/cascade_mask_rcnn/cascade-mask-rcnn_overlock-t_fpn_ms-3x_coco.py'
#: Classifier params (deploy form) reported in the OverLoCK paper, for the comparison column.
PAPER_CLASSIFIER_PARAMS_M = dict(xt=16, t=33, s=56, b=95)
MODEL_CONFIGS = (
    [(f'configs/cascade_mask_rcnn/cascade-mask-rcnn_overlock-{v}_fpn_ms-3x_coco.py', (800, 1333)) for v in 'tsb'] +
    [(f'configs/mask_rcnn/mask-rcnn_overlock-{v}_fpn_1x_coco.py', (800, 1333)) for v in 'tsb'] +
    [(f'configs/upernet/upernet_overlock-{v}_8xb2-160k_ade20k-512x512.py', (512, 2048)) for v in 'tsb'])


def backbone_rows():
    rows = []
    for arch in PAPER_CLASSIFIER_PARAMS_M:
        for deploy in (False, True):
            res = config_complexity(BACKBONE_CONFIG, (224, 224), {'model.backbone.arch': arch}, deploy,
                                    backbone_only=True)
            rows.append(dict(arch=arch, deploy=deploy, shape=res['shape'], params=res['backbone_params'],
                             flops=res['backbone_flops'], contmix_flops=res['contmix_flops'],
                             paper_classifier_params_m=PAPER_CLASSIFIER_PARAMS_M[arch]))
            print(f'backbone {arch}{" deploy" if deploy else ""}: {rows[-1]["params"] / 1e6:.2f} M, '
                  f'{rows[-1]["flops"] / 1e9:.2f} GFLOPs', flush=True)
    return rows


def model_rows():
    rows = []
    for config, shape in MODEL_CONFIGS:
        start = time.perf_counter()
        res = config_complexity(config, shape)
        rows.append(dict(config=config, shape=res['shape'], params=res['params'], flops=res['flops'],
                         backbone_params=res['backbone_params'], backbone_flops=res['backbone_flops'],
                         contmix_flops=res['contmix_flops'], mask_rois=res['mask_rois'],
                         mask_head_flops=res['mask_head_flops'],
                         flops_mask_head_on_100_rois=res['flops_mask_head_on_100_rois'],
                         uncounted_ops=res['uncounted_ops']))
        print(f'{osp.basename(config)} @ {shape[0]}x{shape[1]}: {res["params"] / 1e6:.2f} M, '
              f'{res["flops"] / 1e9:.1f} GFLOPs ({time.perf_counter() - start:.0f} s)', flush=True)
    return rows


def write_markdown(path, result):
    lines = ['# Params and FLOPs of OverLoCK backbones and models', '',
             f'Produced by `{result["command"]}` on {result["date"]} (torch {result["torch"]}).',
             'FLOPs are multiply-adds at batch 1 (fvcore/mmengine convention; element-wise ops not counted), the '
             'ContMix core counted as B·G·H·W·C·K² multiply-adds.', '',
             '## Backbones (224×224, no classification head)', '',
             '| arch | form | params (M) | GFLOPs | of which ContMix core | paper classifier params (M) |',
             '| --- | --- | ---: | ---: | ---: | ---: |']
    for r in result['backbones']:
        lines.append(f'| {r["arch"]} | {"deploy" if r["deploy"] else "train"} | {r["params"] / 1e6:.2f} | '
                     f'{r["flops"] / 1e9:.2f} | {r["contmix_flops"] / 1e9:.3f} | '
                     f'{r["paper_classifier_params_m"] if r["deploy"] else ""} |')
    lines += ['', 'The paper counts its classifiers in deploy form, head included (the head is not part of the '
              'backbone used for detection and segmentation). FLOPs are counted in eval mode, where the training '
              'form folds its dilated blocks and the BatchNorms after convs into the convs, so both forms count the '
              'same multiply-adds (folded BatchNorms are not counted).', '']
    if result['models']:
        lines += ['## Detectors and segmentors (training form)', '',
                  '| config | input | params (M) | GFLOPs | GFLOPs, mask heads on 100 RoIs | backbone params (M) | '
                  'backbone GFLOPs |',
                  '| --- | --- | ---: | ---: | ---: | ---: | ---: |']
        for r in result['models']:
            on_100 = r['flops_mask_head_on_100_rois']
            lines.append(f'| {osp.basename(r["config"])} | {r["shape"][0]}×{r["shape"][1]} | {r["params"] / 1e6:.2f} '
                         f'| {r["flops"] / 1e9:.1f} | {"" if on_100 is None else f"{on_100 / 1e9:.1f}"} | '
                         f'{r["backbone_params"] / 1e6:.2f} | {r["backbone_flops"] / 1e9:.1f} |')
        lines += ['', 'Detector FLOPs are traced in mmdet 3\'s tensor mode: the RoI heads run on the RPN proposals '
                  'of a random image (up to 1000), the mask heads of every cascade stage included, so the mask heads '
                  'dominate. Published detector FLOPs (mmdet 2.x `forward_dummy`) run the mask heads on 100 RoIs; '
                  'that column rescales the traced mask-head FLOPs, which are linear in the RoIs, to 100. The '
                  'data-dependent and element-wise ops the counter skips are listed in results.json.']
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def main(argv=None):
    parser = argparse.ArgumentParser(description='Params/FLOPs table of all OverLoCK backbones and configs')
    parser.add_argument('--out-dir', default=osp.join(ROOT, 'benchmarks', 'complexity'))
    parser.add_argument('--skip-models', action='store_true', help='backbones only (seconds instead of minutes)')
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    command = 'python tools/analysis_tools/model_complexity.py' + (' --skip-models' if args.skip_models else '')
    result = dict(command=command,
                  date=datetime.datetime.now().isoformat(timespec='seconds'), torch=torch.__version__,
                  python=platform.python_version(), backbones=backbone_rows(),
                  models=[] if args.skip_models else model_rows())
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'results.json'), 'w') as f:
        json.dump(result, f, indent=1)
    write_markdown(osp.join(args.out_dir, 'results.md'), result)
    print(f'wrote {osp.join(args.out_dir, "results.md")} and results.json')
    return result


if __name__ == '__main__':
    sys.exit(main() and 0)
