"""Numerics: half precision on the CPU, extreme logits, NaN propagation, and bit-identical training from a seed.

The ContMix op runs every compiled CPU instruction-set variant and the torch fallback; the backbone is the small
"OverLoCK-pico" of the smoke configs.
"""
import pytest
import torch
from _helpers import SMOKE_SEG, TINY_ARCH

from mmoverlock.models import OverLoCK
from mmoverlock.ops import available_backends, contmix_aggregate
from mmoverlock.ops.contmix import BACKEND_ENV
from mmoverlock.testing.contmix_baselines import CPU_CAPABILITY_ENV

HAS_EXT = 'cpu' in available_backends()
HALF_DTYPES = (torch.float16, torch.bfloat16)
ALL_DTYPES = (torch.float64, torch.float32) + HALF_DTYPES


def cpu_kernels():
    """(backend, instruction set) pairs: every compiled CPU variant this machine runs, then the torch fallback."""
    if not HAS_EXT:
        return [('torch', None)]
    import mmoverlock._ext as ext
    return [('cpu', name) for name in ext.cpu_capabilities()] + [('torch', None)]


KERNELS = [pytest.param((backend, isa), id=isa or backend) for backend, isa in cpu_kernels()]


@pytest.fixture
def kernel(request, monkeypatch):
    """The backend to pass, with the instruction set of the compiled CPU kernels set."""
    backend, isa = request.param
    if isa is not None:
        monkeypatch.setenv(CPU_CAPABILITY_ENV, isa)
    return backend


