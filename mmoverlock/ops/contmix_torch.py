"""The pure-torch ContMix: the fallback of :func:`mmoverlock.ops.contmix_aggregate` where the extension is not built,
and the formulation that tracing and export record. Same semantics and gradients as the compiled op.

How it works: windows are shifted inwards, so along an axis of length L the neighbour of pixel i at window offset
a is s(i) + a: a for the first K//2 pixels, L - K + a for the last K//2, and i - K//2 + a for the L - K + 1 pixels in between. Per
window row a, the rows s(i) + a of the value map are gathered once (one value-sized buffer, K times in all). Along
the columns, tap (a, e) of the middle band of W - K + 1 columns then reads the slice [e, e + W - K + 1) of those
rows: one multiply-add over the band per tap. The K//2 border columns on either side read the fixed columns 0..K-1
(or W-K..W-1) for every e, a small matmul over the K taps of the window row. Backward is the same walk transposed
(slice-adds into the gathered rows, then added back to rows s(i) + a). The softmax is normalised by a per-pixel log-
sum-exp computed over chunks of pixel rows, and the probabilities are evaluated one window row (K taps per pixel) at
a time, so the only K*K-per-pixel tensors are the weights and their gradient.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype ContMix accumulates ``dtype`` inputs in (float32 for float16/bfloat16, like the CUDA kernels), and
    the other dtype ``rpb`` may have: a float32 bias of a float16 model then gets its float32 gradient directly,
    never rounded to float16 (where a sum over every pixel overflows first)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype



class Windows:
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


def contmix_torch_forward(weights: Tensor, value: Tensor, rpb: Optional[Tensor], kernel_size: int,
                           softmax: bool) -> Tensor:
    """ContMix forward tap by tap (see the section comment). Extra memory: the accumulator, one gathered row map
    and the probabilities of one window row (K/C of a value-sized buffer)."""
    B, G, H, W, C = value.shape
    K = kernel_size
    acc = accumulation_dtype(value.dtype)
    win = Windows(value, K)
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


def contmix_torch_traceable(weights: Tensor, value: Tensor, rpb: Optional[Tensor], kernel_size: int,
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
    win = Windows(value, K)
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


def contmix_torch_backward(grad_out: Tensor, weights: Tensor, value: Tensor, rpb: Optional[Tensor],
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
    win = Windows(value, K)
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


class ContMixTorch(torch.autograd.Function):
    """Pure-torch ContMix for training: saves only the inputs, recomputes the softmax in backward."""

    @staticmethod
    def forward(ctx, weights, value, rpb, kernel_size, softmax):
        ctx.save_for_backward(weights, value, rpb)
        ctx.kernel_size, ctx.softmax = kernel_size, softmax
        with torch.autocast(value.device.type, enabled=False):
            return contmix_torch_forward(weights, value, rpb, kernel_size, softmax)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        weights, value, rpb = ctx.saved_tensors
        with torch.autocast(value.device.type, enabled=False):
            grad_weights, grad_value, grad_rpb = contmix_torch_backward(
                grad_out, weights, value, rpb, ctx.kernel_size, ctx.softmax,
                rpb is not None and ctx.needs_input_grad[2])
        return grad_weights, grad_value, grad_rpb, None, None
