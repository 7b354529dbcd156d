"""Tests of the compiled depthwise convolution (``torch.ops.mmoverlock.depthwise_*`` via
``mmoverlock.ops.depthwise.depthwise_conv2d``) against ``F.conv2d`` in float64.

Every CPU instruction set this CPU runs, both memory formats, float32 and float64, kernel sizes 1 to 19 (OverLoCK's
largest) with the dilations of its DilatedReparamBlocks, channel counts that leave vector tails, maps smaller than
the kernel's span; gradcheck and opcheck; the CUDA kernels' bodies through their CPU driver, and the CUDA kernels
themselves on a GPU (all four dtypes, both layouts); bad inputs.
"""
import pytest
import torch
import torch.nn.functional as F

from mmoverlock.ops.contmix import available_backends
from mmoverlock.ops import depthwise
from mmoverlock.ops.depthwise import depthwise_conv2d, recomputed_branch_sum

HAS_OP = 'cpu' in available_backends() and hasattr(torch.ops.mmoverlock, 'depthwise_forward')
requires_op = pytest.mark.skipif(not HAS_OP, reason='mmoverlock._ext is not built (pip install -e .)')

CPU_CAPABILITY_ENV = 'MMOVERLOCK_CPU_CAPABILITY'
FORMATS = {'nchw': torch.contiguous_format, 'nhwc': torch.channels_last}

# (N, C, H, W, K, dilation)
SHAPES = [
    (2, 5, 9, 11, 3, 1),     # C below one vector
    (1, 37, 13, 10, 5, 1),   # C with a vector and a scalar tail
    (2, 64, 12, 17, 7, 1),
    (1, 16, 23, 20, 19, 1),  # OverLoCK's largest kernel
    (1, 24, 21, 19, 9, 2),
    (2, 19, 16, 18, 3, 7),   # a dilated span (15) near the map size
    (1, 8, 6, 7, 3, 5),      # span 11 larger than the map: border taps only
    (1, 64, 7, 40, 3, 2),    # several whole vectors of channels, a row wider than a block of columns
    (2, 40, 9, 37, 7, 3),    # packed weight gradient: three residues, blocks and their tails, a channel tail
    (1, 3, 4, 5, 1, 1),
]


def _inputs(shape, dtype, layout, seed=0, bias=True):
    n, c, h, w, k, r = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype).contiguous(memory_format=FORMATS[layout])
    weight = torch.randn(c, 1, k, k, generator=gen, dtype=dtype)
    b = torch.randn(c, generator=gen, dtype=dtype) if bias else None
    return x, weight, b, r * (k - 1) // 2, r


def _reference(x, weight, bias, padding, dilation, grad_out):
    """Output and input/weight/bias gradients of F.conv2d in float64."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    out = F.conv2d(leaves[0], leaves[1], leaves[2], 1, padding, dilation, x.shape[1])
    out.backward(grad_out.double())
    return out.detach(), [t.grad if t is not None else None for t in leaves]


def _same_on_1_and_2_threads(call):
    """Whether ``call()`` returns the same bits (a tensor or a tuple of them) on 1 and on 2 threads."""
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = call()
            results.append(out if isinstance(out, (tuple, list)) else (out, ))
    finally:
        torch.set_num_threads(threads)
    return all(torch.equal(a, b) for a, b in zip(*results))


def _close(actual, expected, dtype):
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    scale = expected.abs().max().clamp_min(1.0)
    torch.testing.assert_close(actual.double(), expected, rtol=0, atol=tol * scale.item())


@requires_op
@pytest.mark.parametrize('layout', list(FORMATS))
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('shape', SHAPES, ids=str)
def test_matches_float64_conv_on_every_isa(shape, dtype, layout, cpu_capability):
    """Output and every gradient; and ``depthwise_statistics`` of the same conv (its per-sample, per-channel sums and
    sums of squares, with no output written)."""
    x, weight, bias, p, r = _inputs(shape, dtype, layout)
    sums, squares = torch.ops.mmoverlock.depthwise_statistics(x, weight, bias, p, r)
    x.requires_grad_()
    weight.requires_grad_()
    bias.requires_grad_()
    out = depthwise_conv2d(x, weight, bias, p, r)
    assert out.is_contiguous(memory_format=FORMATS[layout])
    grad_out = torch.randn(out.shape, dtype=dtype).contiguous(memory_format=FORMATS[layout])
    out.backward(grad_out)
    ref, (gx, gw, gb) = _reference(x, weight, bias, p, r, grad_out)
    _close(out, ref, dtype)
    _close(x.grad, gx, dtype)
    _close(weight.grad, gw, dtype)
    _close(bias.grad, gb, dtype)
    assert x.grad.is_contiguous(memory_format=FORMATS[layout])
    assert sums.shape == squares.shape == shape[:2] and sums.dtype == dtype
    _close(sums, ref.sum((2, 3)), dtype)
    _close(squares, ref.square().sum((2, 3)), dtype)


@requires_op
@pytest.mark.parametrize('layout', list(FORMATS))
def test_other_paddings_and_the_op_is_used(layout, monkeypatch):
    """Any padding in [0, r(K-1)] runs the op (F.conv2d patched to fail proves it), with the conv's numbers."""
    x, weight, bias, _, r = _inputs((2, 11, 10, 9, 5, 2), torch.float64, layout)
    expected = {p: F.conv2d(x, weight, bias, 1, p, r, 11) for p in (0, 3, 8)}
    monkeypatch.setattr(F, 'conv2d', lambda *a, **k: pytest.fail('fell back to F.conv2d'))
    for p, ref in expected.items():
        _close(depthwise_conv2d(x, weight, bias, p, r), ref, torch.float64)


