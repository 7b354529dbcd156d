"""tools/analysis_tools/eval_imagenet.py on a small generated ImageNet-style folder: the reported top-1 / top-5 equal
counts made here from the model's own predictions, under the evaluation transform written out by hand."""
import json
import math

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torchvision import transforms

import mmoverlock  # noqa: F401  (registers overlock_* in timm)
from _helpers import run_tool

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

TOOL = 'tools/analysis_tools/eval_imagenet.py'
SHALLOW = dict(depth=[1, 1, 1, 1], sub_depth=[2, 2])
MODEL_KWARGS = ['depth=[1,1,1,1]', 'sub_depth=[2,2]']
NUM_CLASSES = 6
IMG_SIZE = 96


def eval_transform(crop_pct):
    """The evaluation transform the README states: bicubic resize of the short side to size / crop_pct, centre crop,
    ImageNet mean / std."""
    return transforms.Compose([
        transforms.Resize(math.floor(IMG_SIZE / crop_pct), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(IMG_SIZE),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])


@pytest.fixture(scope='module')
def model_and_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model('overlock_xt', num_classes=NUM_CLASSES, **SHALLOW).eval()
    with torch.no_grad():  # logits of order 1 apart, so no prediction rests on a rounding-level tie
        model.head[4].weight.normal_(0, 1)
    path = tmp_path_factory.mktemp('ckpt') / 'xt.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    return model, path


def write_folder(root, model):
    """2 x NUM_CLASSES random pictures in ROOT/<class>/: the first NUM_CLASSES cover every class, of the others the
    even ones go to the class the model predicts and the odd ones to another. Returns the expected top-1 / top-5 (%)
    and the smallest logit gap at the top-1 and top-5 boundaries."""
    rng = np.random.default_rng(0)
    names = [f'n{i:08d}' for i in range(NUM_CLASSES)]  # synset-like: natural and lexical order agree
    transform = eval_transform(model.pretrained_cfg['crop_pct'])
    top1 = top5 = 0
    gaps = []
    for i in range(2 * NUM_CLASSES):
        size = (int(rng.integers(80, 160)), int(rng.integers(80, 160)))
        image = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        with torch.no_grad():
            logits = model(transform(image)[None]).squeeze(0)
        ranked = logits.argsort(descending=True)
        if i < NUM_CLASSES:
            label = i
        else:
            label = int(ranked[0]) if i % 2 == 0 else int(ranked[1])
        top1 += int(ranked[0]) == label
        top5 += label in ranked[:5].tolist()
        sorted_logits = logits[ranked]
        gaps += [float(sorted_logits[0] - sorted_logits[1]), float(sorted_logits[4] - sorted_logits[5])]
        (root / names[label]).mkdir(parents=True, exist_ok=True)
        image.save(root / names[label] / f'img{i:02d}.png')
    n = 2 * NUM_CLASSES
    return 100. * top1 / n, 100. * top5 / n, min(gaps)


def test_reported_accuracy_matches_an_independent_count(tmp_path, model_and_checkpoint):
    model, checkpoint = model_and_checkpoint
    expected_top1, expected_top5, min_gap = write_folder(tmp_path / 'val', model)
    assert min_gap > 1e-3  # far above the float32 difference between batched and single-image forward passes
    assert 0 < expected_top1 < 100  # some right, some wrong: a shuffled label order would change the figure
    out = tmp_path / 'result.json'
    log = run_tool([TOOL, '--data-dir', tmp_path / 'val', '--model', 'overlock_xt', '--checkpoint', checkpoint,
                    '--model-kwargs', *MODEL_KWARGS, '--img-size', IMG_SIZE, '--batch-size', 5, '--workers', 0,
                    '--device', 'cpu', '--out', out], cwd=tmp_path)
    result = json.loads(out.read_text())
    assert result['num_images'] == 2 * NUM_CLASSES and result['num_classes'] == NUM_CLASSES
    assert result['top1'] == pytest.approx(expected_top1) and result['top5'] == pytest.approx(expected_top5)
    assert result['images_per_second'] > 0 and result['model_images_per_second'] >= result['images_per_second']
    assert result['data_config']['interpolation'] == 'bicubic' and result['data_config']['crop_pct'] == 0.925
    assert result['data_config']['input_size'] == [3, IMG_SIZE, IMG_SIZE] and not result['deploy']
    assert f"top-1 {expected_top1:.3f}" in log
    assert 'eval: 100%' in log  # tqdm's bar, on stderr
    # The folded (deploy) model gives the same figures.
    run_tool([TOOL, '--data-dir', tmp_path / 'val', '--model', 'overlock_xt', '--checkpoint', checkpoint,
              '--model-kwargs', *MODEL_KWARGS, '--img-size', IMG_SIZE, '--workers', 0, '--device', 'cpu', '--deploy',
              '--no-progress', '--out', tmp_path / 'deploy.json'], cwd=tmp_path)
    folded = json.loads((tmp_path / 'deploy.json').read_text())
    assert folded['deploy'] and (folded['top1'], folded['top5']) == (result['top1'], result['top5'])


def test_class_count_mismatch_fails_clearly(tmp_path, model_and_checkpoint):
    _model, checkpoint = model_and_checkpoint
    for name in ('a', 'b'):
        (tmp_path / 'val' / name).mkdir(parents=True)
        Image.new('RGB', (64, 64)).save(tmp_path / 'val' / name / 'x.png')
    with pytest.raises(AssertionError, match='has 2 class folders but the model predicts 6 classes'):
        run_tool([TOOL, '--data-dir', tmp_path / 'val', '--model', 'overlock_xt', '--checkpoint', checkpoint,
                  '--model-kwargs', *MODEL_KWARGS, '--workers', 0, '--device', 'cpu'], cwd=tmp_path)
