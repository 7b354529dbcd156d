"""Tests of ``mmoverlock.ops.pointwise``: 1 x 1 convs whose backward runs as matrix products, against ``F.conv2d``'s
own gradients in float64, in both memory formats, with and without bias, for every subset of wanted gradients; the
fall-backs (mixed layouts, strided views, float32 with autocast, tracing); ``PointwiseConv2d`` as a drop-in
``nn.Conv2d``; bad kernels."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmoverlock.ops import pointwise
from mmoverlock.ops.pointwise import PointwiseConv2d, pointwise_conv2d, pointwise_conv2d_backward

FORMATS = {'nchw': torch.contiguous_format, 'nhwc': torch.channels_last}
# (N, C, O, H, W): a sample and a batch, a one-pixel map (SE's), channel counts off any vector width
SHAPES = [(1, 24, 40, 7, 9), (3, 5, 17, 6, 4), (2, 33, 8, 1, 1)]


def _inputs(shape, layout, dtype=torch.float64, bias=True, seed=0):
    n, c, o, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype).contiguous(memory_format=FORMATS[layout])
    weight = torch.randn(o, c, 1, 1, generator=gen, dtype=dtype)
    b = torch.randn(o, generator=gen, dtype=dtype) if bias else None
    grad = torch.randn(n, o, h, w, generator=gen, dtype=dtype).contiguous(memory_format=FORMATS[layout])
    return x, weight, b, grad


def _conv2d_gradients(x, weight, bias, grad):
    """Input, weight and bias gradients of ``F.conv2d`` through autograd (oneDNN's convolution backward)."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    F.conv2d(*leaves).backward(grad)
    return [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('layout', list(FORMATS))
@pytest.mark.parametrize('mask', list(itertools.product([True, False], repeat=3)))
def test_backward_matches_conv2d(shape, layout, mask):
    x, weight, b, grad = _inputs(shape, layout)
    expected = _conv2d_gradients(x, weight, b, grad)
    got = pointwise_conv2d_backward(grad, x, weight, list(mask))
    for name, want, result, wanted in zip(('grad_x', 'grad_w', 'grad_b'), expected, got, mask):
        if not wanted:
            assert result is None, name
            continue
        torch.testing.assert_close(result, want, rtol=1e-12, atol=1e-12, msg=name)
    if mask[0]:  # the input gradient comes in x's memory format, with no copy left to make
        assert got[0].is_contiguous(memory_format=FORMATS[layout])


@pytest.mark.parametrize('layout', list(FORMATS))
@pytest.mark.parametrize('bias', [True, False])
def test_autograd_matches_conv2d(layout, bias):
    x, weight, b, grad = _inputs(SHAPES[1], layout, bias=bias)
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, weight, b)]
    out = pointwise_conv2d(*leaves)
    assert out.grad_fn is not None and type(out.grad_fn).__name__ == '_PointwiseConv2dBackward'
    torch.testing.assert_close(out, F.conv2d(x, weight, b), rtol=0, atol=0)
    out.backward(grad)
    for leaf, want in zip(leaves, _conv2d_gradients(x, weight, b, grad)):
        if leaf is not None:
            torch.testing.assert_close(leaf.grad, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('layout', list(FORMATS))
def test_gradcheck(layout):
    x, weight, b, _ = _inputs((2, 3, 4, 3, 5), layout)
    assert torch.autograd.gradcheck(pointwise_conv2d, [t.requires_grad_() for t in (x, weight, b)])


def test_float32_matches_conv2d():
    x, weight, b, grad = _inputs(SHAPES[0], 'nhwc', dtype=torch.float32)
    expected = _conv2d_gradients(x.double(), weight.double(), b.double(), grad.double())
    for result, want in zip(pointwise_conv2d_backward(grad, x, weight, [True, True, True]), expected):
        assert result.dtype == torch.float32
        torch.testing.assert_close(result.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('step', [1, 2])
def test_channel_slices_and_evenly_strided_maps_take_the_products(step, monkeypatch):
    """A channel slice of a channels-last map (rows of channels further apart than their length), or every other
    pixel of one, is a [pixels, C] matrix too: matrix products, no convolution backward (planted to fail), the
    gradients of ``F.conv2d``, the input gradient dense channels-last."""
    n, c, o, h, w = SHAPES[0]
    x = _inputs((n, 2 * c, o, h, w * step), 'nhwc')[0][:, c // 2:c // 2 + c, :, ::step]
    _, weight, _, grad = _inputs((n, c, o, h, w), 'nhwc', seed=1)
    expected = _conv2d_gradients(x, weight, None, grad)
    monkeypatch.setattr(pointwise.torch.ops.aten, 'convolution_backward', None)
    got = pointwise_conv2d_backward(grad, x, weight, [True, True, True])
    for result, want in zip(got, expected[:2] + [grad.sum((0, 2, 3))]):
        torch.testing.assert_close(result, want, rtol=1e-12, atol=1e-12)
    assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('case', ['mixed layouts', 'strided view', 'float16'])
def test_other_inputs_take_the_convolution_backward(case, monkeypatch):
    """Maps that are not dense matrices in one layout, and dtypes other than float32/float64, get aten's own
    convolution backward (planted: the product path raises), with the same gradients."""
    x, weight, b, grad = _inputs(SHAPES[0], 'nhwc')
    if case == 'mixed layouts':
        grad = grad.contiguous()
    elif case == 'strided view':  # (pixels not one stride apart: no [pixels, C] view)
        x = torch.cat([x, x], dim=3)[..., :x.shape[3]]
    else:
        x, weight, grad = x.half(), weight.half(), grad.half()
    expected = _conv2d_gradients(x.double(), weight.double(), None, grad.double())[:2]
    monkeypatch.setattr(pointwise.torch, 'mm', None)  # the product path would fail here
    grad_x, grad_w, grad_b = pointwise_conv2d_backward(grad, x, weight, [True, True, False])
    assert grad_b is None
    tolerance = 1e-2 if case == 'float16' else 1e-12
    for result, want in zip((grad_x, grad_w), expected):
        assert result.dtype == x.dtype
        torch.testing.assert_close(result.double(), want, rtol=tolerance, atol=tolerance)


def test_no_gradient_autocast_and_tracing_run_conv2d():
    x, weight, b, _ = _inputs(SHAPES[0], 'nhwc', dtype=torch.float32)
    assert pointwise_conv2d(x, weight, b).grad_fn is None
    leaves = [t.requires_grad_() for t in (x, weight, b)]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = pointwise_conv2d(*leaves)
    assert out.dtype == torch.bfloat16 and 'Convolution' in type(out.grad_fn).__name__
    graph = torch.jit.trace(PointwiseConv2d(24, 40), x).graph
    assert 'aten::_convolution' in str(graph) and 'PythonOp' not in str(graph)


def test_module_is_a_drop_in_conv2d():
    """Same parameters, state-dict keys and outputs as ``nn.Conv2d(C, O, 1)``; its forward takes the product
    backward, and a BatchNorm folded into it (``FusingSequential`` in eval mode) runs through it too."""
    torch.manual_seed(0)
    plain, conv = nn.Conv2d(6, 4, 1), PointwiseConv2d(6, 4)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    conv.load_state_dict(plain.state_dict())
    x = torch.randn(2, 6, 5, 5, requires_grad=True)
    out = conv(x)
    torch.testing.assert_close(out, plain(x))
    assert type(out.grad_fn).__name__ == '_PointwiseConv2dBackward'
    assert PointwiseConv2d(6, 4, bias=False).bias is None


@pytest.mark.parametrize('shape', [(4, 6, 3, 1), (4, 6, 1)])
def test_bad_kernel_names_weight(shape):
    x = torch.randn(1, 6, 5, 5)
    with pytest.raises(ValueError, match=r'pointwise_conv2d: weight must be a 1 x 1 kernel \[O, C, 1, 1\]'):
        pointwise_conv2d(x, torch.randn(shape))
    with pytest.raises(ValueError, match='weight must be a 1 x 1 kernel'):
        pointwise_conv2d_backward(torch.randn(1, 4, 5, 5), x, torch.randn(shape), [True, True, False])
