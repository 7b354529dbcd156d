"""1 x 1 convolutions whose backward runs as the matrix products of ``nn.Linear``'s backward.

A stride-1, unpadded 1 x 1 conv is a linear map over pixels, ``Y = X W^T + b``. oneDNN's forward for it runs at its
GEMM's rate, but its backward does not: over the 1 x 1 convs of an OverLoCK-T training step at 512 x 512 it took
1.14x (best ISA) and 1.11x (AVX2 forced) the time of the two ``torch.mm`` calls of the same products, on a 2-core
Xeon (``tools/analysis_tools/benchmark_pointwise.py``, ``benchmarks/pointwise/cpu``). ConvNeXt-T, whose 1 x 1 layers
are ``nn.Linear``, already takes the GEMM path; ``pointwise_conv2d`` puts OverLoCK's there too.

``pointwise_conv2d(x, weight, bias)`` is ``F.conv2d(x, weight, bias)`` for a [O, C, 1, 1] kernel: ``F.conv2d``
forward; backward (``pointwise_conv2d_backward``) ``grad_x = G W``, ``grad_w = G^T X`` and ``grad_b = sum G`` over
the pixels, where ``X`` and ``G`` are the input and output gradient as matrices without a copy: channels-last maps
are [pixels, channels] (also a channel slice of one, such as the ContMix block's query features: rows further apart
than their length), dense NCHW ones [channels, pixels] per sample. Elsewhere (other layouts, devices or dtypes,
autocast, tracing and export) it is ``F.conv2d`` and its own backward.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .tracing import is_tracing


def _pixel_rows(t: torch.Tensor) -> Optional[torch.Tensor]:
    """``t`` [N, C, H, W] as its [pixels, C] matrix, a view, where its pixels are evenly spaced rows of unit-stride
    channels: a dense channels-last map, or a channel slice of one (for which oneDNN's backward copied the slice and
    ran at half its GEMM rate: 1.45 against 0.91 ms for the 256 -> 128 conv at 32 x 32 of OverLoCK-T's ContMix blocks,
    2 threads on a 2-core Xeon). ``None`` otherwise."""
    if t.stride(1) != 1 and t.shape[1] != 1:  # an NCHW map: decided without a failing view (an exception, ~7x the time)
        return None
    try:
        rows = t.permute(0, 2, 3, 1).view(-1, t.shape[1])
    except RuntimeError:  # the pixels are not one stride apart
        return None
    return rows if rows.stride(1) == 1 and rows.stride(0) >= rows.shape[1] else None


def _takes_products(*tensors: torch.Tensor) -> bool:
    """Whether the backward runs as matrix products: CPU float32/float64 tensors of one dtype, nothing traced."""
    return (not is_tracing() and all(t.device.type == 'cpu' and t.dtype == tensors[0].dtype for t in tensors)
            and tensors[0].dtype in (torch.float32, torch.float64))


def _check_kernel(weight: torch.Tensor) -> None:
    if is_tracing():  # (a traced shape check is a TracerWarning; the recorded F.conv2d checks the kernel itself)
        return
    if weight.dim() != 4 or weight.shape[2:] != (1, 1):
        raise ValueError(f'pointwise_conv2d: weight must be a 1 x 1 kernel [O, C, 1, 1], got {tuple(weight.shape)}')


def pointwise_conv2d_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                              output_mask: Sequence[bool]) -> Tuple[Optional[torch.Tensor], ...]:
    """Input, weight and bias gradients of ``F.conv2d(x, weight, bias)`` for a [O, C, 1, 1] ``weight`` (``None``
    where ``output_mask`` is false); the input gradient comes in ``x``'s memory format."""
    _check_kernel(weight)
    products = _takes_products(grad_out, x, weight)
    rows_x, rows_g = (_pixel_rows(x), _pixel_rows(grad_out)) if products else (None, None)
    by_rows = rows_x is not None and rows_g is not None
    if not (by_rows or products and x.is_contiguous() and grad_out.is_contiguous()):
        return tuple(torch.ops.aten.convolution_backward(
            grad_out, x, weight, [weight.shape[0]] if output_mask[2] else None, [1, 1], [0, 0], [1, 1], False,
            [0, 0], 1, list(output_mask)))
    n, channels, height, width = x.shape
    w = weight.view(weight.shape[0], channels)
    grad_x = grad_w = grad_b = None
    if by_rows:  # [pixels, channels] matrices
        if output_mask[0]:
            grad_x = torch.mm(rows_g, w).view(n, height, width, channels).permute(0, 3, 1, 2)
        if output_mask[1]:
            grad_w = torch.mm(rows_g.t(), rows_x).view_as(weight)
        if output_mask[2]:
            grad_b = rows_g.sum(0)
        return grad_x, grad_w, grad_b
    cols_x, cols_g = x.view(n, channels, -1), grad_out.view(n, w.shape[0], -1)  # [channels, pixels] per sample
    if output_mask[0]:
        grad_x = torch.matmul(w.t(), cols_g).view_as(x)
    if output_mask[1]:
        products = torch.bmm(cols_g, cols_x.transpose(1, 2))
        grad_w = (products[0] if n == 1 else products.sum(0)).view_as(weight)
    if output_mask[2]:
        grad_b = cols_g.sum((0, 2))
    return grad_x, grad_w, grad_b


class _PointwiseConv2d(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        return pointwise_conv2d_backward(grad_out, x, weight, [needs[0], needs[1], ctx.has_bias and needs[2]])


def pointwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a [O, C, 1, 1] ``weight``, whose backward runs as matrix products where a
    gradient is wanted on CPU float32/float64 without autocast (see the module's docstring)."""
    _check_kernel(weight)
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if (torch.is_grad_enabled() and any(t.requires_grad for t in tensors) and _takes_products(*tensors)
            and not torch.is_autocast_enabled('cpu')):
        return _PointwiseConv2d.apply(x, weight, bias)
    return F.conv2d(x, weight, bias)


class PointwiseConv2d(nn.Conv2d):
    """A 1 x 1 ``nn.Conv2d`` (same parameters and state-dict keys) that runs ``pointwise_conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        # (nn.Conv2d.forward calls this with its own parameters; a BN folded into the conv passes its own)
        return pointwise_conv2d(x, weight, bias)