@requires_op
@pytest.mark.parametrize('layout', list(FORMATS))
def test_gradcheck(layout):
    x, weight, bias, p, r = _inputs((1, 5, 7, 6, 3, 2), torch.float64, layout)
    inputs = [t.requires_grad_() for t in (x, weight, bias)]
    assert torch.autograd.gradcheck(lambda a, w, b: depthwise_conv2d(a, w, b, p, r), inputs)


@requires_op
@pytest.mark.parametrize('layout', list(FORMATS))
@pytest.mark.parametrize('bias', [True, False])
def test_opcheck(layout, bias):
    x, weight, b, p, r = _inputs((2, 6, 8, 7, 5, 1), torch.float32, layout, bias=bias)
    torch.library.opcheck(torch.ops.mmoverlock.depthwise_forward,
                          (x.requires_grad_(), weight.requires_grad_(), b, p, r))
    grad_out = torch.randn(2, 6, 8, 7).contiguous(memory_format=FORMATS[layout])
    torch.library.opcheck(torch.ops.mmoverlock.depthwise_backward, (grad_out, x.detach(), weight.detach(), p, r,
                                                                    [True, True]))


@requires_op
def test_weight_gradient_does_not_depend_on_threads():
    """The weight gradient is summed in a fixed order: bitwise the same on 1 and 2 threads, both layouts."""
    for layout in FORMATS:
        x, weight, _, p, r = _inputs((3, 32, 20, 21, 7, 1), torch.float32, layout)
        grad_out = torch.randn(3, 32, 20, 21).contiguous(memory_format=FORMATS[layout])
        assert _same_on_1_and_2_threads(
            lambda: torch.ops.mmoverlock.depthwise_backward(grad_out, x, weight, p, r, [True, True]))


@requires_op
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    x, weight, bias, p, r = _inputs((1, 16, 9, 9, 7, 1), dtype, 'nhwc')
    out = depthwise_conv2d(x, weight, bias, p, r)
    assert out.dtype == dtype
    expected = F.conv2d(x.float(), weight.float(), bias.float(), 1, p, r, 16).to(dtype)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@requires_op
def test_autocast_returns_the_autocast_dtype_with_float32_gradients():
    x, weight, bias, p, r = _inputs((1, 8, 9, 9, 5, 1), torch.float32, 'nhwc')
    weight.requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = depthwise_conv2d(x, weight, bias, p, r)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert weight.grad.dtype == torch.float32


