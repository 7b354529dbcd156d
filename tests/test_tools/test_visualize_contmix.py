"""ContMix kernels as the tool reads them: the op's own logits and bias, softmax-normalised per group, equal to a
direct computation from the block's query / key / weight_proj at the query pixel, placed where the op aggregates."""
import json
import math

import pytest
import torch
from torch import nn

from _helpers import SMOKE_SEG, TINY_ARCH, run_tool
from mmoverlock.analysis.contmix_kernels import (ContMixCall, kernel_probabilities, mean_distance, query_cell,
                                                 record_contmix_calls, window_starts)
from mmoverlock.models import OverLoCK
from mmoverlock.models.blocks import ContMixBlock
from mmoverlock.ops import contmix_aggregate

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow


def _tiny_overlock(seed=0):
    """OverLoCK-pico in float64 eval mode with non-trivial biases, BN statistics and kernel projections."""
    torch.manual_seed(seed)
    model = OverLoCK(arch=TINY_ARCH).double().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'rpb' in name:
                param.normal_()
            elif 'weight_proj' in name:
                param.normal_(std=0.5)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(std=0.1)
                module.running_var.uniform_(0.5, 2.0)
    return model


def _direct_logits(block, query, key):
    """The spec's steps 4-5 from the block's modules: affinities of the scaled queries with the 49 pooled keys,
    mixed by weight_proj. Returns the large kernel's logits [B, G, h, w, K*K]."""
    b, _, height, width = query.shape
    g = block.num_groups
    q = (query * block.scale).reshape(b, g, -1, height * width)
    k = key.reshape(b, g, -1, 49)
    affinity = torch.einsum('bgcn,bgcl->bgnl', q, k)
    logits = torch.einsum('bgnl,tl->bgnt', affinity, block.weight_proj.weight.flatten(1)) + block.weight_proj.bias
    return logits[..., block.smk_size**2:].reshape(b, g, height, width, -1)


