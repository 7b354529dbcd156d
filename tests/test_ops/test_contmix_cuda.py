"""The CUDA backend of ContMix on a GPU: numbers against float64, and the behaviours a careful user meets.

* float64/float32/float16/bfloat16 against the float64 definition on the cases and tolerances of the CPU driver of
  the CUDA bodies (test_contmix_cuda_bodies.py), so a difference between the GPU and the CPU-tested arithmetic shows;
* ``torch.use_deterministic_algorithms(True)``: bitwise reproducible gradients (grad_rpb gathered in a fixed order);
* what each device's forward saves for its backward (CUDA: the per-pixel log-sum-exp; CPU: nothing), and the error
  when a CUDA softmax backward is called without it;
* the scalar fallback of the 128-bit loads (inputs that are not 16-byte aligned);
* errors: grad_out on another device, kernel_size > 31 (before any launch); B * G beyond a grid dimension's 65535;
* a second GPU and a non-default stream (the launches follow the inputs' device and the current stream; a CUDA graph
  capture fails on any launch on another stream).

(``torch.library.opcheck`` and ``torch.compile`` on CUDA tensors are parametrisations of test_contmix.py's tests.)
Everything skips with a reason where no GPU or no CUDA build is present, except the kernel-size check of the Python
wrapper, which needs only a CUDA build.
"""
import pytest
import torch

from _helpers.contmix_cases import (BODY_SHAPES, DTYPES, assert_results_close, expected_results, make_case,
                                   shape_id)
from _helpers.contmix_reference import reference
from mmoverlock.ops import available_backends, contmix_aggregate
from mmoverlock.ops.contmix_torch import Windows

CUDA_BUILT = 'cuda' in available_backends()
HAS_CUDA = torch.cuda.is_available() and CUDA_BUILT
requires_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason='needs a CUDA GPU and mmoverlock._ext built with CUDA (FORCE_CUDA=1)')
requires_two_gpus = pytest.mark.skipif(
    not (HAS_CUDA and torch.cuda.device_count() >= 2), reason='needs two CUDA GPUs and a CUDA build')


def cuda_results(inputs, grad_out, K, softmax, device='cuda'):
    """out and the gradients of the public op on the CUDA backend (the inputs moved to ``device``)."""
    leaves = [t.to(device).requires_grad_() if t is not None else None for t in inputs]
    out = contmix_aggregate(leaves[0], leaves[1], K, rpb=leaves[2], softmax=softmax, backend='cuda')
    present = [t for t in leaves if t is not None]
    got = iter(torch.autograd.grad(out, present, grad_out.to(device)))
    results = [out.detach()] + [next(got) if t is not None else None for t in leaves]
    placed = torch.empty(0, device=device).device  # 'cuda' names the current device: cuda:0 here
    assert all(r.device == placed for r in results if r is not None)
    return [r.cpu() if r is not None else None for r in results]


@requires_cuda
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('use_rpb', [False, True], ids=['no_rpb', 'rpb'])
@pytest.mark.parametrize('softmax', [False, True], ids=['raw', 'softmax'])
@pytest.mark.parametrize('shape', BODY_SHAPES, ids=shape_id)
def test_cuda_matches_reference(shape, softmax, use_rpb, dtype):
    K = shape[-1]
    inputs, grad_out = make_case(shape, dtype, use_rpb)
    assert_results_close(cuda_results(inputs, grad_out, K, softmax), expected_results(inputs, grad_out, K, softmax),
                         dtype)