@pytest.mark.parametrize('layout', list(FORMATS))
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('shape', [SHAPES[1], SHAPES[5], SHAPES[6], (1, 4, 21, 20, 19, 1)], ids=str)
def test_cuda_bodies_match_float64_conv(shape, dtype, layout, testing_ops):
    """The CUDA kernels' arithmetic, run on the CPU by the test driver, against float64."""
    x, weight, bias, p, r = _inputs(shape, dtype, layout)
    testing = testing_ops
    out = testing.depthwise_bodies_forward(x, weight, bias, p, r)
    grad_out = torch.randn(out.shape, dtype=dtype).contiguous(memory_format=FORMATS[layout])
    grad_x, grad_w = testing.depthwise_bodies_backward(grad_out, x, weight, p, r)
    ref, (gx, gw, _) = _reference(x, weight, bias, p, r, grad_out)
    tol = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    for actual, expected in ((out, ref), (grad_x, gx), (grad_w, gw)):
        assert actual.dtype == dtype
        scale = expected.abs().max().item()
        torch.testing.assert_close(actual.double(), expected, rtol=0, atol=tol * scale)
    assert out.is_contiguous(memory_format=FORMATS[layout])


HAS_CUDA = 'cuda' in available_backends() and torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason='needs a CUDA GPU and mmoverlock._ext built with CUDA '
                                   '(FORCE_CUDA=1)')
CUDA_TOLERANCES = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@requires_cuda
@pytest.mark.parametrize('layout', list(FORMATS))
@pytest.mark.parametrize('dtype', list(CUDA_TOLERANCES))
@pytest.mark.parametrize('shape', SHAPES, ids=str)
def test_cuda_kernels_match_float64_conv(shape, dtype, layout, monkeypatch):
    """The CUDA kernels through ``depthwise_conv2d`` and autograd (F.conv2d patched to fail), against float64."""
    x, weight, bias, p, r = _inputs(shape, dtype, layout)
    leaves = [t.cuda().requires_grad_() for t in (x, weight, bias)]
    conv2d = F.conv2d
    monkeypatch.setattr(F, 'conv2d', lambda *a, **k: pytest.fail('fell back to F.conv2d'))
    out = depthwise_conv2d(*leaves, p, r)
    assert out.dtype == dtype and out.is_contiguous(memory_format=FORMATS[layout])
    grad_out = torch.randn(out.shape, dtype=dtype).contiguous(memory_format=FORMATS[layout])
    out.backward(grad_out.cuda())
    monkeypatch.setattr(F, 'conv2d', conv2d)
    ref, expected_grads = _reference(x, weight, bias, p, r, grad_out)
    for actual, expected in zip([out] + [t.grad for t in leaves], [ref] + expected_grads):
        assert actual.dtype == dtype
        scale = expected.abs().max().clamp_min(1.0).item()
        torch.testing.assert_close(actual.double().cpu(), expected, rtol=0, atol=CUDA_TOLERANCES[dtype] * scale)
    assert leaves[0].grad.is_contiguous(memory_format=FORMATS[layout])


@requires_cuda
@pytest.mark.parametrize('layout', list(FORMATS))
def test_cuda_opcheck_and_run_to_run_identical_weight_gradient(layout):
    """opcheck on CUDA tensors; the weight gradient's fixed summation tree gives the same bits on every run."""
    x, weight, b, p, r = _inputs((2, 24, 33, 31, 7, 1), torch.float32, layout)
    x, weight, b = x.cuda(), weight.cuda(), b.cuda()
    torch.library.opcheck(torch.ops.mmoverlock.depthwise_forward, (x.requires_grad_(), weight.requires_grad_(), b,
                                                                   p, r))
    grad_out = torch.randn(2, 24, 33, 31, device='cuda').contiguous(memory_format=FORMATS[layout])
    args = (grad_out, x.detach(), weight.detach(), p, r, [True, True])
    torch.library.opcheck(torch.ops.mmoverlock.depthwise_backward, args)
    first = torch.ops.mmoverlock.depthwise_backward(*args)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(first, torch.ops.mmoverlock.depthwise_backward(*args)))


@requires_cuda
def test_cuda_inputs_on_another_device_raise_naming_the_argument():
    x, weight = torch.randn(1, 4, 8, 8, device='cuda'), torch.randn(4, 1, 3, 3)
    with pytest.raises(RuntimeError, match='weight is on cpu but input is on cuda'):
        torch.ops.mmoverlock.depthwise_forward(x, weight, None, 1, 1)
    with pytest.raises(RuntimeError, match='bias must have the dtype and device of input'):
        torch.ops.mmoverlock.depthwise_forward(x, weight.cuda(), torch.zeros(4), 1, 1)


