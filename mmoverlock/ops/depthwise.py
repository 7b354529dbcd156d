"""Depthwise convolution with a fast CPU backward, for OverLoCK's large (up to 19 x 19) depthwise kernels.

On the CPU, oneDNN computes the weight gradient of a large depthwise kernel on a slow path (a 17 x 17 kernel over
a 64 x 128 x 128 map: about 0.7 s, against 20 ms for the forward conv). That gradient is itself a depthwise
correlation, ``grad_w[c, a, e] = sum_{n,i,j} grad_out[n, c, i, j] * x_pad[n, c, i + r*a, j + r*e]``, i.e. a
depthwise conv of the padded input with ``grad_out`` as the kernel and the dilation ``r`` as the stride, which
oneDNN's forward path runs about 30 times faster. Dilated kernels that oneDNN's direct depthwise kernels do not
cover (a span above ``DENSE_DILATED_SPAN``) run as the equivalent dense kernel with zeros between the taps, which is
exact and several times faster there.

Everything else (CUDA, tracing/export, CPU autocast, small kernels, no gradient needed) goes to ``F.conv2d`` unchanged.

Two training-memory steps built on it keep only their inputs for the backward and recompute the rest there:
``gelu_res_dwconv`` (``u + dwconv(u)`` with ``u = gelu(z)``) and ``recomputed_branch_sum`` (the batch-normalised sum
of parallel depthwise branches, i.e. a DilatedReparamBlock in training).
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .tracing import is_tracing

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


def gelu_res_dwconv(z: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: int,
                    approximate: str = 'none') -> torch.Tensor:
    """``u + dwconv(u)`` with ``u = gelu(z)``; when a gradient is wanted, keeps only ``z`` for the backward.

    Small kernels only take the recomputing step (larger ones take ``depthwise_conv2d``'s own weight gradient), and
    under autocast or tracing the plain composition runs (autograd's own casts keep the backward's dtypes apart).
    """
    wants_grad = torch.is_grad_enabled() and (z.requires_grad or weight.requires_grad)
    plain = is_tracing() or torch.is_autocast_enabled(z.device.type) or weight.shape[-1] >= FAST_GRAD_MIN_KERNEL
    if not wants_grad or plain:
        u = F.gelu(z, approximate=approximate)
        return depthwise_conv2d(u, weight, bias, padding).add_(u)
    return _GeluResDWConv.apply(z, weight, bias, padding, approximate)


class _GeluResDWConv(torch.autograd.Function):
    """``u + dwconv(u)`` with ``u = gelu(z)``, keeping ``z`` alone for the backward.

    Autograd would keep both ``z`` (for GELU's gradient) and ``u`` (for the conv's weight gradient), two maps of
    the widest (MLP) width; the backward here recomputes ``u`` from ``z`` (one elementwise pass) and then runs the
    very kernels autograd would (``convolution_backward``, ``gelu_backward``), so the gradients are the same.
    """

    @staticmethod
    def forward(ctx, z, weight, bias, padding: int, approximate: str):
        ctx.save_for_backward(z, weight)
        ctx.padding, ctx.approximate, ctx.has_bias = padding, approximate, bias is not None
        u = F.gelu(z, approximate=approximate)
        return F.conv2d(u, weight, bias, 1, padding, 1, u.shape[1]).add_(u)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        z, weight = ctx.saved_tensors
        u = F.gelu(z, approximate=ctx.approximate)
        p, channels = ctx.padding, z.shape[1]
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        grad_u, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, u, weight, [channels] if ctx.has_bias else None, [1, 1], [p, p], [1, 1], False, [0, 0],
            channels, mask)
        grad_z = None
        if ctx.needs_input_grad[0]:
            grad_z = torch.ops.aten.gelu_backward(grad_u + grad_out, z, approximate=ctx.approximate)
        return grad_z, grad_w, grad_b, None, None


def branch_sum(x: torch.Tensor, kernels: Sequence[torch.Tensor], dilations: Sequence[int],
               norm) -> torch.Tensor:
    """``sum_i norm(i, dwconv_i(x))`` over depthwise branches with "same" zero padding ``r_i * (k_i - 1) / 2``."""
    out = None
    for i, (kernel, r) in enumerate(zip(kernels, dilations)):
        y = norm(i, depthwise_conv2d(x, kernel, None, r * (kernel.shape[-1] - 1) // 2, r))
        out = y if out is None else out + y
    return out


def recomputed_branch_sum(x: torch.Tensor, kernels: Sequence[torch.Tensor], dilations: Sequence[int],
                          bn_weights: Sequence[torch.Tensor], bn_biases: Sequence[torch.Tensor],
                          eps: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The sum of batch-normalised depthwise branches (batch statistics), keeping only ``x`` for the backward.

    Args:
        x (Tensor): Input [N, C, H, W], either memory format.
        kernels (Sequence[Tensor]): One depthwise kernel [C, 1, k_i, k_i] per branch (odd ``k_i``).
        dilations (Sequence[int]): Each branch's dilation; its padding is ``r_i * (k_i - 1) / 2``.
        bn_weights, bn_biases (Sequence[Tensor]): Each branch's BN affine parameters [C].
        eps (Sequence[float]): Each branch's BN epsilon.

    Returns:
        tuple[Tensor, Tensor]: The sum [N, C, H, W] and the batch statistics [branches, 2, C] (mean, unbiased
        variance) of each branch's conv output, for the caller to update its running statistics (no gradient).
    """
    n = len(kernels)
    if not (len(dilations) == len(bn_weights) == len(bn_biases) == len(eps) == n):
        raise ValueError(f'recomputed_branch_sum: kernels, dilations, bn_weights, bn_biases and eps must have one '
                         f'entry per branch, got {n}, {len(dilations)}, {len(bn_weights)}, {len(bn_biases)}, '
                         f'{len(eps)}')
    return _RecomputedBranchSum.apply(x, tuple(dilations), tuple(eps), *kernels, *bn_weights, *bn_biases)


class _RecomputedBranchSum(torch.autograd.Function):
    """``recomputed_branch_sum``: the forward runs without recording, the backward recomputes and differentiates.

    Autograd would keep every branch's conv output (each BN's input) until the backward: as many maps as there are
    branches, about a sixth of OverLoCK's training memory. The backward recomputes the branch sum with the same
    kernels and batch statistics, then differentiates that: the same operations in the same order, so outputs and
    gradients equal the plain form's. Costs one extra forward per training step.
    """

    @staticmethod
    def forward(ctx, x, dilations, eps, *params):
        ctx.save_for_backward(x, *params)
        ctx.dilations, ctx.eps = dilations, eps
        device = x.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        n = len(dilations)
        kernels, weights, biases = params[:n], params[n:2 * n], params[2 * n:]
        stats = []

        def batch_norm(i: int, y: torch.Tensor) -> torch.Tensor:
            # Fresh buffers with momentum 1 come back holding this batch's mean and unbiased variance.
            mean = y.new_zeros(y.shape[1], dtype=weights[i].dtype)
            var = y.new_ones(y.shape[1], dtype=weights[i].dtype)
            out = F.batch_norm(y, mean, var, weights[i], biases[i], True, 1.0, eps[i])
            stats.append(torch.stack([mean, var]))
            return out

        with torch.no_grad():
            out = branch_sum(x, kernels, dilations, batch_norm)
        stats = torch.stack(stats)
        ctx.mark_non_differentiable(stats)
        return out, stats

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_stats):
        leaves = [None if t is None else t.detach().requires_grad_(need)
                  for t, need in zip(ctx.saved_tensors, (ctx.needs_input_grad[0], ) + ctx.needs_input_grad[3:])]
        n = len(ctx.dilations)
        kernels, weights, biases = leaves[1:1 + n], leaves[1 + n:1 + 2 * n], leaves[1 + 2 * n:]

        def batch_norm(i: int, y: torch.Tensor) -> torch.Tensor:  # batch statistics, no running ones
            return F.batch_norm(y, None, None, weights[i], biases[i], True, 0., ctx.eps[i])

        device, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device, dtype, enabled):
            out = branch_sum(leaves[0], kernels, ctx.dilations, batch_norm)
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out)) if wanted else iter(())
        grads = [next(grads) if t is not None and t.requires_grad else None for t in leaves]
        return (grads[0], None, None, *grads[1:])
