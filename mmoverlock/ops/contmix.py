"""The ContMix core: softmax-weighted aggregation of each pixel's K×K neighbourhood with per-pixel dynamic kernels.

For ``value`` [B, G, H, W, C] and per-pixel logits ``weights`` [B, G, H, W, K*K] (tap ``t = a*K + e``), pixel
``(i, j)`` aggregates the K×K window starting at ``(s(i), s(j))`` with ``s(i) = clamp(i - K//2, 0, H - K)``: windows
are shifted inwards at the borders, never padded. ``rpb`` [G, 2K-1, 2K-1] adds
``rpb[g, s(i)+a-i+K-1, s(j)+e-j+K-1]`` to the logit of tap ``(a, e)``; ``softmax`` normalises over the K*K taps.
Without bias and softmax this is NATTEN 0.17's ``na2d_av`` (dilation 1).

Backends:

* ``'cpu'`` / ``'cuda'``: the compiled operators ``torch.ops.mmoverlock.contmix_forward`` / ``contmix_backward`` from
  ``mmoverlock._ext`` (see ``csrc/``). Bias, softmax and aggregation are fused; backward recomputes the softmax from
  the inputs, so only the inputs are saved for it. Autograd and fake-tensor support are registered here with
  ``torch.library``, which makes the op work with ``torch.compile``. The CPU kernels are float32/float64; float16 and
  bfloat16 inputs are cast to float32 around them and the result cast back (the CUDA kernels take all four).
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
from torch.autograd.function import once_differentiable

from .tracing import is_tracing

__all__ = ['available_backends', 'contmix_aggregate', 'BACKEND_ENV']

#: Environment variable that forces a backend (``cpu``, ``cuda`` or ``torch``) for every call without ``backend=``.
BACKEND_ENV = 'MMOVERLOCK_CONTMIX_BACKEND'
_BACKENDS = ('cpu', 'cuda', 'torch')
#: Dtypes that the 'cpu' backend runs in float32 (its kernels are float32/float64), returning the input dtype.
_CPU_CAST_DTYPES = (torch.float16, torch.bfloat16)
#: Largest ``kernel_size`` of the CUDA kernels (they keep a (2K-1)² bias table per block in shared memory).
CUDA_MAX_KERNEL_SIZE = 31
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
        return value.new_empty(value.shape)  # the kernel returns a contiguous tensor

    @torch.library.register_fake('mmoverlock::contmix_backward')
    def _contmix_backward_fake(grad_out, weights, value, rpb, kernel_size, softmax):
        grad_rpb = rpb.new_empty(rpb.shape) if rpb is not None else value.new_empty((0, ))
        return weights.new_empty(weights.shape), value.new_empty(value.shape), grad_rpb

    def _setup_context(ctx, inputs, output):
        weights, value, rpb, kernel_size, softmax = inputs
        # Inputs only: the biased logits and the softmax are recomputed in backward (that is the memory saving).
        ctx.save_for_backward(weights, value, rpb)
        ctx.kernel_size = kernel_size
        ctx.softmax = softmax

    def _backward(ctx, grad_out):
        weights, value, rpb = ctx.saved_tensors
        grad_weights, grad_value, grad_rpb = torch.ops.mmoverlock.contmix_backward(
            grad_out, weights, value, rpb, ctx.kernel_size, ctx.softmax)
        return grad_weights, grad_value, (grad_rpb if rpb is not None else None), None, None

    torch.library.register_autograd('mmoverlock::contmix_forward', _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# The pure-torch fallback.
#
# Windows are shifted inwards, so along an axis of length L the neighbour of pixel i at window offset a is
# s(i) + a: a for the first K//2 pixels, L - K + a for the last K//2, and i - K//2 + a for the L - K + 1 pixels in
# between. Per window row a, the rows s(i) + a of the value map are gathered once (one value-sized buffer, K times
# in all). Along the columns, tap (a, e) of the middle band of W - K + 1 columns then reads the slice
# [e, e + W - K + 1) of those rows: one multiply-add over the band per tap. The K//2 border columns on either side
# read the fixed columns 0..K-1 (or W-K..W-1) for every e, a small matmul over the K taps of the window row.
# Backward is the same walk transposed (slice-adds into the gathered rows, then added back to rows s(i) + a).
# The softmax is normalised by a per-pixel log-sum-exp computed over chunks of pixel rows, and the probabilities
# are evaluated one window row (K taps per pixel) at a time, so the only K*K-per-pixel tensors are the weights and
# their gradient.
# ---------------------------------------------------------------------------------------------------------------
def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype ContMix accumulates ``dtype`` inputs in (float32 for float16/bfloat16, like the CUDA kernels), and
    the other dtype ``rpb`` may have: a float32 bias of a float16 model then gets its float32 gradient directly,
    never rounded to float16 (where a sum over every pixel overflows first)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype



class _Windows:
    """Index vectors and bias lookups of one call, for value [B, G, H, W, C] and window size K.

    Attributes:
        starts (Tensor): [H] window start ``s(i)``; window row ``a`` of pixel row ``i`` is ``starts[i] + a``.
        bias_rows (Tensor): [H] ``s(i) - i + K - 1``; window row ``a`` reads bias row ``bias_rows[i] + a``.
        bias_cols (Tensor): [W*K] bias column of pixel column ``j`` and window column ``e`` at ``j*K + e``.
        neighbour_cols (Tensor): [W*K] neighbour column ``s(j) + e`` at ``j*K + e``.
    """

    def __init__(self, value: Tensor, K: int):
        _, _, self.H, self.W, self.C = value.shape
        self.K, self.half = K, K // 2
        device = value.device
        taps = torch.arange(K, device=device)
        rows, cols = torch.arange(self.H, device=device), torch.arange(self.W, device=device)
        col_starts = (cols - K // 2).clamp(0, self.W - K)
        self.starts = (rows - K // 2).clamp(0, self.H - K)
        self.bias_rows = self.starts - rows + K - 1
        self.bias_cols = ((col_starts - cols + K - 1)[:, None] + taps).flatten()
        self.neighbour_cols = (col_starts[:, None] + taps).flatten()

    def split_columns(self, tensor: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Views of the left border, middle band and right border columns of a [..., W, X] tensor."""
        h = self.half
        return tensor[..., :h, :], tensor[..., h:self.W - h, :], tensor[..., self.W - h:, :]

    def row_chunks(self) -> List[slice]:
        """Chunks of pixel rows whose K*K logits are at most about the size of the value map."""
        step = max(1, self.H * self.C // (self.K * self.K))
        return [slice(i, min(i + step, self.H)) for i in range(0, self.H, step)]

    def bias_table(self, rpb: Optional[Tensor], dtype) -> Optional[Tensor]:
        """[G, 2K-1, W, K]: for every bias row, the bias of window column ``e`` at pixel column ``j``."""
        if rpb is None:
            return None
        G, R, _ = rpb.shape
        return rpb.to(dtype).index_select(2, self.bias_cols).view(G, R, self.W, self.K)

    def _tap_bias_rows(self, rows: slice) -> Tensor:
        """[n*K] bias row of pixel row ``i`` (of ``rows``) and window row ``a`` at ``i*K + a``."""
        taps = torch.arange(self.K, device=self.bias_rows.device)
        return (self.bias_rows[rows, None] + taps).flatten()

    def chunk_bias(self, table: Tensor, rows: slice) -> Tensor:
        """[G, n, W, K*K]: the bias of every tap at the pixels of ``rows``."""
        G, _, W, K = table.shape
        bias = table.index_select(1, self._tap_bias_rows(rows)).view(G, -1, K, W, K)  # [G, n, a, W, e]
        return bias.transpose(2, 3).reshape(G, -1, W, K * K)

    def add_chunk_bias_grad(self, grad_table: Tensor, rows: slice, grad_bias: Tensor) -> None:
        """Accumulate into ``grad_table`` the gradient [G, n, W, K*K] of ``chunk_bias(table, rows)``."""
        G, _, W, K = grad_table.shape
        grad_bias = grad_bias.view(G, -1, W, K, K).transpose(2, 3).reshape(G, -1, W, K)  # [G, n*K, W, e]
        grad_table.index_add_(1, self._tap_bias_rows(rows), grad_bias)

    def chunk_logits(self, weights: Tensor, table: Optional[Tensor], rows: slice, dtype) -> Tensor:
        """[B, G, n, W, K*K]: the biased logits of the pixels of ``rows``, in a new tensor."""
        logits = weights[:, :, rows].to(dtype, copy=True)
        return logits if table is None else logits.add_(self.chunk_bias(table, rows))

    def log_normaliser(self, weights: Tensor, table: Optional[Tensor], dtype) -> Tensor:
        """[B, G, H, W, 1]: log-sum-exp of the biased logits over the K*K taps of every pixel."""
        chunks = []
        for rows in self.row_chunks():  # logsumexp, in place on the chunk
            logits = self.chunk_logits(weights, table, rows, dtype)
            high = logits.amax(-1, keepdim=True)
            chunks.append(logits.sub_(high).exp_().sum(-1, keepdim=True).log_().add_(high))
            del logits
        return torch.cat(chunks, dim=2)

    def row_probs(self, weights: Tensor, table: Optional[Tensor], log_norm: Optional[Tensor], a: int,
                  dtype) -> Tensor:
        """[B, G, H, W, K]: the aggregation weights of window row ``a`` (taps ``a*K .. a*K + K-1``), softmax
        probabilities when ``log_norm`` is given, else the biased logits, in a new tensor."""
        K, h, H = self.K, self.half, self.H
        logits = weights[..., a * K:(a + 1) * K].to(dtype, copy=True)
        if table is not None:  # bias row bias_rows[i] + a, which is a + K//2 for every row of the middle band
            logits[:, :, :h] += table.index_select(1, self.bias_rows[:h] + a)
            logits[:, :, h:H - h] += table[:, a + h, None]
            logits[:, :, H - h:] += table.index_select(1, self.bias_rows[H - h:] + a)
        return logits if log_norm is None else logits.sub_(log_norm).exp_()


def _contmix_torch_forward(weights: Tensor, value: Tensor, rpb: Optional[Tensor], kernel_size: int,
                           softmax: bool) -> Tensor:
    """ContMix forward tap by tap (see the section comment). Extra memory: the accumulator, one gathered row map
    and the probabilities of one window row (K/C of a value-sized buffer)."""
    B, G, H, W, C = value.shape
    K = kernel_size
    acc = accumulation_dtype(value.dtype)
    win = _Windows(value, K)
    table = win.bias_table(rpb, acc)
    log_norm = win.log_normaliser(weights, table, acc) if softmax else None
    out = value.new_zeros((B, G, H, W, C), dtype=acc)
    out_left, out_mid, out_right = win.split_columns(out)
    for a in range(K):
        probs = win.row_probs(weights, table, log_norm, a, acc)
        probs_left, probs_mid, probs_right = win.split_columns(probs)
        rows = value.index_select(2, win.starts + a).to(acc)  # [B, G, H, W, C]: row s(i) + a at row i
        out_left += probs_left @ rows[..., :K, :]
        out_right += probs_right @ rows[..., W - K:, :]
        for e in range(K):
            out_mid.addcmul_(probs_mid[..., e:e + 1], rows[..., e:e + W - K + 1, :])
        del probs, probs_left, probs_mid, probs_right, rows  # freed before the next window row's
    return out.to(value.dtype)


def _contmix_torch_traceable(weights: Tensor, value: Tensor, rpb: Optional[Tensor], kernel_size: int,
                             softmax: bool) -> Tensor:
    """ContMix forward in about 10*K graph nodes, for ``torch.export``, ONNX and ``torch.jit.trace``.

    Unrolled, the tap-by-tap forward is thousands of nodes, which exporters translate slowly. Here the softmax is
    taken over the whole [B, G, H, W, K*K] logits and each window row gathers its K neighbours per pixel at once,
    at the price of the probabilities and K value-sized buffers of extra memory (for inference: when exporting,
    nothing is kept for backward).
    """
    B, G, H, W, C = value.shape
    K = kernel_size
    acc = accumulation_dtype(value.dtype)
    win = _Windows(value, K)
    logits = weights.to(acc)
    if rpb is not None:
        logits = logits + win.chunk_bias(win.bias_table(rpb, acc), slice(None))
    probs = logits.softmax(-1) if softmax else logits
    out = None
    for a in range(K):
        rows = value.index_select(2, win.starts + a).to(acc)
        windows = rows.index_select(3, win.neighbour_cols).view(B, G, H, W, K, C)
        term = (probs[..., a * K:(a + 1) * K].unsqueeze(-2) @ windows).squeeze(-2)
        out = term if out is None else out + term
    return out.to(value.dtype)


def _contmix_torch_backward(grad_out: Tensor, weights: Tensor, value: Tensor, rpb: Optional[Tensor],
                            kernel_size: int, softmax: bool,
                            need_rpb: bool) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Gradients of weights, value and (when ``need_rpb``) rpb, the softmax recomputed from the inputs.

    The forward's walk, transposed. Per window row: the gradient of each probability is the dot product of the
    output gradient with the gathered neighbour, and the value gradient is accumulated in the coordinates of the
    gathered rows, then added back to rows ``s(i) + a``. Then, per chunk of pixel rows, the softmax backward and
    the bias gradient. Extra memory: the gathered rows, one scratch buffer and one window row of probabilities.
    """
    B, G, H, W, C = value.shape
    K, T = kernel_size, kernel_size * kernel_size
    Wm = W - K + 1
    acc = accumulation_dtype(value.dtype)
    win = _Windows(value, K)
    table = win.bias_table(rpb, acc)
    log_norm = win.log_normaliser(weights, table, acc) if softmax else None

    grad = grad_out.to(acc).contiguous()
    grad_left, grad_mid, grad_right = win.split_columns(grad)
    grad_logits = grad.new_empty((B, G, H, W, T))  # dL/dp first, dL/dlogit at the end
    grad_value = grad.new_zeros((B, G, H, W, C))
    rows = grad.new_empty((B, G, H, W, C))
    scratch = grad.new_empty((B, G, H, W, C))
    product = scratch.view(-1)[:B * G * H * Wm * C].view(-1, C)  # grad * neighbour over the middle band
    ones = grad.new_ones(C)
    for a in range(K):
        if value.dtype == acc:
            torch.index_select(value, 2, win.starts + a, out=rows)
        else:
            rows.copy_(value.index_select(2, win.starts + a))
        # dL/dp of the K taps of window row a. The dot product over channels is a matrix-vector product: torch
        # reduces short inner dimensions slowly.
        dprobs_left, dprobs_mid, dprobs_right = win.split_columns(grad_logits[..., a * K:(a + 1) * K])
        dprobs_left.copy_(grad_left @ rows[..., :K, :].mT)
        dprobs_right.copy_(grad_right @ rows[..., W - K:, :].mT)
        for e in range(K):
            torch.mul(grad_mid, rows[..., e:e + Wm, :], out=product.view(B, G, H, Wm, C))
            dprobs_mid[..., e].copy_(torch.mv(product, ones).view(B, G, H, Wm))
        # dL/dvalue in the coordinates of the gathered rows, then added back to rows s(i) + a.
        probs = win.row_probs(weights, table, log_norm, a, acc)
        probs_left, probs_mid, probs_right = win.split_columns(probs)
        grad_rows = scratch.zero_()
        grad_rows[..., :K, :] += probs_left.mT @ grad_left
        grad_rows[..., W - K:, :] += probs_right.mT @ grad_right
        for e in range(K):
            grad_rows[..., e:e + Wm, :].addcmul_(probs_mid[..., e:e + 1], grad_mid)
        grad_value.index_add_(2, win.starts + a, grad_rows)
        del probs, probs_left, probs_mid, probs_right
    del rows, scratch, product, grad_rows

    grad_rpb = None
    if softmax or need_rpb:
        grad_table = torch.zeros_like(table) if need_rpb else None
        for chunk in win.row_chunks():
            grad_chunk = grad_logits[:, :, chunk]  # contiguous [B, G, n, W, T]
            if softmax:  # dL/dlogit = p * (dL/dp - sum_t p_t dL/dp_t), p recomputed
                probs = win.chunk_logits(weights, table, chunk, acc).sub_(log_norm[:, :, chunk]).exp_()
                grad_chunk.mul_(probs)
                grad_chunk.sub_(probs.mul_(grad_chunk.sum(-1, keepdim=True)))
                del probs
            if grad_table is not None:
                win.add_chunk_bias_grad(grad_table, chunk, grad_chunk.sum(0))
        if grad_table is not None:  # transpose of bias_table: sum over pixel columns into bias columns
            R = 2 * K - 1
            grad_rpb = grad_table.new_zeros((R, G * R)).index_add_(
                0, win.bias_cols, grad_table.permute(2, 3, 0, 1).reshape(W * K, G * R))
            grad_rpb = grad_rpb.view(R, G, R).permute(1, 2, 0).to(rpb.dtype)
    return grad_logits.to(weights.dtype), grad_value.to(value.dtype), grad_rpb


class _ContMixTorch(torch.autograd.Function):
    """Pure-torch ContMix for training: saves only the inputs, recomputes the softmax in backward."""

    @staticmethod
    def forward(ctx, weights, value, rpb, kernel_size, softmax):
        ctx.save_for_backward(weights, value, rpb)
        ctx.kernel_size, ctx.softmax = kernel_size, softmax
        with torch.autocast(value.device.type, enabled=False):
            return _contmix_torch_forward(weights, value, rpb, kernel_size, softmax)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        weights, value, rpb = ctx.saved_tensors
        with torch.autocast(value.device.type, enabled=False):
            grad_weights, grad_value, grad_rpb = _contmix_torch_backward(
                grad_out, weights, value, rpb, ctx.kernel_size, ctx.softmax,
                rpb is not None and ctx.needs_input_grad[2])
        return grad_weights, grad_value, grad_rpb, None, None


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


def _resolve_backend(backend: Optional[str], value: Tensor, kernel_size: Optional[int] = None) -> str:
    """Pick the backend: the argument, else the environment variable, else by device and dtype. Raise before any
    kernel runs when the chosen compiled backend cannot take the call (``kernel_size`` is checked when given)."""
    requested = backend if backend is not None else (os.environ.get(BACKEND_ENV) or None)
    if requested is None or requested == 'auto':
        if value.device.type == 'cuda':
            if 'cuda' not in _BUILT:
                return 'torch'
            _check_cuda_kernel_size(kernel_size, 'chosen for CUDA tensors')
            return 'cuda'
        # 'meta' tensors (shapes only, as timm's model checks use them) meet the op's registered fake kernel.
        if value.device.type in ('cpu', 'meta') and 'cpu' in _BUILT:
            return 'cpu'
        return 'torch'
    source = 'backend' if backend is not None else f'environment variable {BACKEND_ENV}'
    if requested not in _BACKENDS:
        raise ValueError(f'contmix_aggregate: {source} must be one of {list(_BACKENDS)} or None, got {requested!r}')
    if requested == 'torch':
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
        backend (str, optional): ``'cpu'``, ``'cuda'`` or ``'torch'`` to force one; ``None`` picks ``'cuda'`` for CUDA
            tensors, else ``'cpu'`` when compiled, else ``'torch'``, unless the environment variable
            ``MMOVERLOCK_CONTMIX_BACKEND`` names one. Defaults to ``None``.

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
    if name == 'torch':
        if is_tracing(compiling=False):
            return _contmix_torch_traceable(weights, value, rpb, kernel_size, bool(softmax))
        return _ContMixTorch.apply(weights, value, rpb, kernel_size, bool(softmax))
    if name == 'cpu' and value.dtype in _CPU_CAST_DTYPES:
        # The CPU kernels are float32/float64: compute in float32 and return the input dtype (autograd sees the
        # casts, so gradients come back in the input dtype too).
        rpb = rpb.float() if rpb is not None else None
        out = torch.ops.mmoverlock.contmix_forward(weights.float(), value.float(), rpb, kernel_size, bool(softmax))
        return out.to(value.dtype)
    return torch.ops.mmoverlock.contmix_forward(weights, value, rpb, kernel_size, bool(softmax))
