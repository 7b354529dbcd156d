"""The ERF (RepLKNet's definition): analytic supports of tiny conv nets, area ratios with known answers, the backbone
builder behind the tool (configs and timm names, checkpoints), and the tool's outputs."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from _helpers import SMOKE_SEG, TINY_ARCH, run_tool
from mmoverlock.analysis.erf import (ERF_THRESHOLDS, accumulate_erf, area_ratio, area_ratios, contribution_map,
                                     contribution_maps, display_map, select_output)
from mmoverlock.apis.feature_extractor import build_feature_extractor, list_image_files
from mmoverlock.models import OverLoCK

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow


def _positive_conv(in_channels, out_channels, dilation=1):
    """A 3x3 conv whose weights and bias are all positive, so a positive input has a positive response."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation)
    with torch.no_grad():
        conv.weight.uniform_(0.1, 1.0)
        conv.bias.uniform_(0.1, 1.0)
    return conv


def _support(model, size=15, seed=0):
    """The pixels where the contribution map of a positive image is non-zero, and the map."""
    torch.manual_seed(seed)
    image = torch.rand(1, 3, size, size) + 0.1
    grad_map = contribution_map(model, image)
    return (grad_map > 0).numpy(), grad_map


def _square(size, centre, half):
    mask = np.zeros((size, size), dtype=bool)
    mask[centre - half:centre + half + 1, centre - half:centre + half + 1] = True
    return mask


def test_one_conv_has_a_3x3_support():
    torch.manual_seed(0)
    support, grad_map = _support(_positive_conv(3, 4))
    np.testing.assert_array_equal(support, _square(15, 7, 1))
    # all of the mass lies in the 3x3 square, none in the centre pixel alone
    assert area_ratio(grad_map.numpy(), 0.99) == (3, 9 / 225)


def test_two_stacked_convs_have_a_5x5_support():
    torch.manual_seed(1)
    model = nn.Sequential(_positive_conv(3, 4), nn.ReLU(), _positive_conv(4, 5))
    support, _ = _support(model)
    np.testing.assert_array_equal(support, _square(15, 7, 2))


def test_dilated_conv_has_9_taps_on_a_5x5_grid():
    torch.manual_seed(2)
    support, _ = _support(_positive_conv(3, 4, dilation=2))
    expected = np.zeros((15, 15), dtype=bool)
    expected[5:10:2, 5:10:2] = True
    np.testing.assert_array_equal(support, expected)
    assert support.sum() == 9


