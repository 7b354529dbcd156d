"""Tests of the ContMix core (``mmoverlock.ops.contmix_aggregate``) against a direct-gather float64 reference.

Every built backend is compared with the reference on shapes that hit the window clamping (H = K, W = K, H > W,
W > H), odd channel counts, single groups/batches and K in {1, 3, 5, 7, 13}; gradients of all three inputs too.
CUDA variants run only where a GPU and a CUDA build of ``mmoverlock._ext`` are present.
"""
import pytest
import torch

from _helpers.contmix_reference import reference
from mmoverlock.ops import available_backends, contmix_aggregate
from mmoverlock.ops import contmix as contmix_module
from mmoverlock.ops import contmix_torch
from mmoverlock.testing.contmix_baselines import unfold_contmix, unfused_contmix

HAS_EXT = 'cpu' in available_backends()
HAS_CUDA = torch.cuda.is_available() and 'cuda' in available_backends()
requires_ext = pytest.mark.skipif(not HAS_EXT, reason='mmoverlock._ext is not built (pip install -e .)')
requires_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason='needs a CUDA GPU and mmoverlock._ext built with CUDA (FORCE_CUDA=1)')

# (device, backend) pairs: each compiled backend on its device, the torch fallback and the unfused formulation on
# both devices.
DEVICE_BACKENDS = [
    pytest.param('cpu', 'cpu', marks=requires_ext, id='cpu-cpu'),
    pytest.param('cpu', 'torch', id='cpu-torch'),
    pytest.param('cuda', 'cuda', marks=requires_cuda, id='cuda-cuda'),
    pytest.param('cuda', 'torch', marks=requires_cuda, id='cuda-torch'),
    # The authors' formulation (bias and softmax in torch, then the aggregation on the automatic backend).
    pytest.param('cpu', 'unfused', id='cpu-unfused'),
    pytest.param('cuda', 'unfused', marks=requires_cuda, id='cuda-unfused'),
]

# (B, G, H, W, C, K, non-contiguous inputs)
SHAPES = [
    (2, 3, 9, 11, 5, 3, False),  # W > H, C not a multiple of 4
    (1, 2, 7, 7, 3, 7, True),  # H = W = K
    (2, 2, 5, 12, 6, 5, True),  # H = K < W
    (1, 1, 14, 7, 1, 7, False),  # W = K < H, C = 1, G = 1, B = 1
    (2, 2, 6, 8, 9, 1, True),  # K = 1
    (1, 2, 13, 17, 7, 13, False),  # K = 13 = H
    (1, 1, 16, 15, 12, 13, True),  # K = 13 < H, W; C = 12 (not a multiple of 8)
]


