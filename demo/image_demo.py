"""Image demo: run a trained detector / segmentor on an image or a folder of images and save the visualisations.

Detection configs go through mmdet's ``DetInferencer`` (boxes, masks and class names drawn above ``--score-thr``),
segmentation configs through mmseg's ``MMSegInferencer`` (the class map blended over the image). The task follows the
config's ``default_scope``; class names and palette come from the checkpoint's ``dataset_meta``. The checkpoint is
loaded weights-only (``import mmoverlock`` routes the inferencers' loading through :mod:`mmoverlock.checkpoint_io`), so
a file whose pickle would run code is refused. Pictures go to
``OUT_DIR/vis/``. The raw predictions are saved too with ``--save-pred`` for detectors (JSON in ``OUT_DIR/preds/``)
and always for segmentors (label PNGs in ``OUT_DIR/pred/``: MMSegInferencer has no switch for it).

Usage:
    python demo/image_demo.py IMAGE_OR_FOLDER CONFIG CHECKPOINT [--out-dir outputs/demo] [--device cpu]
"""
import argparse
import os
import os.path as osp

from tqdm import tqdm

from mmoverlock.apis import load_config, task_of

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def list_images(path):
    """The image files of a folder (sorted, non-recursive), or ``[path]`` for a single file."""
    if osp.isdir(path):
        files = sorted(osp.join(path, name) for name in os.listdir(path) if name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {path}')
        return files
    if not osp.isfile(path):
        raise FileNotFoundError(path)
    return [path]


def build_inferencer(config, checkpoint, device):
    """DetInferencer or MMSegInferencer for the config's task, with its own progress bar off (we draw one)."""
    task = task_of(load_config(config))
    if task == 'mmdet':
        from mmdet.apis import DetInferencer
        return task, DetInferencer(model=config, weights=checkpoint, device=device, show_progress=False)
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=config, weights=checkpoint, device=device)
    inferencer.show_progress = False
    return task, inferencer


def run_demo(inputs, config, checkpoint, out_dir, device='cpu', score_thr=0.3, opacity=0.5, save_pred=False):
    """Visualise predictions for every image of ``inputs``; return the paths of the written pictures."""
    images = list_images(inputs)
    task, inferencer = build_inferencer(config, checkpoint, device)
    os.makedirs(out_dir, exist_ok=True)
    for image in tqdm(images, desc=f'demo ({task})', unit='img'):
        if task == 'mmdet':
            inferencer(image, out_dir=out_dir, pred_score_thr=score_thr, no_save_pred=not save_pred)
        else:
            inferencer(image, out_dir=out_dir, opacity=opacity)
    vis_dir = osp.join(out_dir, 'vis')
    written = sorted(osp.join(vis_dir, name) for name in os.listdir(vis_dir)) if osp.isdir(vis_dir) else []
    return written


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Visualise detector / segmentor predictions on images')
    parser.add_argument('inputs', help='an image file or a folder of images')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-dir', default='outputs/demo', help='output folder (pictures go to OUT_DIR/vis)')
    parser.add_argument('--device', default='cpu', help='device, e.g. cpu or cuda:0')
    parser.add_argument('--score-thr', type=float, default=0.3, help='detection: lowest score drawn')
    parser.add_argument('--opacity', type=float, default=0.5, help='segmentation: opacity of the class map')
    parser.add_argument('--save-pred', action='store_true', help='detection: also save the raw predictions as JSON')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    written = run_demo(args.inputs, args.config, args.checkpoint, args.out_dir, args.device, args.score_thr,
                       args.opacity, args.save_pred)
    print(f'{len(written)} pictures in {osp.join(args.out_dir, "vis")}')
    return written


if __name__ == '__main__':
    main()
