"""Training memory: a conv whose input is made by cheap layers keeps the cheap layers' input, not its own.

Autograd keeps, for the backward, the input of every layer that needs it: after ``BN -> SE -> conv`` it holds the
BN's input, the BN's output (for SE's product) and the SE's output (for the conv's weight gradient), three maps of
one size where one suffices. :func:`recompute_into_conv` runs ``conv(segment(*inputs))`` keeping only ``inputs``
(and the conv's weight); the backward runs ``segment`` again, a few elementwise passes, takes the conv's gradients
with the very kernel its own backward would (``convolution_backward``, or the depthwise or pointwise op's), and
differentiates the recomputed segment with autograd. Outputs and gradients are those of the plain chain; BatchNorms
in the segment update their running statistics once, in the forward (the recomputation's updates are undone).
"""
import contextlib
from typing import Callable, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops.depthwise import DepthwiseConv2d, depthwise_conv2d, depthwise_conv2d_backward
from ..ops.pointwise import PointwiseConv2d, pointwise_conv2d_backward
from ..ops.tracing import is_tracing


_ENABLED = [True]


@contextlib.contextmanager
def plain_autograd() -> Iterator[None]:
    """Within this context :func:`recompute_into_conv` (and the layers' other recomputing steps, which ask
    :func:`recomputes`) runs the plain composition (autograd keeps every map): the reference its results are
    compared with, and the memory it saves measured against."""
    _ENABLED.append(False)
    try:
        yield
    finally:
        _ENABLED.pop()


def recomputes() -> bool:
    """Whether recomputing steps may run: false within :func:`plain_autograd`."""
    return _ENABLED[-1]


def recomputable(modules: Sequence[nn.Module]) -> bool:
    """Whether running ``modules`` (every module of a segment's layers) twice gives the same result and no side
    effect but running statistics: every BatchNorm is a plain ``nn.BatchNorm2d`` (a subclass such as SyncBatchNorm
    may communicate or do more)."""
    return all(type(m) is nn.BatchNorm2d or not isinstance(m, _BatchNorm) for m in modules)