def make_inputs(B, G, H, W, C, K, *, rpb=True, noncontiguous=False, dtype=torch.float64, device='cpu', seed=0):
    """Random weights/value/rpb that require grad; non-contiguous views when asked (as the backbone passes)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    if noncontiguous:
        weights = rand(B, G, K * K, H, W).permute(0, 1, 3, 4, 2)
        value = rand(B, C, G, H, W).permute(0, 2, 3, 4, 1)
    else:
        weights, value = rand(B, G, H, W, K * K), rand(B, G, H, W, C)
    bias = rand(G, 2 * K - 1, 2 * K - 1) if rpb else None
    return [t.requires_grad_() if t is not None else None for t in (weights, value, bias)]


def grads(out, inputs, grad_out):
    """Gradients of <out, grad_out> w.r.t. the inputs that are given (None for rpb=None)."""
    present = [t for t in inputs if t is not None]
    got = iter(torch.autograd.grad(out, present, grad_out))
    return [next(got) if t is not None else None for t in inputs]


def assert_close_all(actual, expected, **tol):
    for name, a, e in zip(('out', 'grad_weights', 'grad_value', 'grad_rpb'), actual, expected):
        if e is None:
            assert a is None, name
        else:
            torch.testing.assert_close(a.double(), e.double(), msg=lambda m, n=name: f'{n}: {m}', **tol)


# --------------------------------------------------------------------------------------------------- correctness
@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS)
@pytest.mark.parametrize('use_rpb', [False, True], ids=['no_rpb', 'rpb'])
@pytest.mark.parametrize('softmax', [False, True], ids=['raw', 'softmax'])
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'B{}G{}H{}W{}C{}K{}{}'.format(*s[:6], '-nc' if s[6] else ''))
def test_matches_reference_float64(shape, softmax, use_rpb, device, backend):
    *dims, noncontiguous = shape
    K = dims[-1]
    inputs = make_inputs(*dims, rpb=use_rpb, noncontiguous=noncontiguous, device=device)
    weights, value, rpb = inputs
    out = contmix_aggregate(weights, value, K, rpb=rpb, softmax=softmax, backend=backend)
    expected = reference(weights, value, K, rpb=rpb, softmax=softmax)
    assert out.shape == value.shape and out.dtype == torch.float64 and out.is_contiguous()
    grad_out = torch.randn_like(expected)
    actual = [out] + grads(out, inputs, grad_out)
    wanted = [expected] + grads(expected, inputs, grad_out)
    assert_close_all(actual, wanted, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS)
@pytest.mark.parametrize('softmax', [False, True], ids=['raw', 'softmax'])
def test_gradcheck(softmax, device, backend):
    weights, value, rpb = make_inputs(1, 2, 4, 5, 3, 3, noncontiguous=True, device=device)
    # On CUDA the bias gradient is summed with atomics (outside deterministic mode): two backwards may differ in
    # the last bits, which gradcheck's reentrancy check tolerates only with nondet_tol.
    assert torch.autograd.gradcheck(
        lambda w, v, b: contmix_aggregate(w, v, 3, rpb=b, softmax=softmax, backend=backend), (weights, value, rpb),
        fast_mode=True, nondet_tol=1e-12 if device == 'cuda' else 0.0)
    # Without the bias the op is NATTEN's na2d_av.
    assert torch.autograd.gradcheck(lambda w, v: contmix_aggregate(w, v, 3, backend=backend), (weights, value),
                                    fast_mode=True)


# Every kernel size the backbone uses (smk_size 5; stage kernels 17, 15, 13, 7; 3 in small arch dicts) on maps where
# the border bands of the fallback meet or are empty: H = W = K, H = K < W, W = K < H, odd non-square sizes, and the
# sizes ContMixBlock resizes small maps to (13x19 from 4x6 at K=13, 18x13 from 14x10, 7x10 from 2x3 at K=7).
MODEL_CASES = [(K, H, W) for K in (3, 5, 7, 13, 15, 17)
               for H, W in ((K, K), (K, K + 6), (2 * K + 1, K), (K + 2, K + 1))] + [(13, 13, 19), (13, 18, 13),
                                                                                   (7, 7, 10)]


@pytest.mark.parametrize('backend', [pytest.param('cpu', marks=requires_ext), 'torch'])
@pytest.mark.parametrize('case', MODEL_CASES, ids=lambda c: 'K{}H{}W{}'.format(*c))
def test_model_kernel_sizes_float64(case, backend):
    K, H, W = case
    inputs = make_inputs(2, 2, H, W, 3, K, noncontiguous=True, seed=K + H + W)
    out = contmix_aggregate(inputs[0], inputs[1], K, rpb=inputs[2], softmax=True, backend=backend)
    expected = reference(inputs[0], inputs[1], K, rpb=inputs[2], softmax=True)
    grad_out = torch.randn_like(expected)
    actual = [out] + grads(out, inputs, grad_out)
    wanted = [expected] + grads(expected, inputs, grad_out)
    assert_close_all(actual, wanted, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize('use_rpb', [False, True], ids=['no_rpb', 'rpb'])
@pytest.mark.parametrize('softmax', [False, True], ids=['raw', 'softmax'])
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'B{}G{}H{}W{}C{}K{}{}'.format(*s[:6], '-nc' if s[6] else ''))
def test_traceable_forward_matches_reference(shape, softmax, use_rpb):
    # The compact formulation that torch.export / ONNX / jit.trace record instead of the autograd Function.
    *dims, noncontiguous = shape
    K = dims[-1]
    weights, value, rpb = make_inputs(*dims, rpb=use_rpb, noncontiguous=noncontiguous)
    with torch.no_grad():
        out = contmix_torch.contmix_torch_traceable(weights, value, rpb, K, softmax)
        expected = reference(weights, value, K, rpb=rpb, softmax=softmax)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-11)


def test_torch_backend_exports_as_plain_aten_ops():
    K = 5

    class Mix(torch.nn.Module):

        def __init__(self):
            super().__init__()
            self.rpb = torch.nn.Parameter(torch.randn(2, 2 * K - 1, 2 * K - 1, dtype=torch.float64))

        def forward(self, weights, value):
            return contmix_aggregate(weights, value, K, rpb=self.rpb, softmax=True, backend='torch')

    model = Mix()
    weights, value, _ = make_inputs(1, 2, 9, 6, 4, K, rpb=False)
    program = torch.export.export(model, (weights.detach(), value.detach()))
    targets = {str(node.target) for node in program.graph.nodes if node.op == 'call_function'}
    assert all(t.startswith(('aten.', '<built-in')) for t in targets), sorted(targets)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(weights, value),
                                   reference(weights, value, K, rpb=model.rpb, softmax=True), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 3e-6), (torch.float16, 3e-3), (torch.bfloat16, 3e-2)])
def test_torch_backend_low_precision_accumulates_in_float32(dtype, tol):
    # tol: about 4x the largest error |actual - float64| / (1 + |float64|) measured over 5 seeds of this case
    # (float32 6.6e-7, float16 6.5e-4, bfloat16 6.9e-3, all in the rpb gradient): what rounding the inputs, the
    # output gradient and the results to the dtype costs when everything in between is float32.
    inputs = make_inputs(2, 2, 11, 9, 6, 7, dtype=dtype, noncontiguous=True)
    out = contmix_aggregate(*inputs[:2], 7, rpb=inputs[2], softmax=True, backend='torch')
    assert out.dtype == dtype
    expected = reference(*inputs[:2], 7, rpb=inputs[2], softmax=True)
    grad_out = torch.randn_like(expected)
    actual = [out] + grads(out, inputs, grad_out.to(dtype))
    assert [t.dtype for t in actual[1:]] == [dtype] * 3
    wanted = [expected] + grads(expected, inputs, grad_out)
    assert_close_all(actual, wanted, rtol=tol, atol=tol)


@pytest.mark.parametrize('backend', ['torch'] + [b for b in available_backends() if b == 'cpu'])
def test_half_inputs_take_a_float32_bias(backend):
    """rpb may have the accumulation dtype of half inputs (what autocast passes for a float32 parameter): it is used
    as it is and its gradient comes back in float32, like the float64 definition's; any other dtype is refused."""
    weights, value, rpb = make_inputs(1, 2, 9, 9, 4, 3, dtype=torch.float16)
    rpb32 = rpb.detach().float().requires_grad_()
    out = contmix_aggregate(weights, value, 3, rpb=rpb32, softmax=True, backend=backend)
    assert out.dtype == torch.float16
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, rpb32, grad_out.to(out.dtype))
    expected = reference(weights, value, 3, rpb=rpb32, softmax=True)
    (wanted,) = torch.autograd.grad(expected, rpb32, grad_out)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad.double(), wanted.double(), rtol=1e-2, atol=1e-2)
    with pytest.raises(TypeError, match=r'rpb has dtype torch.float64 but value has torch.float16.*or torch.float32'):
        contmix_aggregate(weights, value, 3, rpb=rpb.detach().double(), backend=backend)


