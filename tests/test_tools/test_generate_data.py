"""The bundled-data generator writes valid COCO instances (polygons and RLE) and ADE20K-format label maps, with the
classes the smoke configs declare."""
import json
import os
import os.path as osp

import numpy as np
from mmengine.config import Config
from PIL import Image
from pycocotools.coco import COCO

import pytest
from _helpers import SMOKE_DET, SMOKE_SEG

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

CLASSES = Config.fromfile(SMOKE_DET).metainfo['classes']
SEG_CLASSES = Config.fromfile(SMOKE_SEG).metainfo['classes']


def test_coco_set(shapes_workdir):
    root = shapes_workdir / 'data' / 'generated' / 'coco'
    for split, count in (('train', 8), ('val', 4)):
        coco = COCO(str(root / 'annotations' / f'instances_{split}.json'))
        assert len(coco.getImgIds()) == count
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        anns = coco.loadAnns(coco.getAnnIds())
        assert anns and all(a['iscrowd'] == 0 for a in anns)
        kinds = set()
        for ann in anns:
            kinds.add('rle' if isinstance(ann['segmentation'], dict) else 'polygon')
            mask = coco.annToMask(ann)
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann['bbox']
            # the box encloses the decoded mask (polygon rasterisation may differ by a pixel at the border)
            assert xs.min() >= x - 1 and ys.min() >= y - 1 and xs.max() <= x + w and ys.max() <= y + h
            assert abs(mask.sum() - ann['area']) <= 0.25 * ann['area']
            img = coco.loadImgs(ann['image_id'])[0]
            assert osp.isfile(root / split / img['file_name'])
        if split == 'train':  # the seed gives rings (RLE) and solid shapes (polygons) in the training split
            assert kinds == {'rle', 'polygon'}
    assert len(os.listdir(root / 'held_out')) == 2


def test_ade_set(shapes_workdir):
    root = shapes_workdir / 'data' / 'generated' / 'ade'
    for split, count in (('training', 8), ('validation', 4)):
        images = sorted(os.listdir(root / 'images' / split))
        labels = sorted(os.listdir(root / 'annotations' / split))
        assert len(images) == len(labels) == count
        assert [osp.splitext(i)[0] for i in images] == [osp.splitext(a)[0] for a in labels]
        for name in labels:
            label = np.asarray(Image.open(root / 'annotations' / split / name))
            assert label.dtype == np.uint8 and label.shape == (128, 128)
            values = set(np.unique(label).tolist())
            # 0 = unlabelled band (ignored via reduce_zero_label), 1 = background, 2.. = the shape classes
            assert {0, 1} <= values <= set(range(len(SEG_CLASSES) + 1))
    meta = json.loads((shapes_workdir / 'data' / 'generated' / 'meta.json').read_text())
    assert meta['classes'] == list(CLASSES) and meta['seg_classes'] == list(SEG_CLASSES)