def recompute_into_conv(segment: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
                        layers: Sequence[nn.Module], conv: nn.Conv2d, weight: Optional[torch.Tensor] = None,
                        bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``conv(segment(*inputs))`` (with ``weight`` and ``bias`` in place of the conv's own when given, e.g. a folded
    BatchNorm), keeping only ``inputs`` for the backward when a gradient is wanted.

    Args:
        segment (Callable): Cheap layers (elementwise, per-channel statistics) from ``inputs`` to the conv's input;
            deterministic, so the backward's recomputation equals the forward.
        inputs (Sequence[Tensor]): The segment's inputs.
        layers (Sequence[nn.Module]): The modules ``segment`` runs: their parameters get gradients, their
            BatchNorms' running statistics are restored after the recomputation.
        conv (nn.Conv2d): The consumer, a plain ``nn.Conv2d`` (zero padding), a ``DepthwiseConv2d`` or a
            ``PointwiseConv2d``.
        weight, bias (Tensor, optional): The conv's kernel and bias, defaulting to ``conv.weight`` / ``conv.bias``.

    The plain composition runs instead inside :func:`plain_autograd`, when no gradient is wanted, under tracing or
    autocast, for other than float32/float64 inputs, or when ``layers`` hold a BatchNorm subclass (see
    :func:`recomputable`).
    """
    if weight is None:
        weight, bias = conv.weight, conv.bias
    # One walk over the modules for their parameters, the BatchNorm check and the BatchNorms whose running
    # statistics the backward's recomputation must leave alone (each walk is a Python generator chain; a training
    # step makes some 400 of these calls).
    modules = [m for layer in layers for m in layer.modules()]
    params = list(dict.fromkeys(p for m in modules for p in m.parameters(recurse=False)))  # (each once)
    tensors = [*inputs, *params, weight] + ([] if bias is None else [bias])
    device = inputs[0].device.type
    if (not _ENABLED[-1] or not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors) or is_tracing()
            or device not in ('cpu', 'cuda') or torch.is_autocast_enabled(device)
            or any(t.dtype not in (torch.float32, torch.float64) for t in inputs)
            or not isinstance(conv.padding, tuple) or conv.padding_mode != 'zeros'
            or not recomputable(modules)):
        return _conv(conv, segment(*inputs), weight, bias)
    norms = [m for m in modules if isinstance(m, _BatchNorm)]
    return _RecomputedIntoConv.apply(segment, norms, conv, len(inputs), len(params), bias is not None, *tensors)


def _conv(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    if isinstance(conv, DepthwiseConv2d):
        return depthwise_conv2d(x, weight, bias, conv.padding[0], conv.dilation[0])
    return conv._conv_forward(x, weight, bias)


def _conv_backward(conv: nn.Conv2d, grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                   mask: List[bool]):
    if isinstance(conv, DepthwiseConv2d):
        return depthwise_conv2d_backward(grad_out, x, weight, conv.padding[0], conv.dilation[0], mask)
    if isinstance(conv, PointwiseConv2d):
        return pointwise_conv2d_backward(grad_out, x, weight, mask)
    return torch.ops.aten.convolution_backward(grad_out, x, weight, [weight.shape[0]] if mask[2] else None,
                                               list(conv.stride), list(conv.padding), list(conv.dilation), False,
                                               [0, 0], conv.groups, mask)


class _RunningStats:
    """Keeps the BatchNorms ``norms`` from updating their running statistics while a recomputation runs them.

    A training-mode BatchNorm normalises with its batch statistics whether or not it tracks running ones, so turning
    ``track_running_stats`` off for the recomputation leaves its output as it was and its buffers untouched, without
    a copy of each buffer to put back (two operators per buffer, about 530 per training step).
    """

    def __init__(self, norms: Sequence[_BatchNorm]):
        self.norms = [m for m in norms if m.training and m.track_running_stats]

    def __enter__(self):
        for m in self.norms:
            m.track_running_stats = False

    def __exit__(self, *exc):
        for m in self.norms:
            m.track_running_stats = True


class _RecomputedIntoConv(torch.autograd.Function):

    @staticmethod
    def forward(ctx, segment, norms, conv, n_inputs: int, n_params: int, has_bias: bool, *tensors):
        inputs = tensors[:n_inputs]
        weight = tensors[n_inputs + n_params]
        bias = tensors[n_inputs + n_params + 1] if has_bias else None
        out = _conv(conv, segment(*inputs), weight, bias)
        ctx.save_for_backward(*inputs, weight)
        ctx.segment, ctx.norms, ctx.conv, ctx.has_bias = segment, norms, conv, has_bias
        ctx.params = tensors[n_inputs:n_inputs + n_params]  # the segment's parameters (leaves: nothing to save)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        *saved, weight = ctx.saved_tensors
        params = list(ctx.params)
        n_inputs, n_params = len(saved), len(params)
        needs = ctx.needs_input_grad[6:]
        inputs = [t.detach().requires_grad_(need) for t, need in zip(saved, needs)]
        needs_w, needs_b = needs[n_inputs + n_params], ctx.has_bias and needs[-1]
        wanted = [t for t, need in zip(inputs + params, needs) if need]
        # The forward updated the running statistics once; the recomputation leaves them alone.
        with _RunningStats(ctx.norms), torch.enable_grad():
            y = ctx.segment(*inputs)
        grad_y, grad_w, grad_b = _conv_backward(ctx.conv, grad_out, y.detach(), weight,
                                                [y.requires_grad, needs_w, needs_b])
        grads = iter(torch.autograd.grad(y, wanted, grad_y, allow_unused=True) if wanted and y.requires_grad
                     else [None] * len(wanted))
        grads = [next(grads) if need else None for need in needs[:n_inputs + n_params]]
        return (None, ) * 6 + (*grads, grad_w if needs_w else None) + ((grad_b if needs_b else None, )
                                                                        if ctx.has_bias else ())