@requires_ext
@pytest.mark.parametrize('softmax', [False, True], ids=['raw', 'softmax'])
def test_cpu_matches_torch_float32(softmax):
    inputs = make_inputs(2, 4, 20, 24, 16, 7, dtype=torch.float32, noncontiguous=True)
    grad_out = torch.randn(2, 4, 20, 24, 16, generator=torch.Generator().manual_seed(1))
    results = {}
    for backend in ('cpu', 'torch'):
        out = contmix_aggregate(*inputs[:2], 7, rpb=inputs[2], softmax=softmax, backend=backend)
        assert out.dtype == torch.float32
        results[backend] = [out] + grads(out, inputs, grad_out)
    assert_close_all(results['cpu'], results['torch'], rtol=1e-4, atol=1e-4)


@requires_ext
def test_cpu_is_deterministic_across_thread_counts():
    inputs = make_inputs(1, 2, 30, 20, 8, 5, dtype=torch.float32)
    grad_out = torch.randn(1, 2, 30, 20, 8)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            out = contmix_aggregate(*inputs[:2], 5, rpb=inputs[2], softmax=True, backend='cpu')
            results.append([out] + grads(out, inputs, grad_out))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize('method', [
    pytest.param('unfused-cpu', marks=requires_ext),
    'unfused-torch',
    'unfold',
])
def test_baselines_match_reference(method):
    """The formulations the benchmark compares with compute the op (bias + softmax), gradients included."""
    inputs = make_inputs(2, 2, 9, 11, 5, 5)
    weights, value, rpb = inputs
    if method == 'unfold':
        out = unfold_contmix(weights, value, rpb, 5)
    else:
        out = unfused_contmix(weights, value, rpb, 5, backend=method.split('-')[1])
    expected = reference(weights, value, 5, rpb=rpb, softmax=True)
    grad_out = torch.randn_like(expected)
    assert_close_all([out] + grads(out, inputs, grad_out), [expected] + grads(expected, inputs, grad_out),
                     rtol=1e-9, atol=1e-11)