@requires_cuda
def test_cuda_autocast_returns_what_conv2d_returns():
    """Under CUDA autocast ``depthwise_conv2d`` gives F.conv2d's autocast result (float16), float32 weight grads."""
    x, weight, bias, p, r = _inputs((2, 16, 12, 12, 7, 1), torch.float32, 'nhwc')
    x, weight = x.cuda(), weight.cuda().requires_grad_()
    with torch.autocast('cuda', dtype=torch.float16):
        out = depthwise_conv2d(x, weight, bias.cuda(), p, r)
        expected = F.conv2d(x, weight, bias.cuda(), 1, p, r, 16)
    assert out.dtype == expected.dtype
    torch.testing.assert_close(out, expected, rtol=2e-3, atol=2e-3)
    out.float().sum().backward()
    assert weight.grad.dtype == torch.float32


@requires_op
@pytest.mark.parametrize('args, message', [
    (dict(x=(1, 4, 8, 8), w=(4, 1, 4, 4)), 'K odd'),
    (dict(x=(1, 4, 8, 8), w=(3, 1, 3, 3)), 'weight must be \\[C, 1, K, K\\] with C = 4'),
    (dict(x=(4, 8, 8), w=(4, 1, 3, 3)), 'input must be 4-D'),
    (dict(x=(1, 4, 8, 8), w=(4, 1, 3, 3), padding=3), 'padding must be in \\[0, dilation \\* \\(K - 1\\)\\]'),
    (dict(x=(1, 4, 8, 8), w=(4, 1, 3, 3), dilation=0), 'dilation must be at least 1'),
    (dict(x=(1, 4, 2, 8), w=(4, 1, 5, 5), padding=0), 'the output would be empty'),
    (dict(x=(1, 4, 8, 8), w=(4, 1, 3, 3), bias=(3, )), 'bias must be \\[C\\]'),
    (dict(x=(1, 4, 8, 8), w=(4, 1, 3, 3), wdtype=torch.float64), 'must have the dtype of input'),
])
def test_bad_inputs_raise_naming_the_argument(args, message):
    x = torch.randn(*args['x'])
    weight = torch.randn(*args['w'], dtype=args.get('wdtype', torch.float32))
    bias = torch.randn(*args['bias']) if 'bias' in args else None
    with pytest.raises(RuntimeError, match=message):
        torch.ops.mmoverlock.depthwise_forward(x, weight, bias, args.get('padding', 1), args.get('dilation', 1))


@requires_op
def test_bad_grad_out_raises():
    x, weight = torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3)
    with pytest.raises(RuntimeError, match='grad_out must be'):
        torch.ops.mmoverlock.depthwise_backward(torch.randn(1, 4, 7, 8), x, weight, 1, 1, [True, True])


@requires_op
def test_unsupported_environment_capability_names_the_variable(monkeypatch):
    monkeypatch.setenv(CPU_CAPABILITY_ENV, 'sse9')
    with pytest.raises(RuntimeError, match=CPU_CAPABILITY_ENV):
        torch.ops.mmoverlock.depthwise_forward(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3), None, 1, 1)


# The large kernel and the dilated branches of DilatedReparamBlocks (UniRepLKNet's table), by large kernel size.
BRANCHES = {17: ((17, 1), (5, 1), (7, 1), (9, 2), (3, 4), (3, 5), (3, 7)), 7: ((7, 1), (5, 1), (3, 1), (3, 2), (3, 3))}


