"""Small building blocks of OverLoCK, named and shaped as in the authors' code so their checkpoints load as is.

Every module here is plain ``nn.Module`` arithmetic on NCHW maps, in either memory format (channels-last maps stay
channels-last); the re-parameterisation helpers (``fold_bn``, ``DilatedReparamBlock.folded``) fold BatchNorms
and dilated branches exactly in eval mode, which ``DilatedReparamBlock`` also does by itself in eval mode; without a
gradient, ``FusingSequential`` runs an MLP's ``GELU -> ResDWConv -> GRN`` as one fused pass (``fused_depthwise_conv2d``)
and folds the GRN into the 1 x 1 conv after it (``GRN.into_pointwise``), with a gradient too (``_GRNIntoPointwise``),
where the conv's weight is no larger than the map (``_grn_fold_pays``). Elsewhere, with a gradient, GRN is one
autograd function over per-channel statistics (``spatial_dot``).
For training memory, the ``DilatedReparamBlock`` training form, ``FusingSequential``'s GELU + ``ResDWConv`` step and
its runs of cheap layers before a conv keep only their inputs for the backward and recompute the rest there, with
the plain formulation's gradients.
"""
import functools
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..ops.depthwise import (DepthwiseConv2d, branch_sum, depthwise_conv2d, fused_depthwise_conv2d, gelu_res_dwconv,
                             gelu_res_dwconv_backward, recomputed_branch_sum, residual_depthwise_conv2d,
                             sum_branch_kernels)
from ..ops.pointwise import PointwiseConv2d, pointwise_conv2d_backward
from ..ops.statistics import runs_compiled, spatial_dot
from ..ops.tracing import is_tracing
from .fold_cache import reuse_fold
from .recompute import recompute_into_conv, recomputes

#: The dense convs FusingSequential fuses with what surrounds them: plain ``nn.Conv2d`` and the 1 x 1
#: ``PointwiseConv2d`` (an ``nn.Conv2d`` whose ``_conv_forward`` runs ``pointwise_conv2d``).
DENSE_CONVS = (nn.Conv2d, PointwiseConv2d)