# ------------------------------------------------------------------------------- CPU instruction-set variants
CPU_CAPABILITY_ENV = 'MMOVERLOCK_CPU_CAPABILITY'


@requires_ext
@pytest.mark.parametrize('use_rpb,softmax', [(False, False), (True, True)], ids=['raw', 'rpb-softmax'])
@pytest.mark.parametrize('shape', [
    (2, 3, 9, 11, 5, 3),  # channels below one vector
    (1, 2, 16, 15, 33, 13),  # whole vectors of every width plus a tail, K = 13
    (1, 1, 7, 21, 16, 7),  # H = K
    (2, 2, 31, 12, 24, 9),  # several gather column blocks and value rows
], ids=lambda s: 'B{}G{}H{}W{}C{}K{}'.format(*s))
def test_cpu_variants_match_reference(shape, use_rpb, softmax, cpu_capability):
    K = shape[-1]
    for dtype, tol in ((torch.float64, dict(rtol=1e-9, atol=1e-11)), (torch.float32, dict(rtol=1e-4, atol=1e-4))):
        inputs = make_inputs(*shape, rpb=use_rpb, dtype=dtype)
        out = contmix_aggregate(inputs[0], inputs[1], K, rpb=inputs[2], softmax=softmax, backend='cpu')
        expected = reference(inputs[0], inputs[1], K, rpb=inputs[2], softmax=softmax)
        grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        actual = [out] + grads(out, inputs, grad_out.to(dtype))
        wanted = [expected] + grads(expected, inputs, grad_out)
        assert_close_all(actual, wanted, **tol)


@requires_ext
def test_cpu_float32_softmax_accuracy(cpu_capability):
    """The float32 kernels' polynomial exp keeps its accuracy.

    With H = W = K every pixel has the same window, and one-hot values (C = K*K) make the output the softmax
    probabilities themselves. One logit per pixel is 0 (the maximum, so ``logit - max`` is exact) and the others
    span [-80, 0), the whole range the exp sees. Measured maximum relative error over all variants: 3.6e-7 (about
    3 ulp, as torch's own float32 softmax: 3.0e-7); the bound is 4x that. An exp 40x less accurate (40 ulp,
    2.4e-6) fails it.
    """
    K = 13
    T = K * K
    gen = torch.Generator().manual_seed(0)
    logits = -80 * torch.rand(4, 2, K, K, T, generator=gen)
    logits[..., 0] = 0
    value = torch.eye(T).reshape(K, K, T).expand(4, 2, K, K, T).contiguous()
    probs = contmix_aggregate(logits, value, K, softmax=True, backend='cpu').double()
    expected = torch.softmax(logits.double(), -1)
    normal = expected > 1e-30  # float32 results below ~1e-38 are subnormal, of no interest here
    rel = ((probs - expected).abs() / expected)[normal]
    assert rel.max().item() < 1.5e-6