def test_the_gradient_and_the_output_pass_a_relu():
    """Negative responses and negative gradients do not count (RepLKNet's relu on both)."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1., -1., 0.], [0., 2., 0.], [0., 0., 0.]]]]))
    image = torch.ones(1, 1, 7, 7)  # central response 1 - 1 + 2 = 2 > 0
    expected = np.zeros((7, 7))
    expected[2, 2], expected[3, 3] = 1., 2.  # the -1 tap is dropped
    np.testing.assert_array_equal(contribution_map(conv, image).numpy(), expected)
    np.testing.assert_array_equal(contribution_map(lambda x: -conv(x), image).numpy(), np.zeros((7, 7)))


def test_accumulation_is_the_mean_over_images_and_skips_non_finite_maps():
    torch.manual_seed(3)
    convs = nn.Sequential(_positive_conv(3, 4), nn.ReLU(), _positive_conv(4, 2))

    def model(x):  # the gradient of sqrt at 0 is infinite: an image with a zero pixel gives a non-finite map
        return convs(x.sqrt())

    images = [torch.rand(1, 3, 9, 11) + 0.1 for _ in range(3)]
    expected = sum(contribution_map(model, image) for image in images).numpy() / 3
    bad_image = images[0].clone()
    bad_image[0, 0, 4, 5] = 0.
    assert not np.isfinite(contribution_map(model, bad_image).numpy()).all()
    erf = accumulate_erf(model, images + [bad_image])
    np.testing.assert_allclose(erf.map, expected, rtol=1e-12)
    assert (erf.num_images, erf.num_skipped) == (3, 1)
    with pytest.raises(ValueError, match=r'no image gave a finite ERF map \(1 skipped\)'):
        accumulate_erf(model, [bad_image])


def test_batches_give_each_image_its_own_map():
    """A real backbone in eval mode: one pass over a batch gives the maps of one pass per image, in any grouping."""
    torch.manual_seed(6)
    model = OverLoCK(arch=TINY_ARCH).double().eval()
    images = [torch.randn(1, 3, 64, 80, dtype=torch.float64) for _ in range(5)]
    singles = torch.stack([contribution_map(model, image) for image in images])
    assert (singles.flatten(1).sum(1) > 0).all()
    torch.testing.assert_close(contribution_maps(model, torch.cat(images)), singles, rtol=1e-10, atol=1e-14)
    for batch_size in (1, 2, 5):
        erf = accumulate_erf(model, images, batch_size=batch_size)
        np.testing.assert_allclose(erf.map, singles.mean(0).numpy(), rtol=1e-10, atol=1e-14)
        assert erf.num_images == 5
    with pytest.raises(ValueError, match=r'images must all have one shape: got \(1, 3, 64, 64\) after'):
        accumulate_erf(model, images[:2] + [torch.randn(1, 3, 64, 64, dtype=torch.float64)], batch_size=2)
    with pytest.raises(ValueError, match='batch_size must be a positive int, got 0'):
        accumulate_erf(model, images, batch_size=0)


def test_stage_selects_one_map_of_a_list():
    maps = [torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 2, 2)]
    assert select_output(maps, -1) is maps[1] and select_output(maps, 0) is maps[0]
    with pytest.raises(IndexError, match=r"stage must index the backbone's 2 output maps \(-2 .. 1\), got 2"):
        select_output(maps, 2)


# ----------------------------------------------------------------------------------------------- area ratios
def test_area_ratio_of_a_point():
    point = np.zeros((11, 11))
    point[5, 5] = 3.
    for t in ERF_THRESHOLDS:
        assert area_ratio(point, t) == (1, 1 / 121)


def test_area_ratio_of_a_centred_block():
    block = np.zeros((15, 15))
    block[5:10, 5:10] = 1.  # 5x5 of equal mass: the 3x3 holds 9/25 = 0.36, the 1x1 1/25
    assert area_ratio(block, 0.2) == (3, 9 / 225)
    assert area_ratio(block, 0.3) == (3, 9 / 225)
    assert area_ratio(block, 0.36 - 1e-9) == (3, 9 / 225)
    assert area_ratio(block, 0.5) == (5, 25 / 225)
    assert area_ratio(block, 0.99) == (5, 25 / 225)


def test_area_ratio_needs_strictly_more_than_t_and_clips_at_the_border():
    equal = np.full((3, 3), 0.5)
    equal[1, 1] = 4.  # the centre holds exactly half of the total 8
    assert area_ratio(equal, 0.5) == (3, 1.0)
    assert area_ratio(equal, 0.49) == (1, 1 / 9)
    uniform = np.ones((8, 8))  # centre (4, 4): r = 3 covers rows/cols 1..7 (49/64), r = 4 the whole map
    assert area_ratio(uniform, 0.7) == (7, 49 / 64)
    assert area_ratio(uniform, 0.99) == (9, 1.0)
    wide = np.ones((4, 10))  # centre (2, 5): r = 1 covers 3x3, r = 2 clips to 4 rows x 5 columns
    assert area_ratio(wide, 0.4) == (5, 20 / 40)


def test_area_ratio_agrees_with_a_brute_force_search_on_random_maps():
    rng = np.random.default_rng(0)
    for size in (9, 16, 33):
        data = rng.random((size, size)) ** 8
        c = size // 2
        for t in ERF_THRESHOLDS:
            r = next(r for r in range(c + 1) if data[c - r:c + r + 1, c - r:c + r + 1].sum() > t * data.sum())
            square = data[c - r:c + r + 1, c - r:c + r + 1]  # clipped at the far border of an even map
            assert area_ratio(data, t) == (2 * r + 1, square.size / data.size)


def test_ratios_are_measured_on_the_log_scaled_map_by_default():
    peaked = np.ones((5, 5))
    peaked[2, 2] = 99.  # raw: the centre holds 99/123; log10(M + 1): 2 of 2 + 24 * log10(2) = 9.22
    assert area_ratios(peaked, (0.5, ))['0.5'] == dict(side=5, area_ratio=1.0)
    assert area_ratios(peaked, (0.5, ), log_scale=False)['0.5'] == dict(side=1, area_ratio=1 / 25)
    np.testing.assert_allclose(display_map(peaked).max(), 1.0)
    assert display_map(peaked)[0, 0] == pytest.approx(np.log10(2) / 2)


def test_area_ratio_bad_input():
    assert area_ratio(np.zeros((5, 5)), 0.5) is None
    with pytest.raises(ValueError, match=r'threshold must be in \(0, 1\), got 1.0'):
        area_ratio(np.ones((5, 5)), 1.0)
    with pytest.raises(ValueError, match='score_map must be a finite non-negative 2-D map'):
        area_ratio(-np.ones((5, 5)), 0.5)
    with pytest.raises(ValueError, match='score_map must be a finite non-negative 2-D map'):
        area_ratio(np.ones(5), 0.5)


# ----------------------------------------------------------------------------------------------- the backbone builder
def test_timm_model_with_a_checkpoint(tmp_path):
    import timm
    torch.manual_seed(4)
    reference = timm.create_model('convnext_atto', pretrained=False)
    path = tmp_path / 'atto.pth'
    torch.save({'state_dict': reference.state_dict()}, path)
    extractor = build_feature_extractor('convnext_atto', str(path), input_size=(64, 64))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(extractor.network.state_dict()[key], value, rtol=0, atol=0)
    maps = extractor(torch.rand(1, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(40, 16, 16), (80, 8, 8), (160, 4, 4), (320, 2, 2)]


def test_config_backbone_with_a_checkpoint(tmp_path):
    from mmoverlock.apis import build_model
    torch.manual_seed(5)
    model, _ = build_model(SMOKE_SEG)
    path = tmp_path / 'seg.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    extractor = build_feature_extractor(SMOKE_SEG, str(path))
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(extractor.network.state_dict()[key], value, rtol=0, atol=0)
    assert extractor.source == 'config' and len(extractor(torch.rand(1, 3, 64, 64))) == 4
    # mmseg's data preprocessor states ImageNet's statistics in [0, 255]
    torch.testing.assert_close(extractor.mean.flatten(), torch.tensor([123.675, 116.28, 103.53]) / 255)


def test_builder_bad_input(tmp_path):
    with pytest.raises(ValueError, match='model must be an mmdet / mmseg config file .* got .not_a_model'):
        build_feature_extractor('not_a_model')
    with pytest.raises(ValueError, match='model: the config file .*missing.py.* does not exist'):
        build_feature_extractor(str(tmp_path / 'missing.py'))
    with pytest.raises(FileNotFoundError, match='no .jpg/.jpeg/.png/.bmp/.webp file in'):
        list_image_files(str(tmp_path))


# ----------------------------------------------------------------------------------------------- the tool
def test_tool_writes_the_map_the_ratios_and_the_figure(shapes_workdir, tmp_path):
    out = tmp_path / 'erf'
    log = run_tool(['tools/analysis_tools/visualize_erf.py', SMOKE_SEG, 'convnext_atto', '--num-images', 2, '--size',
                    '48x64', '--batch-size', 2, '--out-dir', out, '--threads', 1], cwd=shapes_workdir)
    payload = json.loads((out / 'erf.json').read_text())
    assert payload['input_size'] == [48, 64] and payload['image_files'] == [
        'ADE_validation_000000.jpg', 'ADE_validation_000001.jpg']
    assert [m['label'] for m in payload['models']] == [
        'upernet_overlock-pico_1xb8-smoke_shapes-128x128 (random init)', 'convnext_atto (random init)']
    for model in payload['models']:
        erf_map = np.asarray(model['map'])
        assert erf_map.shape == (48, 64) and (erf_map >= 0).all() and erf_map.max() > 0
        assert model['num_images'] == 2 and model['num_skipped'] == 0
        for t in ERF_THRESHOLDS:
            assert model['area_ratios'][str(t)] == area_ratio(np.log10(erf_map + 1), t)._asdict()
            assert model['area_ratios_raw'][str(t)] == area_ratio(erf_map, t)._asdict()
        assert model['area_ratios']['0.2']['area_ratio'] <= model['area_ratios']['0.99']['area_ratio']
    assert (out / 'erf.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'convnext_atto (random init)' in log and 't=0.99' in log
    # the random weights are seeded per model: a second run, with this model alone, draws the same network and map
    run_tool(['tools/analysis_tools/visualize_erf.py', 'convnext_atto', '--num-images', 2, '--size', '48x64',
              '--out-dir', tmp_path / 'again', '--threads', 1], cwd=shapes_workdir)
    again = json.loads((tmp_path / 'again' / 'erf.json').read_text())['models'][0]
    np.testing.assert_allclose(again['map'], payload['models'][1]['map'], rtol=1e-5, atol=1e-12)