@requires_op
@pytest.mark.parametrize('layout', list(FORMATS))
@pytest.mark.parametrize('size', sorted(BRANCHES))
def test_folded_branch_sum_matches_batch_norm_of_each_branch(size, layout):
    """The one-conv training form of a DilatedReparamBlock (statistics, folded kernel, analytic BatchNorm backward)
    against F.conv2d + F.batch_norm per branch, in float64: output, statistics and every gradient."""
    branches = BRANCHES[size]
    gen = torch.Generator().manual_seed(size)
    c = 6
    x = torch.randn(2, c, 19, 23, generator=gen, dtype=torch.float64).contiguous(memory_format=FORMATS[layout])
    kernels = [torch.randn(c, 1, k, k, generator=gen, dtype=torch.float64) for k, _ in branches]
    gammas = [torch.rand(c, generator=gen, dtype=torch.float64) + 0.5 for _ in branches]
    betas = [torch.randn(c, generator=gen, dtype=torch.float64) for _ in branches]
    dilations = [r for _, r in branches]
    eps = [1e-5] * len(branches)
    assert depthwise._folds(x, kernels, dilations, gammas)  # the folded form runs, not the recomputing fallback

    def leaves():
        return [t.clone().requires_grad_() for t in [x, *kernels, *gammas, *betas]]

    n = len(branches)
    ours_in, ref_in = leaves(), leaves()
    out, stats = recomputed_branch_sum(ours_in[0], ours_in[1:1 + n], dilations, ours_in[1 + n:1 + 2 * n],
                                       ours_in[1 + 2 * n:], eps)
    convs = [F.conv2d(ref_in[0], ref_in[1 + i], None, 1, r * (k - 1) // 2, r, c) for i, (k, r) in enumerate(branches)]
    ref = sum(F.batch_norm(y, None, None, ref_in[1 + n + i], ref_in[1 + 2 * n + i], True, 0., 1e-5)
              for i, y in enumerate(convs))
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad(out, ours_in, grad_out)
    expected = torch.autograd.grad(ref, ref_in, grad_out)
    _close(out, ref.detach(), torch.float64)
    for actual, want in zip(ours, expected):
        _close(actual, want, torch.float64)
    for i, y in enumerate(convs):
        _close(stats[i, 0], y.detach().mean((0, 2, 3)), torch.float64)
        _close(stats[i, 1], y.detach().var((0, 2, 3)), torch.float64)


@requires_op
@pytest.mark.parametrize('layout', list(FORMATS))
def test_folded_branch_statistics_keep_float32_precision(layout):
    """float32 maps: each branch's mean and variance from the op's sums (no branch map) within float32 rounding of
    float64's two-pass statistics, for channels centred and far from zero (the sums are of y minus an estimate of
    its mean; without that shift the variance here is off by ~1e-5)."""
    branches = BRANCHES[7]
    gen = torch.Generator().manual_seed(3)
    c = 8
    for offset in (0.0, 100.0):
        x = (torch.randn(2, c, 24, 21, generator=gen) + offset).contiguous(memory_format=FORMATS[layout])
        kernels = [torch.randn(c, 1, k, k, generator=gen) for k, _ in branches]
        ones, zeros = [torch.ones(c)] * len(branches), [torch.zeros(c)] * len(branches)
        _, stats = recomputed_branch_sum(x, kernels, [r for _, r in branches], ones, zeros, [1e-5] * len(branches))
        for i, (k, r) in enumerate(branches):
            y = F.conv2d(x.double(), kernels[i].double(), None, 1, r * (k - 1) // 2, r, c)
            torch.testing.assert_close(stats[i, 0].double(), y.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(stats[i, 1].double(), y.var((0, 2, 3)), rtol=2e-6, atol=0)


@requires_op
def test_statistics_opcheck():
    x, weight, b, p, r = _inputs((2, 16, 8, 7, 3, 2), torch.float32, 'nhwc')
    torch.library.opcheck(torch.ops.mmoverlock.depthwise_statistics, (x, weight, b, p, r))


# ---- the fused inference forward: a GELU prologue and a sum-of-squares epilogue ---------------------------------

# (gelu_input, square_sums, gelu_grad_at given, product_with given)
FUSED_MODES = {'gelu': (True, False, False, False), 'sums': (False, True, False, False),
               'gelu+sums': (True, True, False, False), 'gelu-grad': (False, False, True, False),
               'gelu-grad+sums': (False, True, True, False), 'product': (False, True, False, True),
               'gelu+product': (True, True, False, True)}


def _fused_reference(x, weight, bias, padding, dilation, gelu_input, gelu_grad_at=None, product_with=None):
    """The conv of (the GELU of) x in float64, times gelu' at ``gelu_grad_at`` if given, and its per-sample,
    per-channel sums of squares (of its products with ``product_with`` if given)."""
    u = x.double()
    u = F.gelu(u) if gelu_input else u
    out = F.conv2d(u, weight.double(), None if bias is None else bias.double(), 1, padding, dilation, x.shape[1])
    if gelu_grad_at is not None:
        out = torch.ops.aten.gelu_backward(out, gelu_grad_at.double())
    return out, (out * (out if product_with is None else product_with.double())).sum((2, 3))


@requires_op
@pytest.mark.parametrize('layout', list(FORMATS))
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('mode', list(FUSED_MODES))
@pytest.mark.parametrize('shape', SHAPES, ids=str)
def test_fused_forward_matches_float64_composition_on_every_isa(shape, mode, dtype, layout, cpu_capability):
    """``depthwise_forward_fused``: direct (GELU through the per-task row ring) and packed (GELU in the packing)
    channels-last paths and the NCHW one, channel tails, dilations, maps smaller than the span; the GELU-gradient
    epilogue and the product epilogue at maps in the other layout (made contiguous in the output's)."""
    gelu_input, square_sums, with_grad_at, with_product = FUSED_MODES[mode]
    x, weight, bias, p, r = _inputs(shape, dtype, layout)
    other = 'nchw' if layout == 'nhwc' else 'nhwc'
    ho, wo = depthwise._output_size(x, weight, p, r)
    at = product = None
    if with_grad_at:
        at = (2 * torch.randn(shape[0], shape[1], ho, wo, dtype=dtype)).contiguous(memory_format=FORMATS[other])
    if with_product:
        product = torch.randn(shape[0], shape[1], ho, wo, dtype=dtype).contiguous(memory_format=FORMATS[other])
    out, sums = torch.ops.mmoverlock.depthwise_forward_fused(x, weight, bias, p, r, gelu_input, square_sums, at,
                                                             product)
    ref, ref_sums = _fused_reference(x, weight, bias, p, r, gelu_input, at, product)
    assert out.dtype == dtype and out.is_contiguous(memory_format=FORMATS[layout])
    _close(out, ref, dtype)
    if square_sums:
        assert sums.shape == (shape[0], shape[1]) and sums.dtype == dtype
        _close(sums, ref_sums, dtype)
    else:
        assert sums.numel() == 0


@requires_op
@pytest.mark.parametrize('layout', list(FORMATS))
def test_fused_forward_does_not_depend_on_threads(layout):
    """Each task's GELU ring starts over at its first row and the row sums are added in one fixed reduction: the
    same bits on 1 and 2 threads, for a split inside an image and across images."""
    x, weight, bias, p, r = _inputs((3, 32, 13, 12, 3, 1), torch.float32, layout)
    assert _same_on_1_and_2_threads(lambda: torch.ops.mmoverlock.depthwise_forward_fused(x, weight, bias, p, r, True,
                                                                                         True))


def _op_gelu(z):
    """The op's float GELU alone: its GELU input through a 1 x 1 identity kernel."""
    return torch.ops.mmoverlock.depthwise_forward_fused(z, z.new_ones(z.shape[1], 1, 1, 1), None, 0, 1, True, False)[0]


@requires_op
@pytest.mark.parametrize('layout', list(FORMATS))
def test_float_gelu_and_its_gradient_are_accurate_on_every_isa(layout, cpu_capability):
    """The op's float GELU (the GELU input) and GELU gradient (the epilogue), alone through a 1 x 1 identity
    kernel, on a dense grid over [-12, 12] (both sides of the rational fits' clamps, vector and scalar lanes): within
    2e-6 absolute and 5e-7 relative for x > 0 of float64 (the fits measure 8.6e-7 / 1.8e-7 with FMA, 1.2e-6 /
    2.3e-7 without), the gradient within 6e-7 (3.3e-7 measured); NaN, +-1e30, 0 and +-5.6 as ATen's float64 GELU,
    and at +-inf GELU as ATen's float64 GELU (+inf, NaN) and its gradient the limit 1 or 0 in every lane (ATen's
    gelu_backward gives NaN there). The reference is float64: ATen's vectorised float32 GELU gives NaN at +inf on
    some CPUs (an Intel Xeon with AVX-512 and AMX, under both its AVX-512 and AVX2 kernels) and +inf on others."""
    x = torch.linspace(-12, 12, 48000).reshape(1, 8, 100, 60).contiguous(memory_format=FORMATS[layout])
    one = torch.ones(8, 1, 1, 1)
    gelu = _op_gelu(x).double()
    grad = torch.ops.mmoverlock.depthwise_forward_fused(torch.ones_like(x), one, None, 0, 1, False, False, x)[0]
    xd = x.double()
    expected = F.gelu(xd)
    error = (gelu - expected).abs()
    assert error.max() <= 2e-6
    assert (error / expected.abs())[x > 0].max() <= 5e-7
    assert (grad.double() - torch.ops.aten.gelu_backward(torch.ones_like(xd), xd)).abs().max() <= 6e-7
    special = torch.tensor([float('inf'), -float('inf'), float('nan'), 0.0, 1e30, -1e30, 5.6, -5.6]).reshape(1, 8, 1, 1)
    special = special.expand(1, 8, 2, 9).contiguous(memory_format=FORMATS[layout])  # vector lanes in both layouts
    torch.testing.assert_close(_op_gelu(special), F.gelu(special.double()).float(), rtol=0, atol=1e-7,
                               equal_nan=True)
    expected = torch.ops.aten.gelu_backward(torch.ones_like(special), special)
    expected = torch.where(special.isinf(), (special > 0).float(), expected)
    grad = torch.ops.mmoverlock.depthwise_forward_fused(torch.ones_like(special), one, None, 0, 1, False, False,
                                                        special)[0]
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-6, equal_nan=True)


@requires_op
@pytest.mark.parametrize('layout', list(FORMATS))
def test_fused_forward_opcheck(layout):
    x, weight, b, p, r = _inputs((2, 16, 8, 7, 3, 1), torch.float32, layout)
    for gelu_input, square_sums, with_grad_at, with_product in FUSED_MODES.values():
        at = torch.randn_like(x) if with_grad_at else None
        product = torch.randn_like(x) if with_product else None
        torch.library.opcheck(torch.ops.mmoverlock.depthwise_forward_fused,
                              (x, weight, b, p, r, gelu_input, square_sums, at, product))


# Direct (GELU ring) and packed (GELU in the packing) channels-last forms over several images, rows split into
# chunks, dilations, a channel tail; the NCHW form through its padded planes.
GRAD_WEIGHT_SHAPES = SHAPES + [(3, 32, 20, 21, 3, 1), (2, 16, 9, 12, 5, 2), (2, 24, 30, 9, 3, 4)]


@requires_op
@pytest.mark.parametrize('layout', list(FORMATS))
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('gelu_input', [True, False], ids=['gelu', 'plain'])
@pytest.mark.parametrize('shape', GRAD_WEIGHT_SHAPES, ids=str)
def test_fused_weight_gradient_matches_float64_on_every_isa(shape, gelu_input, dtype, layout, cpu_capability):
    """``depthwise_grad_weight_fused``: the weight gradient of the conv of gelu(x) from x (no GELU map), against
    F.conv2d's in float64 on F.gelu(x); without the GELU, bitwise depthwise_backward's weight gradient."""
    x, weight, _, p, r = _inputs(shape, dtype, layout)
    ho, wo = depthwise._output_size(x, weight, p, r)
    grad_out = torch.randn(shape[0], shape[1], ho, wo, dtype=dtype).contiguous(memory_format=FORMATS[layout])
    grad_w = torch.ops.mmoverlock.depthwise_grad_weight_fused(grad_out, x, weight, p, r, gelu_input)
    u = F.gelu(x.double()) if gelu_input else x
    _, (_, ref, _) = _reference(u, weight, None, p, r, grad_out)
    assert grad_w.shape == weight.shape and grad_w.dtype == dtype
    _close(grad_w, ref, dtype)
    if not gelu_input:
        plain = torch.ops.mmoverlock.depthwise_backward(grad_out, x, weight, p, r, [False, True])[1]
        assert torch.equal(grad_w, plain)


@requires_op
@pytest.mark.parametrize('layout', list(FORMATS))
@pytest.mark.parametrize('padding', [0, 1, 4])
def test_fused_weight_gradient_with_other_paddings(padding, layout, cpu_capability):
    """Outputs smaller (no padding) or larger (padding 4 > the half span 2) than the map: the GELU ring's bounds."""
    x, weight, _, _, r = _inputs((2, 32, 11, 13, 5, 1), torch.float64, layout)
    ho, wo = depthwise._output_size(x, weight, padding, r)
    grad_out = torch.randn(2, 32, ho, wo, dtype=torch.float64).contiguous(memory_format=FORMATS[layout])
    grad_w = torch.ops.mmoverlock.depthwise_grad_weight_fused(grad_out, x, weight, padding, r, True)
    _, (_, ref, _) = _reference(F.gelu(x), weight, None, padding, r, grad_out)
    _close(grad_w, ref, torch.float64)


@requires_op
@pytest.mark.parametrize('layout', list(FORMATS))
def test_fused_weight_gradient_does_not_depend_on_threads_and_passes_opcheck(layout):
    """Each chunk of rows starts its own GELU ring: the same bits on 1 and 2 threads."""
    x, weight, _, p, r = _inputs((3, 32, 20, 21, 3, 1), torch.float32, layout)
    grad_out = torch.randn(3, 32, 20, 21).contiguous(memory_format=FORMATS[layout])
    assert _same_on_1_and_2_threads(
        lambda: torch.ops.mmoverlock.depthwise_grad_weight_fused(grad_out, x, weight, p, r, True))
    torch.library.opcheck(torch.ops.mmoverlock.depthwise_grad_weight_fused, (grad_out, x, weight, p, r, True))


@requires_op
def test_fused_forward_bad_inputs_raise_naming_the_argument():
    with pytest.raises(RuntimeError, match='weight must be \\[C, 1, K, K\\] with C = 4'):
        torch.ops.mmoverlock.depthwise_forward_fused(torch.randn(1, 4, 8, 8), torch.randn(3, 1, 3, 3), None, 1, 1,
                                                     True, True)
    with pytest.raises(RuntimeError, match="gelu_grad_at must be the output's shape \\[1, 4, 8, 8\\]"):
        torch.ops.mmoverlock.depthwise_forward_fused(torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3), None, 1, 1,
                                                     False, False, torch.randn(1, 4, 6, 6))
    with pytest.raises(RuntimeError, match="product_with must be the output's shape \\[1, 4, 8, 8\\], dtype"):
        torch.ops.mmoverlock.depthwise_forward_fused(torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3), None, 1, 1,
                                                     False, True, None, torch.randn(1, 4, 8, 8).double())
    with pytest.raises(RuntimeError, match='pass square_sums=True with it'):
        torch.ops.mmoverlock.depthwise_forward_fused(torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3), None, 1, 1,
                                                     False, False, None, torch.randn(1, 4, 8, 8))


