"""Depthwise convolution with a fast CPU backward, for OverLoCK's large (up to 19 x 19) depthwise kernels.

On the CPU, oneDNN computes the weight gradient of a large depthwise kernel on a slow path (a 17 x 17 kernel over
a 64 x 128 x 128 map: about 0.7 s, against 20 ms for the forward conv). That gradient is itself a depthwise
correlation, ``grad_w[c, a, e] = sum_{n,i,j} grad_out[n, c, i, j] * x_pad[n, c, i + r*a, j + r*e]``, i.e. a
depthwise conv of the padded input with ``grad_out`` as the kernel and the dilation ``r`` as the stride, which
oneDNN's forward path runs about 30 times faster. Dilated kernels that oneDNN's direct depthwise kernels do not
cover (a span above ``DENSE_DILATED_SPAN``) run as the equivalent dense kernel with zeros between the taps, which is
exact and several times faster there.

Everything else (CUDA, tracing/export, CPU autocast, small kernels, no gradient needed) goes to ``F.conv2d`` unchanged.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

#: Depthwise kernels of at least this size take the custom weight gradient (below it oneDNN's own is faster).
FAST_GRAD_MIN_KERNEL = 5
#: Dilated depthwise kernels whose span ``r * (k - 1) + 1`` exceeds this run as dense kernels on the CPU.
DENSE_DILATED_SPAN = 13


def dilated_to_dense(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """Spread a depthwise ``k x k`` kernel with the given dilation into the dense ``(d(k-1)+1)^2`` kernel it equals."""
    if dilation == 1:
        return kernel
    k = kernel.shape[-1]
    size = dilation * (k - 1) + 1
    dense = kernel.new_zeros(kernel.shape[0], kernel.shape[1], size, size)
    dense[:, :, ::dilation, ::dilation] = kernel
    return dense


class _DepthwiseConv2d(torch.autograd.Function):
    """Stride-1 depthwise conv whose weight gradient is computed as a forward depthwise conv (see module doc)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, dilation: int):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None
        return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        p, r = ctx.padding, ctx.dilation
        batch, channels, height, width = x.shape
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad_out, x, weight, None, [1, 1], [p, p], [r, r], False,
                                                         [0, 0], channels, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            # Channels (c, n) of the padded input, correlated per channel c with grad_out's maps (c, n), summed over n.
            x_pad = F.pad(x, [p] * 4).transpose(0, 1).reshape(1, channels * batch, height + 2 * p, width + 2 * p)
            kernel = grad_out.transpose(0, 1)  # [C, N, H', W']: one group of N input maps per channel
            grad_w = F.conv2d(x_pad, kernel, None, r, 0, 1, channels).view(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def is_tracing() -> bool:
    """Whether torch.jit.trace, torch.compile or torch.export is recording this call (plain ops only then)."""
    exporting = getattr(torch.compiler, 'is_exporting', lambda: False)
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or exporting()


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, padding: int = 0,
                     dilation: int = 1) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, 1, padding, dilation, groups=C)`` with the CPU fast paths of this module.

    Args:
        x (Tensor): Input [N, C, H, W] (any memory format; the output follows it).
        weight (Tensor): Depthwise kernel [C, 1, k, k].
        bias (Tensor, optional): [C]. Defaults to ``None``.
        padding (int): Zero padding on every side. Defaults to 0.
        dilation (int): Dilation. Defaults to 1.

    Returns:
        Tensor: [N, C, H + 2p - d(k-1), W + 2p - d(k-1)].
    """
    if x.device.type != 'cpu' or is_tracing():
        return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])
    k = weight.shape[-1]
    if dilation > 1 and dilation * (k - 1) + 1 > DENSE_DILATED_SPAN:
        weight, k, dilation = dilated_to_dense(weight, dilation), dilation * (k - 1) + 1, 1
    autocast = torch.is_autocast_enabled('cpu')
    if k >= FAST_GRAD_MIN_KERNEL and (autocast or x.dtype in (torch.float16, torch.bfloat16)):
        # oneDNN runs half-precision depthwise convs this large on a slow path (one bfloat16 17 x 17 conv over a
        # 16 x 24 x 32 map took over a minute, against milliseconds in float32): compute them in float32 and return
        # the dtype the conv would have returned. Autocast stays off inside, so the backward sees one dtype too.
        dtype = torch.get_autocast_dtype('cpu') if autocast else x.dtype
        with torch.autocast('cpu', enabled=False):
            out = depthwise_conv2d(x.float(), weight.float(), None if bias is None else bias.float(), padding,
                                   dilation)
        return out.to(dtype)
    if autocast:  # small kernels: the plain conv gets autocast's casts (the custom backward would mix dtypes)
        return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if not needs_grad or k < FAST_GRAD_MIN_KERNEL:
        return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])
    return _DepthwiseConv2d.apply(x, weight, bias, padding, dilation)


class DepthwiseConv2d(nn.Conv2d):
    """A stride-1 depthwise ``nn.Conv2d`` (same parameters and state-dict keys) that runs ``depthwise_conv2d``."""

    def __init__(self, num_channels: int, kernel_size: int, padding: Optional[int] = None, dilation: int = 1,
                 bias: bool = True):
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        super().__init__(num_channels, num_channels, kernel_size, padding=padding, dilation=dilation,
                         groups=num_channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight, self.bias, self.padding[0], self.dilation[0])
