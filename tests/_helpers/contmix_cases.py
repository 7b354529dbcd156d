"""ContMix cases shared by the CUDA bodies' CPU driver test and the CUDA kernels' test: shapes, dtypes, inputs, the
float64 expected results and the per-dtype error bounds."""
import torch

from .contmix_reference import reference

# (B, G, H, W, C, K): borders everywhere (H or W = K), every channels-per-lane choice with a masked tail (C = 5, 3, 1,
# 9), K = 1 and K up to the CUDA limit 31.
BODY_SHAPES = [
    (2, 3, 9, 11, 5, 3),
    (1, 2, 7, 7, 3, 7),
    (1, 1, 14, 7, 1, 7),
    (2, 2, 6, 8, 9, 1),
    (1, 2, 13, 17, 8, 13),
    (1, 1, 31, 34, 4, 31),
    (2, 1, 33, 31, 2, 31),
]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]

# Largest error |actual - expected| / max |expected| per output. Measured over all the cases here: float64 3.2e-15,
# float32 1.5e-6, float16 4.4e-4, bfloat16 3.6e-3; the half types are bounded by the rounding of the results to the
# dtype (unit roundoff u = 2^-11 and 2^-8), as the accumulation is in float32. Bounds: 2u for the half types, about
# 7x the measured error for float32 and 30x for float64 (different summation orders on the GPU).
TOLERANCE = {torch.float64: 1e-13, torch.float32: 1e-5, torch.float16: 2 * 2.0**-11, torch.bfloat16: 2 * 2.0**-8}


def shape_id(shape):
    return 'B{}G{}H{}W{}C{}K{}'.format(*shape)


def make_case(shape, dtype, use_rpb, seed=0):
    """Inputs in ``dtype`` and, as the oracle's leaves, the same (rounded) numbers in float64."""
    B, G, H, W, C, K = shape
    gen = torch.Generator().manual_seed(seed)

    def rand(*size):
        return torch.randn(*size, generator=gen, dtype=torch.float64).to(dtype)

    inputs = [rand(B, G, H, W, K * K), rand(B, G, H, W, C), rand(G, 2 * K - 1, 2 * K - 1) if use_rpb else None]
    grad_out = rand(B, G, H, W, C)
    return inputs, grad_out


def expected_results(inputs, grad_out, K, softmax):
    """out, grad_weights, grad_value, grad_rpb of the float64 definition at the (rounded) inputs."""
    leaves = [t.double().requires_grad_() if t is not None else None for t in inputs]
    out = reference(leaves[0], leaves[1], K, rpb=leaves[2], softmax=softmax)
    present = [t for t in leaves if t is not None]
    got = iter(torch.autograd.grad(out, present, grad_out.double()))
    return [out.detach()] + [next(got) if t is not None else None for t in leaves]


def max_rel_err(actual, expected):
    scale = expected.abs().max().clamp_min(1e-30)
    return ((actual.double() - expected).abs().max() / scale).item()


def assert_results_close(actual, expected, dtype):
    """Every output: dtype as the inputs', and within TOLERANCE[dtype] of the float64 result."""
    errors = {}
    for name, a, e in zip(('out', 'grad_weights', 'grad_value', 'grad_rpb'), actual, expected):
        if e is None:
            continue
        assert a.dtype == dtype and a.shape == e.shape, name
        assert torch.isfinite(a).all(), name
        errors[name] = max_rel_err(a, e)
    print(f'max_rel_err {dtype}: ' + ', '.join(f'{k}={v:.2e}' for k, v in errors.items()))
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCE[dtype]}
    assert not bad, f'errors above {TOLERANCE[dtype]:.0e}: {bad}'