@requires_ext
def test_cpu_capability_env_errors(monkeypatch):
    import mmoverlock._ext as ext
    weights, value, _ = make_inputs(1, 1, 5, 5, 2, 3, dtype=torch.float32)
    monkeypatch.setenv(CPU_CAPABILITY_ENV, 'sse9')
    with pytest.raises(RuntimeError, match=f"{CPU_CAPABILITY_ENV}='sse9' must be one of default, avx2, avx512"):
        contmix_aggregate(weights, value, 3, backend='cpu')
    with pytest.raises(ValueError, match='must be one of default, avx2, avx512'):
        ext.cpu_capability()
    missing = [name for name in ('avx2', 'avx512') if name not in ext.cpu_capabilities()]
    if missing:
        monkeypatch.setenv(CPU_CAPABILITY_ENV, missing[-1])
        with pytest.raises(RuntimeError, match='this CPU does not support'):
            contmix_aggregate(weights, value, 3, backend='cpu')
    monkeypatch.delenv(CPU_CAPABILITY_ENV)
    assert ext.cpu_capability() == ext.cpu_capabilities()[-1]  # the widest by default
    assert ext.cpu_capabilities()[0] == 'default'


@requires_cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('K,C', [(3, 5), (13, 16), (31, 40), (7, 130)])
def test_cuda_low_precision_against_float64(dtype, K, C):
    inputs = make_inputs(2, 2, max(K, 19), max(K, 23), C, K, dtype=dtype, device='cuda', noncontiguous=True)
    out = contmix_aggregate(*inputs[:2], K, rpb=inputs[2], softmax=True, backend='cuda')
    assert out.dtype == dtype
    expected = reference(*inputs[:2], K, rpb=inputs[2], softmax=True)
    grad_out = torch.randn_like(expected)
    actual = [out] + grads(out, inputs, grad_out.to(dtype))
    wanted = [expected] + grads(expected, inputs, grad_out)
    tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    assert_close_all(actual, wanted, rtol=tol, atol=tol)


@requires_cuda
def test_cuda_matches_cpu_float32():
    inputs = make_inputs(2, 4, 20, 24, 16, 7, dtype=torch.float32)
    grad_out = torch.randn(2, 4, 20, 24, 16)
    cpu = contmix_aggregate(*inputs[:2], 7, rpb=inputs[2], softmax=True, backend='cpu')
    cuda_inputs = [t.detach().cuda().requires_grad_() for t in inputs]
    cuda = contmix_aggregate(*cuda_inputs[:2], 7, rpb=cuda_inputs[2], softmax=True, backend='cuda')
    expected = [cpu] + grads(cpu, inputs, grad_out)
    actual = [cuda.cpu()] + [g.cpu() for g in grads(cuda, cuda_inputs, grad_out.cuda())]
    assert_close_all(actual, expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ torch.library integration
# The CUDA kernels also take half types; the CPU kernels take float32/float64.
OPCHECK_CASES = [pytest.param('cpu', dtype, marks=requires_ext, id=f'cpu-{dtype}')
                 for dtype in (torch.float32, torch.float64)]
OPCHECK_CASES += [pytest.param('cuda', dtype, marks=requires_cuda, id=f'cuda-{dtype}')
                  for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)]


@pytest.mark.parametrize('device,dtype', OPCHECK_CASES)
@pytest.mark.parametrize('use_rpb,softmax', [(False, False), (True, False), (False, True), (True, True)])
def test_opcheck(use_rpb, softmax, device, dtype):
    weights, value, rpb = make_inputs(2, 2, 7, 9, 5, 5, rpb=use_rpb, dtype=dtype, device=device)
    torch.library.opcheck(torch.ops.mmoverlock.contmix_forward.default, (weights, value, rpb, 5, softmax))
    grad_out = torch.randn_like(value.detach())
    inputs = (weights.detach(), value.detach(), rpb.detach() if use_rpb else None)
    out, lse = torch.ops.mmoverlock.contmix_forward(*inputs, 5, softmax)
    saved = (out, lse) if lse.numel() else (None, None)  # what autograd saves for the device's backward
    torch.library.opcheck(torch.ops.mmoverlock.contmix_backward.default, (grad_out, *inputs, *saved, 5, softmax))


@pytest.mark.parametrize('device', [pytest.param('cpu', marks=requires_ext), pytest.param('cuda', marks=requires_cuda)])
@pytest.mark.parametrize('compile_backend', ['aot_eager', 'inductor'])
def test_torch_compile_fullgraph(compile_backend, device):
    torch._dynamo.reset()
    inputs = make_inputs(2, 2, 9, 10, 4, 3, dtype=torch.float32, device=device)

    def block(weights, value, rpb):
        return (contmix_aggregate(weights * 2, value, 3, rpb=rpb, softmax=True) + 1).sum()

    compiled = torch.compile(block, fullgraph=True, backend=compile_backend)
    got = compiled(*inputs)
    got_grads = torch.autograd.grad(got, inputs)
    want = block(*inputs)
    want_grads = torch.autograd.grad(want, inputs)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('backend', [pytest.param('cpu', marks=requires_ext), 'torch'])