def _direct_kernel(logits, rpb, i, j, height, width):
    """softmax over the K x K taps of ``logits[i, j] + rpb`` at the offsets of the shifted window, written out."""
    k = int(math.isqrt(logits.shape[-1]))
    row0, col0 = max(0, min(i - k // 2, height - k)), max(0, min(j - k // 2, width - k))
    biased = torch.empty(k, k, dtype=logits.dtype)
    for a in range(k):
        for e in range(k):
            biased[a, e] = logits[i, j, a * k + e] + rpb[row0 + a - i + k - 1, col0 + e - j + k - 1]
    return torch.softmax(biased.flatten(), 0).reshape(k, k)


@pytest.mark.parametrize('size', [(224, 224), (96, 128)])  # 96x128: the blocks work on enlarged maps (h < K)
def test_kernels_are_the_ops_and_equal_a_direct_computation(size):
    model = _tiny_overlock()
    captured = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, ContMixBlock):
            for part in ('weight_query', 'weight_key'):
                handles.append(getattr(module, part).register_forward_hook(
                    lambda mod, args, out, key=(name, part): captured.__setitem__(key, out)))
    image = torch.randn(1, 3, *size, dtype=torch.float64)
    with record_contmix_calls(model) as calls, torch.no_grad():
        model(image)
    for handle in handles:
        handle.remove()
    large = [call for call in calls if call.kernel == 'large']
    assert [call.block for call in large] == ['sub_blocks3.0', 'sub_blocks3.1', 'sub_blocks4.0', 'sub_blocks4.1']
    assert [call.kernel_size for call in calls if call.kernel == 'small'] == [5] * 4

    queries = [(0, 0), (size[1] // 2, size[0] // 2), (size[1] - 1, 17)]
    for call in large:
        block = model.get_submodule(call.block)
        height, width = call.grid_size
        assert call.block_size != call.grid_size if size == (96, 128) else call.block_size == call.grid_size
        probs = kernel_probabilities(call)
        torch.testing.assert_close(probs.sum(dim=(-2, -1)), torch.ones(probs.shape[:4], dtype=torch.float64),
                                   rtol=0, atol=1e-12)
        logits = _direct_logits(block, captured[(call.block, 'weight_query')], captured[(call.block, 'weight_key')])
        torch.testing.assert_close(call.logits, logits, rtol=1e-10, atol=1e-12)
        for x, y in queries:
            i, j = query_cell(call, size, x, y)
            assert (i, j) == (y * height // size[0], x * width // size[1])
            for g in range(call.num_groups):
                expected = _direct_kernel(logits[0, g], block.rpb2[g].detach(), i, j, height, width)
                torch.testing.assert_close(probs[0, g, i, j], expected, rtol=1e-10, atol=1e-13)


def test_kernels_sit_where_the_op_aggregates():
    """Aggregating the coordinates of each neighbour with the op gives the kernels' expected neighbour position."""
    model = _tiny_overlock(1)
    with record_contmix_calls(model) as calls, torch.no_grad():
        model(torch.randn(1, 3, 64, 96, dtype=torch.float64))
    for call in calls:
        b, g, height, width, _ = call.logits.shape
        k = call.kernel_size
        rows = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)
        cols = torch.arange(width, dtype=torch.float64)[None, :].expand(height, width)
        coords = torch.stack([rows, cols], -1).expand(b, g, height, width, 2).contiguous()
        out = contmix_aggregate(call.logits, coords, k, rpb=call.rpb, softmax=True)
        probs = kernel_probabilities(call)
        taps = torch.arange(k, dtype=torch.float64)
        expected_row = (probs.sum(-1) * (window_starts(height, k)[:, None] + taps)[None, None, :, None, :]).sum(-1)
        expected_col = (probs.sum(-2) * (window_starts(width, k)[:, None] + taps)[None, None, None, :, :]).sum(-1)
        torch.testing.assert_close(out[..., 0], expected_row, rtol=0, atol=1e-10)
        torch.testing.assert_close(out[..., 1], expected_col, rtol=0, atol=1e-10)


def test_mean_distance_of_one_hot_kernels():
    """All mass on tap (a, e): the distance is |(s(i) + a - i, s(j) + e - j)| cells, times the cell size."""
    k, height, width = 5, 9, 12
    logits = torch.full((1, 2, height, width, k * k), -60., dtype=torch.float64)
    logits[:, 0, ..., 0] = 60.  # group 0: top-left tap
    logits[:, 1, ..., 2 * k + 2] = 60.  # group 1: the centre tap
    call = ContMixCall('block', 'large', k, logits, torch.zeros(2, 2 * k - 1, 2 * k - 1, dtype=torch.float64),
                       (height, width))
    image_size = (height * 4, width * 3)  # a cell is 4 px high, 3 px wide
    distance = mean_distance(kernel_probabilities(call), call, image_size)[0]
    for i in range(height):
        for j in range(width):
            di, dj = window_starts(height, k)[i] - i, window_starts(width, k)[j] - j
            assert distance[0, i, j].item() == pytest.approx(math.hypot(4 * di, 3 * dj), abs=1e-9)
            assert distance[1, i, j].item() == pytest.approx(math.hypot(4 * (di + 2), 3 * (dj + 2)), abs=1e-9)
    assert distance[1, 4, 5].item() == pytest.approx(0, abs=1e-9)  # an inner pixel's centre tap is itself


def test_recording_leaves_the_model_as_it_was_and_refuses_other_models():
    model = _tiny_overlock()
    block = model.sub_blocks3[0]

    def marker(logits, value, kernel_size, rpb):
        return ContMixBlock._aggregate(block, logits, value, kernel_size, rpb)

    block._aggregate = marker  # an override already in place (a user's instrumentation) is kept
    with record_contmix_calls(model) as calls, torch.no_grad():
        model(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    assert len(calls) == 8
    assert block.__dict__['_aggregate'] is marker and '_aggregate' not in model.sub_blocks3[1].__dict__
    assert not block._forward_pre_hooks
    with pytest.raises(ValueError, match='model has no ContMix block'):
        with record_contmix_calls(nn.Conv2d(3, 3, 1)):
            pass
    with pytest.raises(ValueError, match='outside the 12x9'):
        query_cell(calls[0], (9, 12), 12, 0)


def test_tool_writes_kernels_and_distance_maps(shapes_workdir, tmp_path):
    out = tmp_path / 'contmix'
    log = run_tool(['tools/analysis_tools/visualize_contmix.py', SMOKE_SEG, '--size', '96x128', '--query', '10,10',
                    '64,48', '--out-dir', out], cwd=shapes_workdir)
    payload = json.loads((out / 'contmix.json').read_text())
    assert payload['image'].endswith('ADE_validation_000000.jpg') and payload['random_init']
    assert [b['block'] for b in payload['blocks']] == ['sub_blocks3.0', 'sub_blocks3.1', 'sub_blocks4.0',
                                                        'sub_blocks4.1']
    for block in payload['blocks']:
        k = block['kernel_size']
        assert len(block['queries']) == 2
        for query in block['queries']:
            kernels = torch.tensor(query['kernels'], dtype=torch.float64)  # the model ran in float32
            assert kernels.shape == (block['groups'], k, k) and (kernels > 0).all()
            torch.testing.assert_close(kernels.sum(dim=(1, 2)), torch.ones(block['groups'], dtype=torch.float64),
                                       rtol=0, atol=1e-6)
            torch.testing.assert_close(torch.tensor(query['kernel_mean'], dtype=torch.float64), kernels.mean(0),
                                       rtol=0, atol=1e-7)
        assert torch.tensor(block['mean_distance_map']).shape == tuple(block['grid_size'])
    for name in ('kernels_q0.png', 'kernels_q1.png', 'mean_distance.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'sub_blocks4.1' in log
    with pytest.raises(AssertionError, match=r"--blocks \['nope'\] are not ContMix blocks"):
        run_tool(['tools/analysis_tools/visualize_contmix.py', SMOKE_SEG, '--size', '64', '--blocks', 'nope',
                  '--out-dir', out], cwd=shapes_workdir)