@pytest.mark.parametrize('layout', list(FORMATS))
def test_fused_depthwise_conv2d_is_the_composition_with_or_without_a_gradient(layout, monkeypatch):
    """``fused_depthwise_conv2d`` (GELU, residual, sums): the op without a gradient (F.gelu patched to fail where
    the op runs proves it), the differentiable composition with one, the composition for the tanh GELU."""
    x, weight, bias, p, _ = _inputs((2, 16, 9, 10, 3, 1), torch.float64, layout)
    u = F.gelu(x)
    ref = u + F.conv2d(u, weight, bias, 1, p, 1, 16)
    ref_sums = ref.square().sum((2, 3))
    with torch.no_grad():
        with monkeypatch.context() as m:
            if HAS_OP:
                m.setattr(F, 'gelu', lambda *a, **k: pytest.fail('composed instead of the fused op'))
            out, sums = depthwise.fused_depthwise_conv2d(x, weight, bias, p, gelu='none', residual=True,
                                                         square_sums=True)
    _close(out, ref, torch.float64)
    _close(sums, ref_sums, torch.float64)
    leaf = x.clone().requires_grad_()
    out, sums = depthwise.fused_depthwise_conv2d(leaf, weight, bias, p, gelu='none', residual=True, square_sums=True)
    sums.sum().backward()
    xg = x.detach().clone().requires_grad_()
    ug = F.gelu(xg)
    (ug + F.conv2d(ug, weight, bias, 1, p, 1, 16)).square().sum().backward()
    _close(leaf.grad, xg.grad, torch.float64)
    with torch.no_grad():
        out, none = depthwise.fused_depthwise_conv2d(x, weight, bias, p, gelu='tanh')
    assert none is None
    _close(out, F.conv2d(F.gelu(x, approximate='tanh'), weight, bias, 1, p, 1, 16), torch.float64)