def test_backward_saves_only_inputs(backend):
    weights, value, rpb = make_inputs(1, 2, 7, 8, 3, 3, dtype=torch.float32)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = contmix_aggregate(weights, value, 3, rpb=rpb, softmax=True, backend=backend)
    assert [t.data_ptr() for t in saved] == [weights.data_ptr(), value.data_ptr(), rpb.data_ptr()]
    out.sum().backward()


@pytest.mark.parametrize('backend', [pytest.param('cpu', marks=requires_ext), 'torch'])
def test_checkpoint_and_autocast_cpu(backend):
    weights, value, rpb = make_inputs(1, 2, 7, 8, 4, 3, dtype=torch.float32)

    def fn(w, v, b):
        return contmix_aggregate(w, v, 3, rpb=b, softmax=True, backend=backend)

    out = torch.utils.checkpoint.checkpoint(fn, weights, value, rpb, use_reentrant=False)
    got = torch.autograd.grad(out.sum(), (weights, value, rpb))
    want = torch.autograd.grad(fn(weights, value, rpb).sum(), (weights, value, rpb))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        mixed = contmix_aggregate(weights.bfloat16(), value, 3, rpb=rpb, softmax=True, backend=backend)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, fn(weights, value, rpb), rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------------------------------ backends and errors
@requires_ext
def test_extension_loads_and_reports_backends():
    import mmoverlock._ext as ext

    assert 'cpu' in ext.backends
    assert available_backends() == [b for b in ('cpu', 'cuda') if b in ext.backends] + ['torch']
    assert hasattr(torch.ops.mmoverlock, 'contmix_forward')
    assert hasattr(torch.ops.mmoverlock, 'contmix_backward')


def test_available_backends_always_has_torch():
    assert available_backends()[-1] == 'torch'


def test_backend_selection(monkeypatch):
    weights, value, rpb = make_inputs(1, 1, 5, 5, 2, 3)
    expected = reference(weights, value, 3, rpb=rpb, softmax=True)
    assert contmix_module._resolve_backend(None, value) == ('cpu' if HAS_EXT else 'torch')
    # Half types run on the compiled CPU kernels too, computed in float32.
    assert contmix_module._resolve_backend(None, value.half()) == ('cpu' if HAS_EXT else 'torch')
    monkeypatch.setenv(contmix_module.BACKEND_ENV, 'torch')
    assert contmix_module._resolve_backend(None, value) == 'torch'
    if HAS_EXT:
        assert contmix_module._resolve_backend('cpu', value) == 'cpu'  # the argument wins over the variable
    torch.testing.assert_close(contmix_aggregate(weights, value, 3, rpb=rpb, softmax=True), expected)
    monkeypatch.setenv(contmix_module.BACKEND_ENV, 'fast')
    with pytest.raises(ValueError, match=contmix_module.BACKEND_ENV):
        contmix_aggregate(weights, value, 3)


def test_missing_backends_say_how_to_build(monkeypatch):
    weights, value, _ = make_inputs(1, 1, 5, 5, 2, 3)
    monkeypatch.setattr(contmix_module, '_BUILT', ('cpu', ))
    with pytest.raises(RuntimeError, match='FORCE_CUDA=1'):
        contmix_aggregate(weights, value, 3, backend='cuda')
    monkeypatch.setattr(contmix_module, '_ext', None)
    monkeypatch.setattr(contmix_module, '_BUILT', ())
    with pytest.raises(RuntimeError, match='not built.*pip install --no-build-isolation -e'):
        contmix_aggregate(weights, value, 3, backend='cpu')
    # Without the extension the fallback is used automatically.
    torch.testing.assert_close(contmix_aggregate(weights, value, 3), reference(weights, value, 3))


