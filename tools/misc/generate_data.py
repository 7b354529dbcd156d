"""Generate the bundled synthetic datasets (no downloads): a COCO-format instance set and an ADE20K-format set.

Smoke training (``tools/misc/smoke_train.py``) and the tests need data that (a) exercises the real mmdet/mmseg
loaders and evaluators unchanged and (b) is easy enough that a small OverLoCK learns it from scratch in a few CPU
minutes. So the images are small scenes of a few coloured shapes on a textured background: each class has its own
colour family *and* its own geometry, and objects do not overlap.

Layout written under ``--out`` (default ``data/generated``)::

    coco/annotations/instances_{train,val}.json   COCO instances: polygons for solid shapes, compressed RLE for
    coco/{train,val}/*.jpg                          the ring (an annulus has a hole, so one polygon cannot describe it)
    coco/held_out/*.jpg                             unlabelled images for the demo
    ade/images/{training,validation}/*.jpg          ADE20K layout: label PNGs with 0 = "other" (ignored through
    ade/annotations/{training,validation}/*.png     reduce_zero_label; here a 1-px band around each shape, like the
    ade/held_out/*.jpg                              unlabelled borders of real annotations), 1 = background, 2.. shapes
    meta.json                                       class names and palettes, read by the smoke configs' docs/tests

Usage: python tools/misc/generate_data.py [--out data/generated] [--size 128] [--num-train 160] [--num-val 40]
"""
import argparse
import json
import math
import os
import os.path as osp

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Instance classes (COCO ids are 1-based in this order). ``ring`` is stored as RLE, the others as polygons.
CLASSES = ('circle', 'square', 'triangle', 'ring')
#: One base colour per class (RGB); each object jitters it so colour is a strong but not a perfect cue. The ring is
#: cyan, not yellow: a yellow ring differs from the red circle in one channel only, and shape-biased segmentors then
#: took rings for circles for the whole smoke schedule.
CLASS_COLORS = ((230, 60, 50), (50, 170, 60), (60, 90, 230), (40, 200, 210))
#: Semantic classes of the ADE-format set: index i is stored as label i + 1 in the PNGs (0 = ignored "other").
SEG_CLASSES = ('background', ) + CLASSES
SEG_PALETTE = ((120, 120, 120), ) + CLASS_COLORS


def _polygon(kind, cx, cy, r, angle):
    """Vertices of a shape as a list of (x, y) floats; circles and rings use a 32-gon outline."""
    if kind in ('circle', 'ring'):
        n, phase = 32, 0.0
    elif kind == 'square':
        n, phase, r = 4, angle, r * 1.15
    else:  # triangle
        n, phase, r = 3, angle, r * 1.25
    return [(cx + r * math.cos(phase + 2 * math.pi * i / n), cy + r * math.sin(phase + 2 * math.pi * i / n))
            for i in range(n)]