@requires_cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
def test_cuda_deterministic_mode_is_bitwise_reproducible(dtype):
    # Many blocks add to every bias entry: 2 * 3 planes of 40 x 45 pixels, 8 pixels per block, K = 13.
    shape = (2, 3, 40, 45, 4, 13)
    inputs, grad_out = make_case(shape, dtype, use_rpb=True, seed=2)
    expected = expected_results(inputs, grad_out, 13, True)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [cuda_results(inputs, grad_out, 13, True) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(previous)
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            assert torch.equal(a, b)
    assert_results_close(runs[0], expected, dtype)


def log_sum_exp(weights, rpb, K):
    """The float64 log-sum-exp of every pixel's biased logits, [B, G, H, W] (as biased_softmax gathers the bias)."""
    win = Windows(weights, K)
    bias = win.chunk_bias(win.bias_table(rpb, torch.float64), slice(None))  # [G, H, W, K*K]
    return torch.logsumexp(weights.double() + bias, -1)


@pytest.mark.skipif('cpu' not in available_backends(), reason='mmoverlock._ext is not built')
def test_cpu_forward_saves_only_its_inputs():
    (weights, value, rpb), _ = make_case((1, 2, 7, 8, 3, 3), torch.float32, True)
    out, lse = torch.ops.mmoverlock.contmix_forward(weights, value, rpb, 3, True)
    assert lse.numel() == 0  # the CPU backward recomputes the softmax from the inputs


@requires_cuda
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_cuda_forward_saves_the_log_sum_exp(dtype):
    """Besides its output, the CUDA forward with softmax returns what its backward reads instead of repeating the
    forward: the log-sum-exp of every pixel's biased logits, one accumulation-type number per pixel."""
    (weights, value, rpb), _ = make_case((2, 3, 9, 11, 5, 5), dtype, True)
    out, lse = torch.ops.mmoverlock.contmix_forward(weights.cuda(), value.cuda(), rpb.cuda(), 5, True)
    assert lse.shape == (2, 3, 9, 11) and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(lse.cpu().double(), log_sum_exp(weights, rpb, 5), rtol=0,
                               atol=1e-12 if dtype == torch.float64 else 1e-5)
    assert torch.ops.mmoverlock.contmix_forward(weights.cuda(), value.cuda(), rpb.cuda(), 5, False)[1].numel() == 0
    with pytest.raises(RuntimeError, match="with softmax this backward reads the forward's out and lse"):
        torch.ops.mmoverlock.contmix_backward(out, weights.cuda(), value.cuda(), rpb.cuda(), None, None, 5, True)


@requires_cuda
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_cuda_scalar_fallback_of_the_vector_loads(dtype):
    """Channel rows not 16-byte aligned (tensors starting one element into their storage) take the scalar loads."""
    shape, K = (1, 2, 9, 10, 16, 5), 5
    inputs, grad_out = make_case(shape, dtype, use_rpb=True, seed=4)

    def misaligned(t):
        view = torch.empty(t.numel() + 1, dtype=t.dtype, device='cuda')[1:].view(t.shape)
        return view.copy_(t)

    moved = [misaligned(inputs[0]), misaligned(inputs[1]), inputs[2]]
    expected = expected_results(inputs, grad_out, K, True)
    assert_results_close(cuda_results(moved, misaligned(grad_out), K, True), expected, dtype)


@requires_cuda
def test_cuda_grad_out_on_another_device_is_an_error():
    (weights, value, rpb), grad_out = make_case((1, 2, 5, 6, 3, 3), torch.float32, True)
    with pytest.raises(RuntimeError, match='grad_out is on cpu but value is on cuda'):
        torch.ops.mmoverlock.contmix_backward(grad_out, weights.cuda(), value.cuda(), rpb.cuda(), None, None, 3,
                                              True)


@pytest.mark.skipif(not CUDA_BUILT, reason='mmoverlock._ext is built without CUDA')
def test_cuda_kernel_size_limit_is_checked_before_any_launch():
    # The wrapper refuses before looking at the device, so this runs on CPU tensors where no GPU is present.
    (weights, value, _), _ = make_case((1, 1, 33, 33, 2, 33), torch.float32, False)
    with pytest.raises(ValueError, match=r"kernel_size must be at most 31 for the 'cuda' backend.*got 33"):
        contmix_aggregate(weights, value, 33, backend='cuda')


@requires_cuda
def test_cuda_kernel_size_limit_on_cuda_tensors():
    (weights, value, _), _ = make_case((1, 1, 33, 33, 2, 33), torch.float32, False)
    weights, value = weights.cuda(), value.cuda()
    with pytest.raises(ValueError, match='kernel_size must be at most 31'):
        contmix_aggregate(weights, value, 33)  # the automatic choice for CUDA tensors
    with pytest.raises(RuntimeError, match='kernel_size must be at most 31'):  # the operator itself, no launch
        torch.ops.mmoverlock.contmix_forward(weights, value, None, 33, False)
    torch.testing.assert_close(contmix_aggregate(weights, value, 33, backend='torch').cpu(),
                               reference(weights, value, 33).float().cpu())


@requires_cuda
def test_cuda_many_planes_beyond_a_grid_dimension():
    # B * G = 2 * 33000 = 66000 planes > 65535, the limit of a grid's y dimension.
    shape = (2, 33000, 3, 3, 1, 3)
    inputs, grad_out = make_case(shape, torch.float32, use_rpb=True, seed=3)
    assert_results_close(cuda_results(inputs, grad_out, 3, True), expected_results(inputs, grad_out, 3, True),
                         torch.float32)


@requires_two_gpus
def test_cuda_second_device():
    shape = (2, 2, 9, 11, 5, 3)
    inputs, grad_out = make_case(shape, torch.float32, use_rpb=True, seed=4)
    with torch.cuda.device(0):  # the current device differs from the inputs'
        actual = cuda_results(inputs, grad_out, 3, True, device='cuda:1')
    assert_results_close(actual, expected_results(inputs, grad_out, 3, True), torch.float32)


@requires_cuda
def test_cuda_non_default_stream_and_graph_capture():
    shape = (2, 2, 9, 11, 5, 3)
    (weights, value, rpb), grad_out = make_case(shape, torch.float32, use_rpb=True, seed=5)
    weights, value, rpb, grad_out = weights.cuda(), value.cuda(), rpb.cuda(), grad_out.cuda()
    ops = torch.ops.mmoverlock

    def step():
        out, lse = ops.contmix_forward(weights, value, rpb, 3, True)
        return (out, lse, *ops.contmix_backward(grad_out, weights, value, rpb, out, lse, 3, True))

    eager = step()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        on_side = step()
    torch.cuda.current_stream().wait_stream(side)
    for a, b in zip(on_side, eager):
        torch.testing.assert_close(a, b)
    # A capture records the capturing stream only; a launch on any other stream makes it fail.
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, eager):
        torch.testing.assert_close(a, b)