@requires_ext
def test_backend_device_and_dtype_errors():
    weights, value, _ = make_inputs(1, 1, 5, 5, 2, 3)
    with pytest.raises(ValueError, match="'cuda' needs cuda tensors") if 'cuda' in available_backends() else \
            pytest.raises(RuntimeError, match='built without'):
        contmix_aggregate(weights, value, 3, backend='cuda')
    half = contmix_aggregate(weights.half(), value.half(), 3, backend='cpu')  # computed in float32, cast back
    assert half.dtype == torch.float16
    with pytest.raises(ValueError, match='backend must be one of'):
        contmix_aggregate(weights, value, 3, backend='gpu')


@pytest.mark.parametrize('case,exc,match', [
    ('even_k', ValueError, 'kernel_size must be a positive odd int'),
    ('zero_k', ValueError, 'kernel_size must be a positive odd int'),
    ('bool_k', ValueError, 'kernel_size must be a positive odd int'),
    ('h_below_k', ValueError, r'H and W must be at least kernel_size = 5.*H=4'),
    ('w_below_k', ValueError, r'H and W must be at least kernel_size = 5.*W=3'),
    ('value_rank', ValueError, r'value must be 5-D \[B, G, H, W, C\]'),
    ('weights_rank', ValueError, r'weights must be 5-D \[B, G, H, W, K\*K\]'),
    ('mismatched_bghw', ValueError, 'must agree in B, G, H, W'),
    ('wrong_taps', ValueError, 'kernel_size\\*\\*2 = 9 taps'),
    ('rpb_shape', ValueError, r'rpb must have shape \[G, 2K-1, 2K-1\] = \[2, 5, 5\]'),
    ('dtype_mismatch', TypeError, 'weights has dtype torch.float32 but value has torch.float64'),
    ('rpb_dtype', TypeError, 'rpb has dtype'),
    ('integer_value', TypeError, 'weights must be a floating-point tensor'),
    ('device_mismatch', ValueError, 'weights is on meta but value is on cpu'),
])
def test_input_errors(case, exc, match):
    w = torch.randn(1, 2, 6, 7, 9, dtype=torch.float64)
    v = torch.randn(1, 2, 6, 7, 4, dtype=torch.float64)
    b = torch.randn(2, 5, 5, dtype=torch.float64)
    K = 3
    if case == 'even_k':
        K = 4
    elif case == 'zero_k':
        K = 0
    elif case == 'bool_k':
        K = True
    elif case == 'h_below_k':
        w, v, K = torch.randn(1, 2, 4, 7, 25), torch.randn(1, 2, 4, 7, 4), 5
    elif case == 'w_below_k':
        w, v, K = torch.randn(1, 2, 6, 3, 25), torch.randn(1, 2, 6, 3, 4), 5
    elif case == 'value_rank':
        v = v[0]
    elif case == 'weights_rank':
        w = w.flatten(3)
    elif case == 'mismatched_bghw':
        v = torch.randn(1, 2, 6, 8, 4, dtype=torch.float64)
    elif case == 'wrong_taps':
        w = w[..., :8]
    elif case == 'rpb_shape':
        b = torch.randn(2, 3, 3, dtype=torch.float64)
    elif case == 'dtype_mismatch':
        w = w.float()
    elif case == 'rpb_dtype':
        b = b.float()
    elif case == 'integer_value':
        w, v, b = w.long(), v.long(), b.long()
    elif case == 'device_mismatch':
        w = w.to('meta')
    with pytest.raises(exc, match=match):
        contmix_aggregate(w, v, K, rpb=b)


@requires_ext
def test_operator_checks_its_inputs():
    w, v = torch.randn(1, 1, 5, 5, 16), torch.randn(1, 1, 5, 5, 2)
    with pytest.raises(RuntimeError, match='kernel_size must be a positive odd integer'):
        torch.ops.mmoverlock.contmix_forward(w, v, None, 4, False)
    with pytest.raises(RuntimeError, match='rpb must have shape'):
        torch.ops.mmoverlock.contmix_forward(w[..., :9], v, torch.randn(1, 3, 3), 3, False)


@pytest.mark.skipif(not HAS_EXT, reason='needs the compiled extension')
def test_cuda_kernel_size_limit_comes_from_the_extension():
    """The CUDA kernels' documented window limit (31) is defined once, in C++, and read by the Python checks."""
    from mmoverlock import _ext
    assert _ext.cuda_max_kernel_size == contmix_module.CUDA_MAX_KERNEL_SIZE == 31
