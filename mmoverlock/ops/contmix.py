"""The ContMix core: softmax-weighted aggregation of each pixel's K×K neighbourhood with per-pixel dynamic kernels.

For ``value`` [B, G, H, W, C] and per-pixel logits ``weights`` [B, G, H, W, K*K] (tap ``t = a*K + e``), pixel
``(i, j)`` aggregates the K×K window starting at ``(s(i), s(j))`` with ``s(i) = clamp(i - K//2, 0, H - K)``: windows
are shifted inwards at the borders, never padded. ``rpb`` [G, 2K-1, 2K-1] adds
``rpb[g, s(i)+a-i+K-1, s(j)+e-j+K-1]`` to the logit of tap ``(a, e)``; ``softmax`` normalises over the K*K taps.
Without bias and softmax this is NATTEN 0.17's ``na2d_av`` (dilation 1).

Backends:

* ``'cpu'`` / ``'cuda'``: the compiled operators ``torch.ops.mmoverlock.contmix_forward`` / ``contmix_backward`` from
  ``mmoverlock._ext`` (see ``csrc/``). Bias, softmax and aggregation are fused; the K*K probabilities are never
  stored: the CPU backward recomputes the softmax from the inputs, the CUDA one from the inputs and the per-pixel
  log-sum-exp that its forward saves (with the output, which gives sum_t P_t dL/dP_t). Autograd and fake-tensor
  support are registered here with ``torch.library``, which makes the op work with ``torch.compile``. The CPU kernels are float32/float64; float16 and
  bfloat16 inputs are cast to float32 around them and the result cast back (the CUDA kernels take all four).
* ``'unfused'``: the authors' formulation, as a baseline the model can run on (``contmix_backend='unfused'`` of the
  backbone and the classifier): the gathered bias is added to the logits and the softmax taken in torch, each a
  whole K*K-per-pixel tensor kept for autograd, then the aggregation alone (NATTEN's ``na2d_av``) runs on the
  backend chosen automatically. Same numbers as the fused op, more memory and time.
* ``'torch'``: a pure-torch fallback with the same semantics and gradients, built from whole-tensor slices and small
  matmuls (a few value-sized buffers of extra memory, never K*K*C values per pixel). Used automatically when the
  extension is not built. While ``torch.export`` (and so ``torch.onnx.export``) or ``torch.jit.trace`` record it,
  it takes a compact forward-only formulation of standard aten ops; the compiled op has no ONNX form, so force this
  backend (``backend='torch'`` or the environment variable) to export.

This module imports only torch (>= 2.4, for ``torch.library.register_fake``/``register_autograd``) and the compiled
module: it must work where OpenMMLab is not installed.
"""
import importlib
import os
import os.path as osp
import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .contmix_torch import ContMixTorch, Windows, accumulation_dtype, contmix_torch_traceable
from .tracing import is_tracing

__all__ = ['available_backends', 'contmix_aggregate', 'unfused_weights', 'BACKEND_ENV', 'CONTMIX_BACKENDS']

#: Environment variable that forces a backend (``cpu``, ``cuda``, ``torch`` or ``unfused``) for every call without
#: ``backend=``.
BACKEND_ENV = 'MMOVERLOCK_CONTMIX_BACKEND'
_BACKENDS = ('cpu', 'cuda', 'torch')
#: Every name ``backend`` takes: the three implementations of the fused op, and the unfused formulation.
CONTMIX_BACKENDS = _BACKENDS + ('unfused', )
#: Dtypes that the 'cpu' backend runs in float32 (its kernels are float32/float64), returning the input dtype.
_CPU_CAST_DTYPES = (torch.float16, torch.bfloat16)
#: Largest ``kernel_size`` of the CUDA kernels (they keep a (2K-1)² bias table per block in shared memory).
_BUILD_HINT = ('build it with `pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`) '
               'from the repository root; add FORCE_CUDA=1 to compile the CUDA kernels with nvcc')


def _load_extension():
    """Import ``mmoverlock._ext``; return ``(module or None, reason it is missing)``.

    A missing library is normal (pure-python install); a library that exists but fails to load (e.g. built against
    another torch) is worth a warning, because the slower fallback is used silently otherwise.
    """
    try:
        return importlib.import_module('mmoverlock._ext'), None
    except (ImportError, OSError) as err:
        pkg_dir = osp.dirname(osp.dirname(osp.abspath(__file__)))
        if any(name.startswith('_ext.') for name in os.listdir(pkg_dir)):
            warnings.warn(f'mmoverlock._ext exists but failed to load ({err}); using the pure-torch ContMix '
                          f'fallback. Rebuild it: {_BUILD_HINT}.')
        return None, str(err)