# (kernel, dilation) of the parallel dilated branches of a DilatedReparamBlock, by its large kernel size
# (UniRepLKNet's defaults, used unchanged by OverLoCK).
DILATED_BRANCHES = {
    19: ((5, 1), (7, 1), (9, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    17: ((5, 1), (7, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    15: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    13: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    11: ((5, 1), (7, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    9: ((5, 1), (7, 1), (5, 2), (3, 3), (3, 4)),
    7: ((5, 1), (3, 1), (3, 2), (3, 3)),
    5: ((3, 1), (3, 2)),
}


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether an NCHW map is laid out channels-last (channel stride below the column stride), views included."""
    return x.stride(1) < x.stride(3)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (eps 1e-6); its parameters are ``weight`` and ``bias``."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        # The output keeps the input's memory format: no copy at all for channels_last maps.
        y = y.permute(0, 3, 1, 2)
        return y if is_channels_last(x) else y.contiguous()


class LayerScale(nn.Module):
    """Per-channel affine ``y = w * x + b`` with ``w`` initialised to ``init_value``.

    ``weight`` keeps the authors' depthwise-conv shape ``(C, 1, 1, 1)`` so their checkpoints load unchanged.
    """

    def __init__(self, num_channels: int, init_value: float = 1e-5):
        super().__init__()
        self.init_value = init_value
        self.weight = nn.Parameter(torch.full((num_channels, 1, 1, 1), float(init_value)))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))  # one pass over x


class GRN(nn.Module):
    """Global Response Normalisation (ConvNeXt V2) for NCHW maps; ``gamma`` and ``beta`` start at zero (identity).

    ``GRN(x) = scale(x) * x + beta`` with a per-sample, per-channel ``scale`` from the channels' L2 norms over H and
    W. With a gradient (CPU float32/float64, the compiled ``spatial_dot``) it runs as one autograd function
    (``_GRNFunction``): two passes over ``x`` forward and four backward, where autograd's composition makes about
    eleven, and no ``vector_norm`` over a channels-last map's H and W (~10x slower than the statistic itself).
    """

    def __init__(self, num_channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, num_channels, 1, 1))

    def forward(self, x: torch.Tensor, square_sums: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (square_sums is None and torch.is_grad_enabled() and runs_compiled(x, self.gamma, self.beta)
                and not torch.is_autocast_enabled('cpu')):
            return _GRNFunction.apply(x, self.gamma, self.beta)
        return torch.addcmul(self.beta, x, self.scale(x, square_sums))  # one pass over x

    def scale(self, x: torch.Tensor, square_sums: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The per-sample, per-channel factor [N, C, 1, 1] of ``x``: ``GRN(x) = scale(x) * x + beta``.

        ``square_sums`` [N, C]: ``x``'s sums of squares over H and W when the step that made ``x`` took them already
        (``fused_depthwise_conv2d``), so no pass over ``x`` is needed here.
        """
        if square_sums is None and not (torch.is_grad_enabled() and x.requires_grad):
            square_sums = spatial_dot(x, x)
        if square_sums is not None:
            norm = square_sums.sqrt()
        else:  # vector_norm's gradient is defined (zero) for an all-zero channel, sqrt's would be NaN
            norm = torch.linalg.vector_norm(x, ord=2, dim=(-2, -1))
        scale = _grn_scale(norm, self.gamma)[3]
        return scale.view(*scale.shape, 1, 1)  # one view operator (indexing with None dispatches four)

    def into_pointwise(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       square_sums: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``conv1x1(GRN(x))`` with the GRN folded into the conv: two passes over ``x`` (the norms, the conv)
        instead of four (the norms, the product, the conv reading it back).

        ``W (s * x + beta) + b = (W s) x + (W beta + b)``: each sample's conv weight is ``weight`` scaled by its
        ``scale(x)`` per input channel, one conv per sample.
        """
        return _scaled_pointwise(x, weight, bias, self.scale(x, square_sums).flatten(1), self.beta)


def _scaled_pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], scale: torch.Tensor,
                      beta: torch.Tensor) -> torch.Tensor:
    """``conv1x1(scale * x + beta)`` as ``(W scale) x + (W beta + b)``: one conv per sample, with ``weight`` scaled
    by that sample's ``scale`` [N, C] per input channel."""
    shift = F.conv2d(beta, weight, bias).flatten()  # W beta + b
    outs = [F.conv2d(x[i:i + 1], weight * scale[i].view(1, -1, 1, 1), shift) for i in range(x.shape[0])]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _grn_scale(norm: torch.Tensor, gamma: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """GRN's per-channel quantities [N, C] from the channels' norms ``G`` [N, C]: ``G``, ``D = mean_c G + eps``
    ([N, 1]), ``G / D`` and the scale ``s = gamma G / D + 1``."""
    denom = norm.mean(dim=1, keepdim=True) + 1e-6
    normalised = norm / denom
    return norm, denom, normalised, gamma.view(1, -1) * normalised + 1


def _grn_norm_gradient(grad_scale: torch.Tensor, gamma: torch.Tensor, norm: torch.Tensor, denom: torch.Tensor,
                       normalised: torch.Tensor) -> torch.Tensor:
    """The factor [N, C] of ``x`` in ``x``'s gradient through the norms, given ``dL/ds`` (``grad_scale``):
    ``dL/dG_k = gamma_k dL/ds_k / D - (1/C) sum_c gamma_c dL/ds_c G_c / D^2`` and ``dG/dx = x / G``; zero where
    ``G`` is (``vector_norm``'s gradient there)."""
    grad_norm_scaled = gamma.view(1, -1) * grad_scale  # dL/d(G / D)
    grad_norm = (grad_norm_scaled - (grad_norm_scaled * normalised).mean(dim=1, keepdim=True)) / denom
    return torch.where(norm > 0, grad_norm / norm, torch.zeros_like(norm))


class _GRNFunction(torch.autograd.Function):
    """GRN with a gradient, from per-channel statistics (``spatial_dot``) and per-channel factors only.

    With ``G`` the norms [N, C], ``D = mean_c G + eps``, ``s = gamma G / D + 1`` and ``y = s x + beta``, and ``d =
    <grad_y, x>`` per channel: ``dL/dG_k = gamma_k d_k / D - (1/C) sum_c gamma_c d_c G_c / D^2`` and ``grad_x = s
    grad_y + x dL/dG / G``, zero where ``G`` is (``vector_norm``'s gradient there). Forward: the norms, the output;
    backward: ``d``, ``beta``'s sum, the input gradient (a product and a multiply-add).
    """

    @staticmethod
    def forward(ctx, x, gamma, beta):
        norm, denom, normalised, scale = _grn_scale(spatial_dot(x, x).sqrt(), gamma)  # [N, C]
        ctx.save_for_backward(x, gamma, norm, denom, normalised, scale)
        return torch.addcmul(beta, x, scale[:, :, None, None])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, gamma, norm, denom, normalised, scale = ctx.saved_tensors
        grad_scale = spatial_dot(x, grad_out)  # [N, C], in x's memory format
        grad_x = grad_gamma = grad_beta = None
        if ctx.needs_input_grad[1]:
            grad_gamma = (grad_scale * normalised).sum(0).view_as(gamma)
        if ctx.needs_input_grad[2]:
            grad_beta = grad_out.sum((0, 2, 3)).view_as(gamma)
        if ctx.needs_input_grad[0]:
            per_norm = _grn_norm_gradient(grad_scale, gamma, norm, denom, normalised)
            grad_x = (grad_out * scale[:, :, None, None]).addcmul_(x, per_norm[:, :, None, None])
        return grad_x, grad_gamma, grad_beta


class _GRNIntoPointwise(torch.autograd.Function):
    """``conv1x1(GRN(y))`` with ``y = u + dwconv(u)`` and ``u = gelu(z)`` (an MLP's tail) with a gradient, keeping
    only ``z`` for the backward.

    The GRN is folded into the 1 x 1 conv as in ``GRN.into_pointwise``, so no GRN map exists forward or backward:
    ``y``'s sums of squares come with ``y`` from the fused step, and the scale's gradient from the conv's weight
    gradient (``dL/ds_c = sum_o dL/dW'_oc W_oc`` with ``W' = W s``), not from a pass over the map. Passes over the
    hidden map: forward, the fused step and the conv; backward, the fused step again, the conv's two gradients, one
    multiply-add (the norms' term) and ``gelu_res_dwconv_backward``. The recomputed chain takes about twice as many.
    """

    @staticmethod
    def forward(ctx, z, dw_weight, dw_bias, gamma, beta, weight, bias, padding: int, approximate: str):
        y, sums = fused_depthwise_conv2d(z, dw_weight, dw_bias, padding, gelu=approximate, residual=True,
                                         square_sums=True)
        ctx.save_for_backward(z, dw_weight, dw_bias, gamma, beta, weight)
        ctx.padding, ctx.approximate, ctx.has_bias = padding, approximate, bias is not None
        return _scaled_pointwise(y, weight, bias, _grn_scale(sums.sqrt(), gamma)[3], beta)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        z, dw_weight, dw_bias, gamma, beta, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        y, sums = fused_depthwise_conv2d(z, dw_weight, dw_bias, ctx.padding, gelu=ctx.approximate, residual=True,
                                         square_sums=True)
        norm, denom, normalised, scale = _grn_scale(sums.sqrt(), gamma)
        wants_y = needs[0] or needs[1] or (dw_bias is not None and needs[2])
        # The scaled conv's gradients, sample by sample (each sample has its own scaled weight).
        grad_ys, grad_scaled = [], []
        for i in range(y.shape[0]):
            grad_y, grad_w, _ = pointwise_conv2d_backward(grad_out[i:i + 1], y[i:i + 1],
                                                          weight * scale[i].view(1, -1, 1, 1), [wants_y, True, False])
            grad_ys.append(grad_y)
            grad_scaled.append(grad_w)
        grad_scaled = torch.stack(grad_scaled)  # dL/dW' [N, O, C, 1, 1]
        grad_scale = (grad_scaled * weight).sum((1, 3, 4))  # [N, C]
        grad_shift = grad_out.sum((0, 2, 3))  # dL/d(W beta + b) [O]
        grad_weight = grad_bias = grad_gamma = grad_beta = None
        if needs[5]:
            grad_weight = ((grad_scaled * scale[:, None, :, None, None]).sum(0)
                           + grad_shift.view(-1, 1, 1, 1) * beta.view(1, -1, 1, 1))
        if ctx.has_bias and needs[6]:
            grad_bias = grad_shift
        if needs[4]:
            grad_beta = (weight.flatten(1) * grad_shift.view(-1, 1)).sum(0).view_as(beta)
        if needs[3]:
            grad_gamma = (grad_scale * normalised).sum(0).view_as(gamma)
        grad_z = grad_dw = grad_dw_bias = None
        if wants_y:
            grad_y = grad_ys[0] if len(grad_ys) == 1 else torch.cat(grad_ys)
            per_norm = _grn_norm_gradient(grad_scale, gamma, norm, denom, normalised)
            grad_y.addcmul_(y, per_norm[:, :, None, None])
            del y
            grad_z, grad_dw, grad_dw_bias = gelu_res_dwconv_backward(
                grad_y, z, dw_weight, ctx.padding, ctx.approximate,
                [needs[0], needs[1], dw_bias is not None and needs[2]])
        return grad_z, grad_dw, grad_dw_bias, grad_gamma, grad_beta, grad_weight, grad_bias, None, None


class GlobalAvgPool2d(nn.AdaptiveAvgPool2d):
    """``AdaptiveAvgPool2d(1)`` as a spatial sum times ``1 / (H W)``, so that its gradient is a broadcast view.

    The mean's own backward materialises ``grad / (H W)`` as a full map, which autograd then adds to the gradient the
    same input gets from elsewhere (SE multiplies its input by the gate); the sum's backward is a stride-0 view of
    ``[N, C, 1, 1]`` (the two forwards take the same time). Traced graphs keep the ``adaptive_avg_pool2d`` call,
    whose size is not baked in.
    """

    def __init__(self):
        super().__init__(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_tracing(compiling=False):
            return super().forward(x)
        return x.sum((2, 3), keepdim=True) * (1.0 / (x.shape[2] * x.shape[3]))


class SEModule(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(pw(gelu(pw(avgpool(x)))))`` with ``max(16, C // 8)`` inner channels.

    Its 1 x 1 convs see one pixel per sample, so they stay ``nn.Conv2d``: ``PointwiseConv2d``'s autograd function
    would cost more Python than its products save.
    """

    def __init__(self, num_channels: int, reduction: int = 8):
        super().__init__()
        inner = max(16, num_channels // reduction)
        self.proj = nn.Sequential(
            GlobalAvgPool2d(),
            nn.Conv2d(num_channels, inner, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(inner, num_channels, kernel_size=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.proj(x)


class ResDWConv(DepthwiseConv2d):
    """Depthwise conv with a residual connection, ``x + dwconv(x)``; the module is the conv itself (no inner name)."""

    def __init__(self, num_channels: int, kernel_size: int = 3):
        super().__init__(num_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_depthwise_conv2d(x, self.weight, self.bias, self.padding[0])

    def forward_after_gelu(self, z: torch.Tensor, approximate: str = 'none') -> torch.Tensor:
        """``self(gelu(z))``; when a gradient is wanted, keeps only ``z`` for the backward (``gelu_res_dwconv``)."""
        return gelu_res_dwconv(z, self.weight, self.bias, self.padding[0], approximate)

    def forward_with_square_sums(self, x: torch.Tensor,
                                 gelu: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``y = self(x)`` (or ``self(gelu(x))``, ``gelu`` being the GELU's approximate mode) and ``y``'s per-sample,
        per-channel sums of squares [N, C], in one pass without a gradient (``fused_depthwise_conv2d``)."""
        return fused_depthwise_conv2d(x, self.weight, self.bias, self.padding[0], gelu=gelu, residual=True,
                                      square_sums=True)


class FusingSequential(nn.Sequential):
    """An ``nn.Sequential`` (same keys and indexing) that fuses some neighbouring layers, with the same results:

    * a run of cheap layers (``CHEAP_LAYERS``: BN, SE, GRN, GELU, SiLU, LayerNorm2d, a 3 x 3 ``ResDWConv``) that
      feeds a plain or depthwise conv: when a gradient is wanted, one step that keeps only the run's input for the
      backward and recomputes the run there (``recompute_into_conv``), e.g. ``BN -> SE -> conv`` keeps the BN's
      input alone, ``GELU -> ResDWConv -> GRN -> conv`` the GELU's;
    * a ``GELU`` directly followed by a ``ResDWConv``: one step that keeps only the GELU's input for the backward
      (see ``ResDWConv.forward_after_gelu``);
    * a plain ``Conv2d``, a ``DepthwiseConv2d`` or a foldable ``DilatedReparamBlock`` followed by a BatchNorm that
      uses its running statistics (eval mode): one conv whose kernel and bias absorb the BN, folded from the
      current parameters (gradients reach both layers; without a gradient the fold is reused while the
      parameters are unchanged, see ``fold_cache``);
    * without a gradient, a ``GRN`` after a ``ResDWConv`` (after a ``GELU`` or not): the conv takes the GELU of
      its input and the GRN's sums of squares in its own pass (``ResDWConv.forward_with_square_sums``), and a
      1 x 1 conv after the GRN absorbs it (``GRN.into_pointwise``): the MLP's hidden map is read or written four
      times (the convs' write and read, the fused step's read and write) where the plain chain makes nine;
    * with a gradient, ``GELU -> ResDWConv -> GRN -> 1 x 1 conv`` likewise, keeping only the GELU's input for the
      backward (``_GRNIntoPointwise``), where the conv has no more output channels than the map has pixels.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_fused(list(self), x)

    def split_cheap_tail(self, x: torch.Tensor) -> Tuple[torch.Tensor, nn.Sequential]:
        """Run the layers before the trailing run of ``CHEAP_LAYERS`` (a BN folded into the conv before it stays
        with the conv) and return their output and the trailing layers, for a caller that recomputes them
        (``tail(out)`` is ``self(x)``)."""
        layers = list(self)
        start = len(layers)
        while start > 0 and _is_cheap(layers[start - 1]):
            start -= 1
        if 0 < start < len(layers) and _uses_running_stats(layers[start]):
            start += 1  # the conv (or block) before it absorbs it
        return run_fused(layers[:start], x), nn.Sequential(*layers[start:])


def run_fused(layers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``nn.Sequential(*layers)(x)`` with ``FusingSequential``'s fusions: its forward, also run on sub-lists of its
    layers without building a module for them on every call."""
    i = 0
    while i < len(layers):
        layer, following = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        end = _cheap_run_end(layers, i)
        if end is not None:
            x, i = _into_conv(x, layers[i:end], layers, end)
            continue
        grn = i + 2 if isinstance(layer, nn.GELU) else i + 1
        if grn < len(layers) and _square_sums_start(layers, grn) == i:
            x = layers[grn](*_with_square_sums(layers[i:grn], x))
            i = grn + 1
            continue
        if isinstance(layer, nn.GELU) and isinstance(following, ResDWConv):
            x = following.forward_after_gelu(x, layer.approximate)
        elif _uses_running_stats(following) and type(layer) in DENSE_CONVS:
            x = layer._conv_forward(x, *_fold_into(layer, following))
        elif _uses_running_stats(following) and isinstance(layer, DepthwiseConv2d):
            x = depthwise_conv2d(x, *_fold_into(layer, following), layer.padding[0], layer.dilation[0])
        elif _uses_running_stats(following) and isinstance(layer, DilatedReparamBlock) and layer.foldable():
            x = depthwise_conv2d(x, *_fold_into(layer, following), layer.kernel_size // 2)
        else:
            x = layer(x)
            i += 1
            continue
        i += 2
    return x


def _into_conv(x: torch.Tensor, cheap: List[nn.Module], layers: List[nn.Module],
               end: int) -> Tuple[torch.Tensor, int]:
    """``layers[end](cheap(x))`` (with a following eval-mode BN folded into the conv) through
    ``recompute_into_conv``; returns the output and the index after the layers it ran."""
    conv = layers[end]
    following = layers[end + 1] if end + 1 < len(layers) else None
    weight, bias, after = conv.weight, conv.bias, end + 1
    if _uses_running_stats(following):
        (weight, bias), after = _fold_into(conv, following), end + 2
    if isinstance(cheap[-1], GRN) and _is_pointwise(conv) and not torch.is_grad_enabled() and not is_tracing():
        # Inference: the GRN folds into the 1 x 1 conv (no gradient wanted, so no map to keep either).
        start = _square_sums_start(cheap, len(cheap) - 1)
        if start is not None:
            y, sums = _with_square_sums(cheap[start:-1], run_fused(cheap[:start], x))
        else:
            y, sums = run_fused(cheap[:-1], x), None
        if _grn_fold_pays(conv, y):
            return cheap[-1].into_pointwise(y, weight, bias, sums), after
        return conv._conv_forward(cheap[-1](y, sums), weight, bias), after
    if _folds_grn_with_grad(cheap, conv, x):
        gelu, dwconv, grn = cheap
        return _GRNIntoPointwise.apply(x, dwconv.weight, dwconv.bias, grn.gamma, grn.beta, weight, bias,
                                       dwconv.padding[0], gelu.approximate), after
    return recompute_into_conv(functools.partial(run_fused, cheap), (x, ), cheap, conv, weight, bias), after


#: Layers that cost a few elementwise passes (or per-channel / per-pixel statistics) to run again; a 3 x 3
#: ``ResDWConv`` (9 multiply-adds per value) is cheap next to the 1 x 1 conv it feeds (C multiply-adds per value).
CHEAP_LAYERS = (nn.BatchNorm2d, SEModule, GRN, nn.GELU, nn.SiLU, LayerScale, LayerNorm2d, nn.Identity, ResDWConv)


def _is_cheap(layer: nn.Module) -> bool:
    return isinstance(layer, CHEAP_LAYERS) and (not isinstance(layer, ResDWConv) or layer.kernel_size[0] <= 3)


def _cheap_run_end(layers: List[nn.Module], start: int) -> Optional[int]:
    """The index of the plain or depthwise conv that a run of ``CHEAP_LAYERS`` from ``start`` feeds, if one does."""
    end = start
    while end < len(layers) and _is_cheap(layers[end]):
        end += 1
    if end == start or end == len(layers) or type(layers[end]) not in (*DENSE_CONVS, DepthwiseConv2d):
        return None
    return end


def _square_sums_start(layers: List[nn.Module], grn: int) -> Optional[int]:
    """Where the run starts that computes the input of the ``GRN`` at ``layers[grn]`` together with its sums of
    squares (``_with_square_sums``): a ``ResDWConv`` right before it, from the ``GELU`` before that if there is one.
    ``None`` where there is no such run, or a gradient may be wanted or a trace is recorded (the fused step is an
    inference step: ``sqrt``'s gradient at an all-zero channel would be NaN, ``vector_norm``'s is zero)."""
    if (torch.is_grad_enabled() or is_tracing() or not isinstance(layers[grn], GRN) or grn < 1
            or not isinstance(layers[grn - 1], ResDWConv)):
        return None
    return grn - 2 if grn >= 2 and isinstance(layers[grn - 2], nn.GELU) else grn - 1


def _with_square_sums(run: List[nn.Module], x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``run(x)`` for a ``[GELU, ResDWConv]`` or ``[ResDWConv]`` run, and its output's sums of squares [N, C]."""
    gelu = run[0].approximate if isinstance(run[0], nn.GELU) else None
    return run[-1].forward_with_square_sums(x, gelu)


def _grn_fold_pays(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether a GRN on ``x`` runs folded into the 1 x 1 ``conv`` after it (``GRN.into_pointwise``,
    ``_GRNIntoPointwise``) rather than on the map: the fold trades passes over the map (C x H x W per sample) for
    passes over the weight (O x C), so it pays where the conv has no more output channels than the map has pixels.
    Without a gradient on a 2-core Xeon (2 threads, C = 1536 -> O = 640), the fold took 1.3x the map path's time on
    49 pixels and 1.25x on 256; at C = 1024 -> O = 256 on 1,024 pixels the map path took 1.14x the fold's."""
    return conv.out_channels <= x.shape[-2] * x.shape[-1]


def _folds_grn_with_grad(cheap: List[nn.Module], conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``conv(cheap(x))`` runs as ``_GRNIntoPointwise``: an MLP's ``GELU -> ResDWConv -> GRN`` feeding a
    1 x 1 conv, with a gradient, on CPU float32/float64 without autocast or tracing (the compiled fused step and
    statistics; elsewhere ``recompute_into_conv``), where the fold pays (``_grn_fold_pays``)."""
    return (len(cheap) == 3 and isinstance(cheap[0], nn.GELU) and isinstance(cheap[1], ResDWConv)
            and isinstance(cheap[2], GRN) and _is_pointwise(conv) and torch.is_grad_enabled() and recomputes()
            and _grn_fold_pays(conv, x)
            and runs_compiled(x) and not torch.is_autocast_enabled('cpu')
            and all(t.dtype == x.dtype for t in (cheap[1].weight, cheap[2].gamma, conv.weight)))


def _is_pointwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain, dense 1 x 1 ``nn.Conv2d`` (or a ``PointwiseConv2d``) with stride 1 (a per-pixel
    linear map)."""
    return (type(conv) in DENSE_CONVS and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.groups == 1 and conv.padding == (0, 0))


def _uses_running_stats(module: Optional[nn.Module]) -> bool:
    """Whether ``module`` is a BatchNorm that normalises with its running statistics (an affine map)."""
    return isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)) and _normalises_with_running_stats(module)


def _normalises_with_running_stats(bn: nn.Module) -> bool:
    """Whether a BatchNorm (of any kind) is an affine map: eval mode, with running statistics."""
    return not bn.training and bn.running_mean is not None


def bn_affine(weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
              eps) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of the affine map a BatchNorm in eval mode is, ``bn(y) = scale * y + shift``; elementwise,
    so it also takes several BNs' parameters stacked ([branches, C], with ``eps`` a number or [branches, 1])."""
    scale = weight / (running_var + eps).sqrt()
    return scale, bias - running_mean * scale


def fold_bn(kernel: torch.Tensor, bias: Optional[torch.Tensor],
            bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """The kernel and bias of ``bn(conv(x))`` for a conv with this kernel and bias (exact for a BN in eval mode)."""
    scale, shift = bn_affine(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
    if bias is not None:
        shift = shift + bias * scale
    return kernel * scale.reshape(-1, 1, 1, 1), shift


def _fold_into(conv: nn.Module, bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """The kernel and bias of ``bn(conv(x))`` for an eval-mode BN after a plain or depthwise conv or a foldable
    ``DilatedReparamBlock``, reused between calls without a gradient (``reuse_fold``)."""
    kernel_and_bias = (conv.kernel_and_bias if isinstance(conv, DilatedReparamBlock) else
                       lambda: (conv.weight, conv.bias))
    return reuse_fold(bn, ('after', bn.eps), [*conv.modules(), bn], lambda: fold_bn(*kernel_and_bias(), bn))


class DilatedReparamBlock(nn.Module):
    """UniRepLKNet's dilated re-parameterisable depthwise block.

    Training form: ``origin_bn(lk_origin(x)) + sum_i dil_bn_i(dil_conv_i(x))`` with a K x K depthwise conv (no bias)
    and parallel small dilated depthwise convs (see ``DILATED_BRANCHES``). Deploy form: one K x K depthwise conv
    with bias (``lk_origin``) that equals the sum in eval mode; ``switch_to_deploy()`` folds one into the other.
    While every BN is in eval mode the training form runs that folded conv too, folded from the current parameters
    (the state dict is untouched, gradients reach every branch; without a gradient the fold is reused while the
    parameters are unchanged, see ``fold_cache``).

    Args:
        num_channels (int): Channels (depthwise).
        kernel_size (int): The large kernel size K, a key of ``DILATED_BRANCHES``.
        deploy (bool): Build the folded form directly. Defaults to ``False``.
    """

    def __init__(self, num_channels: int, kernel_size: int, deploy: bool = False):
        super().__init__()
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(f'DilatedReparamBlock: kernel_size must be one of {sorted(DILATED_BRANCHES)}, '
                             f'got {kernel_size}')
        self.kernel_size = kernel_size
        self.branches: Sequence[Tuple[int, int]] = DILATED_BRANCHES[kernel_size]
        self.lk_origin = DepthwiseConv2d(num_channels, kernel_size, bias=deploy)
        if not deploy:
            self.origin_bn = nn.BatchNorm2d(num_channels)
            for k, r in self.branches:
                self.add_module(f'dil_conv_k{k}_{r}', DepthwiseConv2d(num_channels, k, dilation=r, bias=False))
                self.add_module(f'dil_bn_k{k}_{r}', nn.BatchNorm2d(num_channels))

    @property
    def deploy(self) -> bool:
        return not hasattr(self, 'origin_bn')

    def _batch_norms(self) -> List[nn.BatchNorm2d]:
        return [self.origin_bn] + [getattr(self, f'dil_bn_k{k}_{r}') for k, r in self.branches]

    def foldable(self) -> bool:
        """Whether the block is one conv: the deploy form, or every BN uses its running statistics (eval mode)."""
        return self.deploy or all(map(_normalises_with_running_stats, self._batch_norms()))

    def kernel_and_bias(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The kernel and bias of the one depthwise conv the block is while ``foldable()``."""
        return (self.lk_origin.weight, self.lk_origin.bias) if self.deploy else self.folded()

    def folded(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The kernel [C, 1, K, K] and bias [C] of the one depthwise conv that equals the block in eval mode.

        Differentiable in every parameter, so the eval-mode forward can use it and still give each branch its
        gradient; it costs a few kernel-sized additions, far less than one branch's conv.
        """
        convs, bns = self._convs(), self._batch_norms()
        # Every BN at once ([branches, C] stacks): a fixed number of operators for any branch count.
        eps = {bn.eps for bn in bns}
        eps = eps.pop() if len(eps) == 1 else bns[0].weight.new_tensor([bn.eps for bn in bns]).view(-1, 1)
        scale, shift = bn_affine(*(torch.stack([getattr(bn, name) for bn in bns])
                                   for name in ('weight', 'bias', 'running_mean', 'running_var')), eps)
        kernel = sum_branch_kernels([conv.weight for conv in convs], [conv.dilation[0] for conv in convs], scale)
        return kernel, shift.sum(0)  # the convs have no bias

    def _convs(self) -> List[DepthwiseConv2d]:
        return [self.lk_origin] + [getattr(self, f'dil_conv_k{k}_{r}') for k, r in self.branches]

    def branch_sum(self, x: torch.Tensor, weights: Sequence[torch.Tensor],
                   norm: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``sum_i norm(i, conv_i(x))`` over the large conv (i = 0) and the dilated branches, with given kernels."""
        return branch_sum(x, weights, [conv.dilation[0] for conv in self._convs()], norm)

    def _recomputable(self, x: torch.Tensor, bns: List[nn.BatchNorm2d]) -> bool:
        """Whether the training form can save its input alone (``recomputed_branch_sum``): every BN is a plain
        ``BatchNorm2d`` using batch statistics (a subclass such as SyncBatchNorm may do more than the recomputation
        repeats), a gradient is wanted, and nothing traces the call."""
        return (torch.is_grad_enabled() and not is_tracing()
                and all(type(bn) is nn.BatchNorm2d and bn.training for bn in bns)
                and (x.requires_grad or any(p.requires_grad for p in self.parameters())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return self.lk_origin(x)
        bns = self._batch_norms()
        if all(map(_normalises_with_running_stats, bns)):  # eval mode: the deploy form's speed
            eps = tuple(bn.eps for bn in bns)
            return depthwise_conv2d(x, *reuse_fold(self, ('folded', eps), self.modules(), self.folded),
                                    self.kernel_size // 2)
        if self._recomputable(x, bns):
            convs = self._convs()
            out, stats = recomputed_branch_sum(x, [conv.weight for conv in convs], [conv.dilation[0] for conv in convs],
                                               [bn.weight for bn in bns], [bn.bias for bn in bns],
                                               [bn.eps for bn in bns])
            update_running_stats(bns, stats)
            return out
        return self.branch_sum(x, [conv.weight for conv in self._convs()], lambda i, y: bns[i](y))

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Fold every branch and BN into ``lk_origin`` (exact for the BN statistics in eval mode)."""
        if self.deploy:
            return
        kernel, bias = self.folded()
        fused = DepthwiseConv2d(kernel.shape[0], self.kernel_size).to(device=kernel.device, dtype=kernel.dtype)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        self.lk_origin = fused
        del self.origin_bn
        for k, r in self.branches:
            delattr(self, f'dil_conv_k{k}_{r}')
            delattr(self, f'dil_bn_k{k}_{r}')


@torch.no_grad()
def update_running_stats(bns: Sequence[nn.modules.batchnorm._BatchNorm], stats: torch.Tensor) -> None:
    """What training-mode ``BatchNorm2d`` calls do to their buffers, given each one's batch mean and unbiased variance
    (``stats`` [len(bns), 2, C]), for all of them at once: ten operators per block (``torch._foreach_*``) where one
    BatchNorm at a time took nine each, 1,800 of the 17,000 a training step of OverLoCK-T dispatches. Also the
    update of ``CPUSyncBatchNorm`` (``mmoverlock.engine``), so that every BatchNorm this package computes itself
    rounds its running statistics as ATen does."""
    tracked = [i for i, bn in enumerate(bns) if bn.track_running_stats and bn.running_mean is not None]
    if not tracked:
        return
    bns = [bns[i] for i in tracked]
    torch._foreach_add_([bn.num_batches_tracked for bn in bns], 1)
    factors = [1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum for bn in bns]
    keep = [1 - factor for factor in factors]
    means, variances = (part.unbind(0) for part in stats.to(bns[0].running_mean.dtype).unbind(1))
    for running, batch in (([bn.running_mean for bn in bns], [means[i] for i in tracked]),
                           ([bn.running_var for bn in bns], [variances[i] for i in tracked])):
        # The very expression (and rounding) of ATen's update: momentum * batch + (1 - momentum) * running.
        products = torch._foreach_mul(batch, factors)
        torch._foreach_mul_(running, keep)
        torch._foreach_add_(running, products)


def conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """``[conv3x3 (no bias), BN]``: the downsampling layers between stages."""
    return FusingSequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def store_kernels_channels_last(module: nn.Module) -> None:
    """Store the K x K kernels (K > 1) of ``module``'s dense convs channels-last, for a network whose maps run
    channels-last: oneDNN and cuDNN take a conv's kernel in its input's layout, so an NCHW kernel was copied into that
    layout on every call, and its gradient back. On a 2-core Xeon (2 threads) the 256 -> 512 3 x 3 stride-2 conv
    at 32 x 32 took 7.7 instead of 13.7 ms for its forward and backward with the copies gone, with equal outputs. The
    parameters keep their shapes and keys; ``load_state_dict`` copies into them whatever the checkpoint's layout."""
    for m in module.modules():
        if type(m) in DENSE_CONVS and m.groups == 1 and m.weight.dim() == 4 and m.weight.shape[2:] != (1, 1):
            m.weight = nn.Parameter(m.weight.detach().contiguous(memory_format=torch.channels_last),
                                    requires_grad=m.weight.requires_grad)


def stem(in_channels: int, out_channels: int) -> nn.Sequential:
    """The stride-4 stem: four 3x3 convs (two with stride 2) with BN, GELU between them (indices 0-10)."""
    mid = out_channels // 2
    layers: List[nn.Module] = [
        *conv_bn(in_channels, mid, stride=2), nn.GELU(),
        *conv_bn(mid, mid), nn.GELU(),
        *conv_bn(mid, out_channels, stride=2), nn.GELU(),
        *conv_bn(out_channels, out_channels),
    ]
    return FusingSequential(*layers)
