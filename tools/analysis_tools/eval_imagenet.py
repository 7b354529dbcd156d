"""Top-1 / top-5 accuracy and throughput of an OverLoCK classifier on an ImageNet-style folder.

The folder is ``ROOT/<class>/<image>`` (ImageNet's ``val`` with its 1000 synset folders, or any such folder whose
class count matches the model's). timm's data pipeline with the model's evaluation transform (bicubic resize to
224 / crop_pct, centre crop 224, ImageNet mean / std), as the authors' ``validate.py``; see
:mod:`mmoverlock.analysis.classification`.

Usage:
    python tools/analysis_tools/eval_imagenet.py --data-dir /data/imagenet/val --model overlock_t \\
        --checkpoint overlock_t_in1k_224.pth [--batch-size 128] [--device cuda] [--amp] [--out result.json]
    # --pretrained instead of --checkpoint downloads the authors' release of the model
"""
import argparse
import json
import os
import os.path as osp

import timm
import torch
from mmengine.config import DictAction

import mmoverlock  # noqa: F401  (registers overlock_* in timm; allow-lists mmengine checkpoint types)
from mmoverlock.analysis import evaluate_classifier, imagenet_folder_loader
from mmoverlock.models import classifier_from_checkpoint

AMP_DTYPES = dict(bfloat16=torch.bfloat16, float16=torch.float16)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='ImageNet-style evaluation of an OverLoCK classifier')
    parser.add_argument('--data-dir', required=True, help='ROOT/<class>/<image> (e.g. ImageNet val)')
    parser.add_argument('--model', default='overlock_t', help='overlock_xt, overlock_t, overlock_s or overlock_b')
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument('--checkpoint', help='weights file (loaded with weights_only=True; form and class count '
                         'are read from it)')
    weights.add_argument('--pretrained', action='store_true', help="download the authors' ImageNet release")
    parser.add_argument('--deploy', action='store_true',
                        help='fold the re-parameterisable blocks before evaluating (same numbers, faster)')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', nargs='?', const='bfloat16', choices=sorted(AMP_DTYPES),
                        help='autocast (default dtype bfloat16)')
    parser.add_argument('--img-size', type=int, help='crop size (default: the model\'s, 224)')
    parser.add_argument('--crop-pct', type=float, help='centre-crop fraction (default: the release\'s)')
    parser.add_argument('--model-kwargs', nargs='+', action=DictAction, default={},
                        help='further timm.create_model arguments, e.g. drop_path_rate=0 depth="[1,1,1,1]"')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--out', help='also write the result as JSON')
    return parser.parse_args(argv)


def build_model(args):
    if args.checkpoint:
        model = classifier_from_checkpoint(args.model, args.checkpoint, **args.model_kwargs)
    else:
        model = timm.create_model(args.model, pretrained=True, **args.model_kwargs)
    if args.deploy:
        model.switch_to_deploy()
    return model


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    model = build_model(args).to(device).eval()
    overrides = {k: v for k, v in dict(img_size=args.img_size, crop_pct=args.crop_pct).items() if v is not None}
    loader, data_config, class_to_idx = imagenet_folder_loader(args.data_dir, model, args.batch_size, args.workers,
                                                               device, overrides)
    if len(class_to_idx) != model.num_classes:
        raise SystemExit(f'{args.data_dir} has {len(class_to_idx)} class folders but the model predicts '
                         f'{model.num_classes} classes; evaluate on a folder with exactly one sub-folder per class')
    result = evaluate_classifier(model, loader, device, AMP_DTYPES.get(args.amp), progress=not args.no_progress)
    top5 = 'n/a (fewer than 5 classes)' if result['top5'] is None else f"{result['top5']:.3f}"
    print(f"{args.model} on {result['num_images']} images of {len(class_to_idx)} classes: "
          f"top-1 {result['top1']:.3f}  top-5 {top5}  "
          f"{result['images_per_second']:.1f} images/s ({result['model_images_per_second']:.1f} in the model alone)")
    if args.out:
        record = dict(model=args.model, checkpoint=args.checkpoint or model.pretrained_cfg.get('url'),
                      data_dir=osp.abspath(args.data_dir), num_classes=len(class_to_idx), deploy=model.deploy,
                      device=str(device), amp=args.amp, batch_size=args.batch_size,
                      data_config={k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
                      torch=torch.__version__, timm=timm.__version__, **result)
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(record, f, indent=2)
        print(f'result written to {args.out}')


if __name__ == '__main__':
    main()