_ext, _EXT_ERROR = _load_extension()
_BUILT = tuple(_ext.backends) if _ext is not None else ()
#: The largest ``kernel_size`` the CUDA kernels take (the extension's own limit, read once).
CUDA_MAX_KERNEL_SIZE = getattr(_ext, 'cuda_max_kernel_size', None)


def available_backends() -> List[str]:
    """Backends this installation can run: the compiled ones (``'cpu'``, and ``'cuda'`` when built with nvcc)
    followed by ``'torch'``, which is always there. ``'cuda'`` is listed when compiled, even if no GPU is visible."""
    return [name for name in _BACKENDS if name in _BUILT] + ['torch']


# ---------------------------------------------------------------------------------------------------------------
# The compiled operators: fake (meta) implementations and autograd, registered on the C++ schema.
# ---------------------------------------------------------------------------------------------------------------
if _ext is not None:

    @torch.library.register_fake('mmoverlock::contmix_forward')
    def _contmix_forward_fake(weights, value, rpb, kernel_size, softmax):
        torch._check(weights.dim() == 5 and value.dim() == 5, lambda: 'contmix: weights and value must be 5-D')
        torch._check(weights.shape[4] == kernel_size * kernel_size,
                     lambda: 'contmix: weights must have kernel_size**2 taps')
        # The CUDA kernels save the log-sum-exp per pixel for their backward; the CPU kernels return it empty.
        lse_shape = value.shape[:4] if softmax and value.device.type == 'cuda' else (0, )
        return value.new_empty(value.shape), value.new_empty(lse_shape, dtype=accumulation_dtype(value.dtype))

    @torch.library.register_fake('mmoverlock::contmix_backward')
    def _contmix_backward_fake(grad_out, weights, value, rpb, out, lse, kernel_size, softmax):
        grad_rpb = rpb.new_empty(rpb.shape) if rpb is not None else value.new_empty((0, ))
        return weights.new_empty(weights.shape), value.new_empty(value.shape), grad_rpb

    def _setup_context(ctx, inputs, output):
        weights, value, rpb, kernel_size, softmax = inputs
        out, lse = output
        ctx.mark_non_differentiable(lse)
        # The inputs, and where the device's backward reads them (CUDA with softmax) the output and the per-pixel
        # log-sum-exp (B*G*H*W numbers): never the K*K probabilities, which the backward recomputes.
        saves_forward = lse.numel() > 0
        ctx.save_for_backward(weights, value, rpb, out if saves_forward else None, lse if saves_forward else None)
        ctx.kernel_size = kernel_size
        ctx.softmax = softmax

    def _backward(ctx, grad_out, _grad_lse):
        weights, value, rpb, out, lse = ctx.saved_tensors
        grad_weights, grad_value, grad_rpb = torch.ops.mmoverlock.contmix_backward(
            grad_out, weights, value, rpb, out, lse, ctx.kernel_size, ctx.softmax)
        return grad_weights, grad_value, (grad_rpb if rpb is not None else None), None, None

    torch.library.register_autograd('mmoverlock::contmix_forward', _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# The public function: input checks, autocast, backend selection.
# ---------------------------------------------------------------------------------------------------------------
def _check_shapes(weights: Tensor, value: Tensor, kernel_size, rpb: Optional[Tensor]) -> None:
    """Raise ``ValueError`` naming the offending argument and the expected form."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'contmix_aggregate: kernel_size must be a positive odd int, got {kernel_size!r}')
    K = kernel_size
    for name, tensor in (('weights', weights), ('value', value)):
        if not isinstance(tensor, Tensor):
            raise ValueError(f'contmix_aggregate: {name} must be a Tensor, got {type(tensor).__name__}')
    if value.dim() != 5:
        raise ValueError(f'contmix_aggregate: value must be 5-D [B, G, H, W, C], got shape {tuple(value.shape)}')
    if weights.dim() != 5:
        raise ValueError(f'contmix_aggregate: weights must be 5-D [B, G, H, W, K*K], '
                         f'got shape {tuple(weights.shape)}')
    B, G, H, W, _ = value.shape
    if tuple(weights.shape[:4]) != (B, G, H, W):
        raise ValueError(f'contmix_aggregate: weights {tuple(weights.shape)} and value {tuple(value.shape)} must '
                         f'agree in B, G, H, W (their first four dims)')
    if weights.shape[4] != K * K:
        raise ValueError(f'contmix_aggregate: weights must have kernel_size**2 = {K * K} taps in its last dim, '
                         f'got {weights.shape[4]}')
    if H < K or W < K:
        raise ValueError(f'contmix_aggregate: H and W must be at least kernel_size = {K} (windows are shifted '
                         f'inwards, never padded), got H={H}, W={W}')
    if rpb is not None:
        if not isinstance(rpb, Tensor):
            raise ValueError(f'contmix_aggregate: rpb must be a Tensor or None, got {type(rpb).__name__}')
        if tuple(rpb.shape) != (G, 2 * K - 1, 2 * K - 1):
            raise ValueError(f'contmix_aggregate: rpb must have shape [G, 2K-1, 2K-1] = '
                             f'{[G, 2 * K - 1, 2 * K - 1]}, got {list(rpb.shape)}')


def _check_dtypes_devices(weights: Tensor, value: Tensor, rpb: Optional[Tensor]) -> None:
    """Raise ``TypeError`` for dtype and ``ValueError`` for device mismatches (after autocast)."""
    tensors = [('weights', weights), ('value', value)] + ([('rpb', rpb)] if rpb is not None else [])
    for name, tensor in tensors:
        if not tensor.is_floating_point():
            raise TypeError(f'contmix_aggregate: {name} must be a floating-point tensor, got {tensor.dtype}')
        allowed = {value.dtype, accumulation_dtype(value.dtype)} if name == 'rpb' else {value.dtype}
        if tensor.dtype not in allowed:
            also = f' (or {accumulation_dtype(value.dtype)} for rpb)' if len(allowed) > 1 else ''
            raise TypeError(f'contmix_aggregate: {name} has dtype {tensor.dtype} but value has {value.dtype}; '
                            f'pass tensors of one dtype{also}, or run under torch.autocast')
        if tensor.device != value.device:
            raise ValueError(f'contmix_aggregate: {name} is on {tensor.device} but value is on {value.device}')


def _autocast(weights: Tensor, value: Tensor, rpb: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Under autocast, bring the inputs to the autocast dtype on CUDA (the kernels accumulate in float32), float32
    elsewhere (the CPU kernels are float32/float64); rpb to that dtype's accumulation dtype, so a float32 bias is
    used and differentiated without a round trip through float16."""
    device_type = value.device.type
    # (autocast keeps no state for some device types, 'meta' among them: nothing to cast there)
    if device_type == 'meta' or not torch.is_autocast_enabled(device_type):
        return weights, value, rpb
    dtype = torch.get_autocast_dtype(device_type) if device_type == 'cuda' else torch.float32
    cast = (lambda t, to: t.to(to) if t is not None and t.is_floating_point() else t)
    return cast(weights, dtype), cast(value, dtype), cast(rpb, accumulation_dtype(dtype))


def _check_cuda_kernel_size(kernel_size: Optional[int], source: str) -> None:
    """The CUDA kernels keep a (2K-1)² bias table in shared memory: K <= ``CUDA_MAX_KERNEL_SIZE``."""
    if kernel_size is not None and kernel_size > CUDA_MAX_KERNEL_SIZE:
        raise ValueError(f"contmix_aggregate: kernel_size must be at most {CUDA_MAX_KERNEL_SIZE} for the 'cuda' "
                         f"backend ({source}), got {kernel_size}; pass backend='torch' for larger windows")


def _automatic_backend(value: Tensor, kernel_size: Optional[int] = None) -> str:
    """The fused op's implementation for ``value``'s device: compiled where built, else the torch fallback."""
    if value.device.type == 'cuda':
        if 'cuda' not in _BUILT:
            return 'torch'
        _check_cuda_kernel_size(kernel_size, 'chosen for CUDA tensors')
        return 'cuda'
    # 'meta' tensors (shapes only, as timm's model checks use them) meet the op's registered fake kernel.
    if value.device.type in ('cpu', 'meta') and 'cpu' in _BUILT:
        return 'cpu'
    return 'torch'


def _resolve_backend(backend: Optional[str], value: Tensor, kernel_size: Optional[int] = None) -> str:
    """Pick the backend: the argument, else the environment variable, else by device and dtype. Raise before any
    kernel runs when the chosen compiled backend cannot take the call (``kernel_size`` is checked when given)."""
    requested = backend if backend is not None else (os.environ.get(BACKEND_ENV) or None)
    if requested is None or requested == 'auto':
        return _automatic_backend(value, kernel_size)
    source = 'backend' if backend is not None else f'environment variable {BACKEND_ENV}'
    if requested not in CONTMIX_BACKENDS:
        raise ValueError(f'contmix_aggregate: {source} must be one of {list(CONTMIX_BACKENDS)} or None, '
                         f'got {requested!r}')
    if requested in ('torch', 'unfused'):
        return requested
    if _ext is None:
        raise RuntimeError(f'contmix_aggregate: {source} asks for {requested!r}, but mmoverlock._ext is not built '
                           f'({_EXT_ERROR}); {_BUILD_HINT}. Available here: {available_backends()}.')
    if requested not in _BUILT:
        raise RuntimeError(f'contmix_aggregate: {source} asks for {requested!r}, but mmoverlock._ext was built '
                           f'without it (built: {list(_BUILT)}); {_BUILD_HINT}.')
    if requested == 'cuda':
        _check_cuda_kernel_size(kernel_size, f'asked for by the {source}')
    if value.device.type != requested:
        raise ValueError(f'contmix_aggregate: {source} {requested!r} needs {requested} tensors, got tensors on '
                         f'{value.device}')
    return requested


def unfused_weights(weights: Tensor, rpb: Optional[Tensor], kernel_size: int, softmax: bool) -> Tensor:
    """The aggregation weights [B, G, H, W, K*K] as the unfused formulation computes them: ``rpb`` gathered for
    every tap and added to the logits, then the softmax over the taps, each step a whole tensor in torch (in the
    promoted dtype of ``weights`` and ``rpb``)."""
    if rpb is not None:
        win = Windows(weights, kernel_size)  # only B, G, H, W of its argument are read
        weights = weights + win.chunk_bias(win.bias_table(rpb, rpb.dtype), slice(None))
    return weights.softmax(dim=-1) if softmax else weights


def contmix_aggregate(weights: Tensor,
                      value: Tensor,
                      kernel_size: int,
                      rpb: Optional[Tensor] = None,
                      softmax: bool = False,
                      backend: Optional[str] = None) -> Tensor:
    """Aggregate every pixel's K×K neighbourhood of ``value`` with its own (biased, softmaxed) weights.

    Args:
        weights (Tensor): Per-pixel logits [B, G, H, W, K*K], tap ``t = a*K + e`` for window row ``a``, column ``e``.
        value (Tensor): Values [B, G, H, W, C], floating point, of the dtype of ``weights`` (outside autocast).
            Non-contiguous views of either are accepted.
        kernel_size (int): Odd window size K, with ``H >= K`` and ``W >= K``.
        rpb (Tensor, optional): Relative position bias [G, 2K-1, 2K-1] added to the logits, in the dtype of
            ``value`` or its accumulation dtype (float32 for float16/bfloat16; its gradient then comes back in
            float32 with no float16 rounding). Defaults to ``None``.
        softmax (bool): Softmax over the K*K taps before aggregating. Defaults to ``False``.
        backend (str, optional): ``'cpu'``, ``'cuda'`` or ``'torch'`` to force one, ``'unfused'`` for the authors'
            formulation (see the module docstring); ``None`` picks ``'cuda'`` for CUDA tensors, else ``'cpu'`` when
            compiled, else ``'torch'``, unless the environment variable ``MMOVERLOCK_CONTMIX_BACKEND`` names one.
            Defaults to ``None``.

    Returns:
        Tensor: [B, G, H, W, C] (contiguous) in the inputs' dtype (under CPU autocast: float32), differentiable in
        ``weights``, ``value`` and ``rpb``. NaN in an input stays NaN in every output pixel that it reaches.

    Raises:
        ValueError: A malformed shape, ``kernel_size``, device or backend name.
        TypeError: Mismatched or unsupported dtypes outside autocast.
        RuntimeError: A backend that this build does not have (the message says how to build it).
    """
    _check_shapes(weights, value, kernel_size, rpb)
    weights, value, rpb = _autocast(weights, value, rpb)
    _check_dtypes_devices(weights, value, rpb)
    name = _resolve_backend(backend, value, kernel_size)
    if name == 'unfused':
        probs = unfused_weights(weights, rpb, kernel_size, bool(softmax)).to(value.dtype)
        return contmix_aggregate(probs, value, kernel_size, backend=_automatic_backend(value, kernel_size))
    if name == 'torch':
        if is_tracing(compiling=False):
            return contmix_torch_traceable(weights, value, rpb, kernel_size, bool(softmax))
        return ContMixTorch.apply(weights, value, rpb, kernel_size, bool(softmax))
    if name == 'cpu' and value.dtype in _CPU_CAST_DTYPES:
        # The CPU kernels are float32/float64: compute in float32 and return the input dtype (autograd sees the
        # casts, so gradients come back in the input dtype too).
        rpb = rpb.float() if rpb is not None else None
        out = torch.ops.mmoverlock.contmix_forward(weights.float(), value.float(), rpb, kernel_size, bool(softmax))[0]
        return out.to(value.dtype)
    return torch.ops.mmoverlock.contmix_forward(weights, value, rpb, kernel_size, bool(softmax))[0]