def op_inputs(B=1, G=2, H=9, W=11, C=4, K=3, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(B, G, H, W, K * K, generator=gen, dtype=torch.float64)
    value = torch.randn(B, G, H, W, C, generator=gen, dtype=torch.float64)
    rpb = torch.randn(G, 2 * K - 1, 2 * K - 1, generator=gen, dtype=torch.float64)
    return weights.to(dtype), value.to(dtype), rpb.to(dtype)


def reference(weights, value, K, rpb):
    """The op in float64 from the same (already rounded) inputs: the torch fallback, itself checked against the
    definition in tests/test_ops/test_contmix.py."""
    return contmix_aggregate(weights.double(), value.double(), K, rpb=rpb.double(), softmax=True, backend='torch')


# ------------------------------------------------------------------------------------------ half types on CPU
# float16 / bfloat16 inputs are computed in float32 and rounded once, at the end: the error against float64 on the
# same rounded inputs is about one rounding of the output. Measured max |error| (5 seeds, outputs of magnitude below
# 3): float16 9.5e-4, bfloat16 7.1e-3, for every kernel; the bounds are about 2x that.
HALF_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize('kernel', KERNELS, indirect=True)
@pytest.mark.parametrize('dtype', HALF_DTYPES, ids=str)
def test_op_takes_half_types_and_returns_them(kernel, dtype):
    weights, value, rpb = (t.requires_grad_() for t in op_inputs(dtype=dtype))
    out = contmix_aggregate(weights, value, 3, rpb=rpb, softmax=True, backend=kernel)
    assert out.dtype == dtype
    expected = reference(weights, value, 3, rpb)
    assert (out.double() - expected).abs().max() <= HALF_TOL[dtype]
    out.float().square().sum().backward()
    for tensor in (weights, value, rpb):
        assert tensor.grad is not None and tensor.grad.dtype == dtype and torch.isfinite(tensor.grad).all()


@pytest.mark.parametrize('dtype', HALF_DTYPES, ids=str)
def test_half_types_pick_the_compiled_cpu_kernels(dtype):
    """Without ``backend=``, half types on the CPU go to the compiled kernels (cast around them), not the slower
    fallback."""
    from mmoverlock.ops import contmix
    assert contmix._resolve_backend(None, torch.zeros(1, dtype=dtype)) == ('cpu' if HAS_EXT else 'torch')


# bfloat16 against float32 on the levels of OverLoCK-pico (both forms; 33x47, 48x80, 64x96; 3 seeds; autocast and
# .bfloat16() weights alike): max |difference| / max |float32 output| measured up to 0.0199 per level (bfloat16
# keeps 8 significant bits, a rounding of 0.4%, and the levels are about 40 layers deep). The bound is 2.5x that.
BF16_TOL = 0.05


def pico(seed=0, **kwargs) -> OverLoCK:
    torch.manual_seed(seed)
    model = OverLoCK(arch=TINY_ARCH, **kwargs)
    model.init_weights()
    return model


@pytest.mark.parametrize('overview_fusion', [False, True], ids=['seg_form', 'det_form'])
def test_backbone_under_cpu_bfloat16_autocast(overview_fusion):
    model = pico(overview_fusion=overview_fusion).eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        expected = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs = model(x)
    for out, want in zip(outs, expected):
        assert out.shape == want.shape
        assert (out.float() - want).abs().max() <= BF16_TOL * want.abs().max()

    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = sum(level.float().square().mean() for level in model(x))
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads['sub_blocks4.0.rpb2'].abs().sum() > 0  # reached through the ContMix op


def test_backbone_in_bfloat16_weights():
    """A model converted with ``.bfloat16()`` (no autocast) runs the ContMix op on bfloat16 inputs."""
    model = pico().eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        expected = model(x)
        outs = model.bfloat16()(x.bfloat16())
    for out, want in zip(outs, expected):
        assert out.dtype == torch.bfloat16
        assert (out.float() - want).abs().max() <= BF16_TOL * want.abs().max()


# ------------------------------------------------------------------------------------------------ extreme logits
@pytest.mark.parametrize('kernel', KERNELS, indirect=True)
@pytest.mark.parametrize('dtype', ALL_DTYPES, ids=str)
def test_logits_of_1e4_give_finite_softmax_weights(kernel, dtype):
    """Logits of +-1e4 (exp overflows float32 above 88): the softmax picks the +1e4 taps, finitely, in every dtype;
    the gradients stay finite too."""
    weights, value, rpb = op_inputs(dtype=dtype)
    signs = torch.randint(0, 2, weights.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    weights = (signs * 1e4).to(dtype).requires_grad_()
    value.requires_grad_()
    out = contmix_aggregate(weights, value, 3, rpb=rpb, softmax=True, backend=kernel)
    assert torch.isfinite(out).all()
    # Against float64 on the same inputs: the rpb (|rpb| < 4) rides on logits of 1e4, whose float32 spacing is
    # about 1e-3, so the weights move by about that much. Measured max |error| (5 seeds, every kernel): float64
    # 1.8e-12, float32 1.2e-3, float16 1.4e-3, bfloat16 6.9e-3 (its own rounding); the bounds are 2x or more.
    tol = {torch.float64: 1e-9, torch.float32: 3e-3, torch.float16: 3e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert (out.double() - reference(weights, value, 3, rpb)).abs().max() <= tol
    out.float().sum().backward()
    assert torch.isfinite(weights.grad).all() and torch.isfinite(value.grad).all()


# --------------------------------------------------------------------------------------------- NaN propagation
def window_rows(i: int, n: int, K: int) -> range:
    start = min(max(i - K // 2, 0), n - K)
    return range(start, start + K)


@pytest.mark.parametrize('kernel', KERNELS, indirect=True)
@pytest.mark.parametrize('dtype', (torch.float64, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize('softmax', [True, False], ids=['softmax', 'raw'])
def test_nan_in_value_reaches_exactly_the_pixels_that_read_it(kernel, dtype, softmax):
    K, H, W = 3, 9, 11
    weights, value, rpb = op_inputs(dtype=dtype, H=H, W=W, K=K)
    value[0, 0, 4, 5, 1] = float('nan')
    out = contmix_aggregate(weights, value, K, rpb=rpb, softmax=softmax, backend=kernel)
    readers = torch.zeros(H, W, dtype=torch.bool)
    for i in range(H):
        for j in range(W):
            readers[i, j] = 4 in window_rows(i, H, K) and 5 in window_rows(j, W, K)
    assert torch.equal(out[0, 0, :, :, 1].isnan(), readers)
    nan_free = out.clone()
    nan_free[0, 0, :, :, 1] = 0
    assert torch.isfinite(nan_free).all()


@pytest.mark.parametrize('kernel', KERNELS, indirect=True)
@pytest.mark.parametrize('dtype', (torch.float64, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize('where', ['weights', 'rpb'])
def test_nan_logit_makes_its_pixel_nan(kernel, dtype, where):
    """A NaN logit (or bias) poisons the softmax of every pixel that uses it: never a finite weight from it."""
    weights, value, rpb = op_inputs(dtype=dtype)
    if where == 'weights':
        weights[0, 0, 4, 5, 7] = float('nan')
    else:
        rpb[0, 2, 2] = float('nan')  # offset (0, 0) minus 2: read by tap (0, 0) of interior pixels
    out = contmix_aggregate(weights, value, 3, rpb=rpb, softmax=True, backend=kernel)
    nan_pixels = out[0, 0].isnan().all(-1)
    assert torch.equal(out[0, 0].isnan().any(-1), nan_pixels)  # whole pixels, all channels
    if where == 'weights':
        expected = torch.zeros_like(nan_pixels)
        expected[4, 5] = True
        assert torch.equal(nan_pixels, expected)
    else:
        assert nan_pixels[1:-1, 1:-1].all()
    assert torch.isfinite(out[:, 1]).all()  # the other group


@pytest.mark.parametrize('backend', [pytest.param('cpu', marks=pytest.mark.skipif(not HAS_EXT, reason='no _ext')),
                                     'torch'])
def test_nan_pixel_in_the_image_reaches_every_level(backend, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, backend)
    model = pico().eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(10))
    x[0, 1, 30, 40] = float('nan')
    with torch.no_grad():
        outs = model(x)
    assert all(out.isnan().any() for out in outs)


# --------------------------------------------------------------------------------------- deterministic training
def train_smoke_segmentor(steps=3, seed=0):
    """A few AdamW steps of the smoke UperNet (backbone drop path and head dropout on) from ``seed``."""
    from mmoverlock.apis import build_model
    from mmoverlock.apis.dummy_inputs import dummy_batch

    torch.manual_seed(seed)
    model, _cfg = build_model(SMOKE_SEG, cfg_options={'model.backbone.drop_path_rate': 0.2})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(steps):
        inputs, samples = dummy_batch('mmseg', 2, 64, 64, num_classes=model.decode_head.num_classes, seed=step)
        loss, _log = model.parse_losses(model(inputs, samples, mode='loss'))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.state_dict()


@pytest.mark.slow  # trains a whole config's segmentor twice (33 s on 2 loaded cores)
def test_same_seed_training_is_bit_identical():
    first, second = train_smoke_segmentor(), train_smoke_segmentor()
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f'{len(different)} tensors differ, e.g. {different[:5]}'
    initial = train_smoke_segmentor(steps=0)
    assert not torch.equal(first['backbone.sub_blocks4.0.rpb2'], initial['backbone.sub_blocks4.0.rpb2'])