def _draw_mask(size, polygon, hole=None):
    """Rasterise ``polygon`` (minus the ``hole`` polygon) into a uint8 {0, 1} mask of ``size`` × ``size``."""
    canvas = Image.new('L', (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon(polygon, fill=1)
    if hole is not None:
        draw.polygon(hole, fill=0)
    return np.asarray(canvas, dtype=np.uint8)


def _background(rng, size):
    """A textured, weakly tinted background: a gradient between two greyish colours plus blurred noise, so that
    brightness alone does not separate objects from it, while the saturated object colours still do."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0 = rng.uniform(70, 170) + rng.uniform(-15, 15, 3)
    c1 = rng.uniform(70, 170) + rng.uniform(-15, 15, 3)
    t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))[..., None]
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    img = c0 * (1 - t) + c1 * t
    noise = Image.fromarray(rng.uniform(0, 255, (size, size, 3)).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
    img = img + (np.asarray(noise, dtype=np.float32) - 127.5) * 0.35
    return img


def _sample_scene(rng, size, max_objects):
    """Random non-overlapping objects: a list of dicts with class index, mask, outline polygon (None for rings)."""
    objects, occupied = [], np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            label = int(rng.integers(len(CLASSES)))
            r = rng.uniform(0.10, 0.22) * size
            cx, cy = rng.uniform(r + 2, size - r - 2, 2)
            kind = CLASSES[label]
            outline = _polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
            hole = _polygon(kind, cx, cy, r * 0.4, 0.0) if kind == 'ring' else None
            mask = _draw_mask(size, outline, hole)
            grown = np.asarray(Image.fromarray(mask * 255).filter(ImageFilter.MaxFilter(5))) > 0
            if mask.sum() > 16 and not (grown & occupied).any():
                occupied |= grown
                objects.append(dict(label=label, mask=mask, polygon=None if hole is not None else outline))
                break
    return objects


def _render(rng, size, objects):
    """Paint the objects (class colour jittered per object, with shading noise) over a fresh background."""
    img = _background(rng, size)
    for obj in objects:
        color = np.clip(np.asarray(CLASS_COLORS[obj['label']], np.float32) + rng.uniform(-25, 25, 3), 0, 255)
        shade = rng.normal(0, 8, (size, size, 1))
        m = obj['mask'].astype(bool)
        img[m] = (color + shade[m])
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _coco_segmentation(obj):
    """Polygon list for solid shapes; compressed RLE (``counts`` as str, JSON-safe) for rings."""
    if obj['polygon'] is not None:
        return [[round(v, 2) for xy in obj['polygon'] for v in xy]]
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(obj['mask']))
    return dict(size=[int(s) for s in rle['size']], counts=rle['counts'].decode('ascii'))


def _write_coco_split(rng, root, split, num_images, size, max_objects, start_id):
    """Write ``{root}/{split}/*.jpg`` and ``{root}/annotations/instances_{split}.json``; return the next image id."""
    os.makedirs(osp.join(root, split), exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image_id = start_id + i
        objects = _sample_scene(rng, size, max_objects)
        name = f'{split}_{image_id:06d}.jpg'
        _render(rng, size, objects).save(osp.join(root, split, name), quality=95)
        images.append(dict(id=image_id, file_name=name, height=size, width=size))
        for obj in objects:
            annotations.append(
                dict(id=len(annotations) + 1, image_id=image_id, category_id=obj['label'] + 1,
                     bbox=_bbox(obj['mask']), area=float(obj['mask'].sum()), iscrowd=0,
                     segmentation=_coco_segmentation(obj)))
    categories = [dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(CLASSES)]
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return start_id + num_images


def _write_ade_split(rng, root, split, num_images, size, max_objects):
    """Write ``images/{split}/*.jpg`` and ``annotations/{split}/*.png`` (labels: 0 ignore band, 1 bg, 2.. shapes)."""
    img_dir, ann_dir = osp.join(root, 'images', split), osp.join(root, 'annotations', split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    for i in range(num_images):
        objects = _sample_scene(rng, size, max_objects)
        label = np.ones((size, size), np.uint8)
        for obj in objects:
            # A 1-px ignore band around each shape, as real annotations leave ambiguous borders unlabelled.
            band = np.asarray(Image.fromarray(obj['mask'] * 255).filter(ImageFilter.MaxFilter(3))) > 0
            label[band] = 0
            eroded = np.asarray(Image.fromarray(obj['mask'] * 255).filter(ImageFilter.MinFilter(3))) > 0
            label[eroded] = obj['label'] + 2
        name = f'ADE_{split}_{i:06d}'
        _render(rng, size, objects).save(osp.join(img_dir, name + '.jpg'), quality=95)
        Image.fromarray(label).save(osp.join(ann_dir, name + '.png'))


def _write_held_out(rng, folder, num_images, size, max_objects):
    os.makedirs(folder, exist_ok=True)
    for i in range(num_images):
        _render(rng, size, _sample_scene(rng, size, max_objects)).save(
            osp.join(folder, f'held_out_{i:03d}.jpg'), quality=95)


def generate(out='data/generated', size=128, num_train=160, num_val=40, num_held_out=6, max_objects=3,
             seg_max_objects=5, seed=0):
    """Write both datasets under ``out`` deterministically from ``seed``; returns the path of ``meta.json``.

    Args:
        out (str): Output root. Defaults to ``'data/generated'``.
        size (int): Square image side in pixels. Defaults to ``128``.
        num_train (int): Training images per dataset. Defaults to ``160``.
        num_val (int): Validation images per dataset. Defaults to ``40``.
        num_held_out (int): Unlabelled demo images per dataset. Defaults to ``6``.
        max_objects (int): Most objects per image of the COCO-format set (at least one). Defaults to ``3``.
        seg_max_objects (int): Most objects per image of the ADE-format set. More than for detection because
            per-pixel training sees the small shape classes far less often than the background. Defaults to ``5``.
        seed (int): Seed of the generator (each split uses its own stream). Defaults to ``0``.
    """
    streams = np.random.SeedSequence(seed).spawn(6)
    rng = [np.random.default_rng(s) for s in streams]
    coco = osp.join(out, 'coco')
    next_id = _write_coco_split(rng[0], coco, 'train', num_train, size, max_objects, start_id=1)
    _write_coco_split(rng[1], coco, 'val', num_val, size, max_objects, start_id=next_id)
    _write_held_out(rng[2], osp.join(coco, 'held_out'), num_held_out, size, max_objects)
    ade = osp.join(out, 'ade')
    _write_ade_split(rng[3], ade, 'training', num_train, size, seg_max_objects)
    _write_ade_split(rng[4], ade, 'validation', num_val, size, seg_max_objects)
    _write_held_out(rng[5], osp.join(ade, 'held_out'), num_held_out, size, seg_max_objects)
    meta = dict(size=size, seed=seed, num_train=num_train, num_val=num_val, classes=list(CLASSES),
                palette=[list(c) for c in CLASS_COLORS], seg_classes=list(SEG_CLASSES),
                seg_palette=[list(c) for c in SEG_PALETTE])
    path = osp.join(out, 'meta.json')
    with open(path, 'w') as f:
        json.dump(meta, f, indent=1)
    return path


def parse_args():
    parser = argparse.ArgumentParser(description='Generate the synthetic COCO-format and ADE20K-format datasets')
    parser.add_argument('--out', default='data/generated', help='output root (git-ignored)')
    parser.add_argument('--size', type=int, default=128, help='square image side in pixels')
    parser.add_argument('--num-train', type=int, default=160)
    parser.add_argument('--num-val', type=int, default=40)
    parser.add_argument('--num-held-out', type=int, default=6)
    parser.add_argument('--max-objects', type=int, default=3, help='most objects per COCO-format image')
    parser.add_argument('--seg-max-objects', type=int, default=5, help='most objects per ADE-format image')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    meta = generate(args.out, args.size, args.num_train, args.num_val, args.num_held_out, args.max_objects,
                    args.seg_max_objects, args.seed)
    print(f'wrote COCO-format set to {osp.join(args.out, "coco")} and ADE20K-format set to '
          f'{osp.join(args.out, "ade")} ({meta})')


if __name__ == '__main__':
    main()
