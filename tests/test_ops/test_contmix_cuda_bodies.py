"""The CUDA kernels' arithmetic, checked on the CPU.

The per-pixel bodies of the CUDA kernels (``csrc/common/contmix_bodies.h``) are compiled a second time into a
test-only CPU driver, ``torch.ops.mmoverlock_testing`` (the ``testing_ops`` fixture), which runs them with a team of
one lane in place of the warp lanes. Here that driver is compared with the float64 definition of ContMix
(``tests/_helpers/contmix_reference.py``; cases and bounds in ``contmix_cases.py``) for every dtype the CUDA kernels
take, accumulating as they do (float32 for float16/bfloat16).

The same comparison runs against the CUDA kernels themselves where a GPU is present (``test_contmix_cuda.py``).
"""
import pytest
import torch

from _helpers.contmix_cases import (BODY_SHAPES, DTYPES, TOLERANCE, assert_results_close, expected_results, make_case,
                                   max_rel_err, shape_id)

pytestmark = pytest.mark.usefixtures('testing_ops')  # skips without mmoverlock._ext, fails without _ext_testing


def run_bodies(inputs, grad_out, K, softmax, deterministic=False):
    weights, value, rpb = inputs
    out = torch.ops.mmoverlock_testing.contmix_bodies_forward(weights, value, rpb, K, softmax)
    grad_w, grad_v, grad_b = torch.ops.mmoverlock_testing.contmix_bodies_backward(
        grad_out, weights, value, rpb, K, softmax, deterministic)
    return [out, grad_w, grad_v, grad_b if rpb is not None else None]


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('use_rpb', [False, True], ids=['no_rpb', 'rpb'])
@pytest.mark.parametrize('softmax', [False, True], ids=['raw', 'softmax'])
@pytest.mark.parametrize('shape', BODY_SHAPES, ids=shape_id)
def test_bodies_match_reference(shape, softmax, use_rpb, dtype):
    K = shape[-1]
    inputs, grad_out = make_case(shape, dtype, use_rpb)
    actual = run_bodies(inputs, grad_out, K, softmax)
    assert_results_close(actual, expected_results(inputs, grad_out, K, softmax), dtype)


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('softmax', [False, True], ids=['raw', 'softmax'])
@pytest.mark.parametrize('shape', [BODY_SHAPES[0], BODY_SHAPES[4], BODY_SHAPES[6]], ids=shape_id)
def test_deterministic_grad_rpb_gather(shape, softmax, dtype):
    """The fixed-order gather of grad_rpb (used under torch.use_deterministic_algorithms) and the logit gradients
    kept in the accumulation dtype for it give the same results as the atomic path."""
    K = shape[-1]
    inputs, grad_out = make_case(shape, dtype, use_rpb=True, seed=1)
    expected = expected_results(inputs, grad_out, K, softmax)
    gathered = run_bodies(inputs, grad_out, K, softmax, deterministic=True)
    assert_results_close(gathered, expected, dtype)
    summed = run_bodies(inputs, grad_out, K, softmax, deterministic=False)
    for a, b in zip(gathered[:3], summed[:3]):  # only grad_rpb is summed differently
        assert torch.equal(a, b)


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_scalar_fallback_of_the_vector_loads(dtype):
    """Channel rows that are not 16-byte aligned (a tensor starting one element into its storage) take the scalar
    loads instead of the 128-bit ones, with the same numbers (one lane sums the channels in the same order)."""
    shape, K = (1, 2, 9, 10, 16, 5), 5
    inputs, grad_out = make_case(shape, dtype, use_rpb=True, seed=4)

    def misaligned(t):
        storage = torch.empty(t.numel() + 1, dtype=t.dtype)
        view = storage[1:].view(t.shape)
        view.copy_(t)
        return view

    aligned = run_bodies(inputs, grad_out, K, softmax=True)
    moved = run_bodies([misaligned(inputs[0]), misaligned(inputs[1]), inputs[2]], misaligned(grad_out), K, True)
    assert all(torch.equal(a, b) for a, b in zip(aligned, moved))
    assert_results_close(moved, expected_results(inputs, grad_out, K, True), dtype)


def test_bodies_driver_checks_inputs():
    w, v = torch.randn(1, 1, 5, 5, 9), torch.randn(1, 1, 5, 5, 2)
    with pytest.raises(RuntimeError, match='kernel_size must be a positive odd integer'):
        torch.ops.mmoverlock_testing.contmix_bodies_forward(w, v, None, 2, False)
    with pytest.raises(RuntimeError, match='grad_out must match value'):
        torch.ops.mmoverlock_testing.contmix_bodies_backward(v[..., :1], w, v, None, 3, False, False)



@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
def test_float32_bias_gets_its_gradient_in_float32(dtype):
    """What float16 autocast passes: half weights and value with the float32 bias parameter. grad_rpb comes straight
    from the float32 accumulator, also where it exceeds float16's range (65504), with no float16 intermediate."""
    shape, K = (2, 2, 9, 9, 4, 3), 3
    inputs, grad_out = make_case(shape, dtype, use_rpb=True, seed=3)
    inputs[2] = inputs[2].float()
    grad_out = grad_out * 4000  # a float16 number still; grad_rpb (and here the other gradients) overflow float16
    for deterministic in (False, True):
        actual = run_bodies(inputs, grad_out, K, softmax=False, deterministic=deterministic)
        expected = expected_results(inputs, grad_out, K, softmax=False)
        grad_rpb = actual[3]
        assert grad_rpb.dtype == torch.float32 and torch.isfinite(grad_rpb).all()
        assert grad_rpb.abs().max() > torch.finfo(torch.float16).max  # a float16 copy would have been inf
        assert max_rel_err(grad_rpb, expected[3]) <= TOLERANCE[torch.float32] * 10
        assert_results_close(actual[:1] + [None] * 3, expected[:1] + [None] * 3, dtype)  # the forward is unchanged
