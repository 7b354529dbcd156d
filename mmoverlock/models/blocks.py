"""OverLoCK's two block types: ``RepConvBlock`` (Base-Net and Overview-Net) and ``ContMixBlock`` (Focus-Net).

Module names follow the authors' code (``DynamicConvBlock`` there) so that released checkpoints load unchanged.
The ContMix core itself (bias + softmax + K x K neighbourhood aggregation) is :func:`mmoverlock.ops.contmix_aggregate`.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from ..ops import accumulation_dtype, contmix_aggregate
from ..ops.depthwise import DepthwiseConv2d
from ..ops.pointwise import PointwiseConv2d
from ..ops.tracing import is_tracing
from .layers import (GRN, DilatedReparamBlock, FusingSequential, LayerNorm2d, LayerScale, ResDWConv, SEModule, conv_bn,
                     is_channels_last)
from .recompute import recompute_into_conv


def _layer_scale_or_identity(num_channels: int, init_value: Optional[float]) -> nn.Module:
    return nn.Identity() if init_value is None else LayerScale(num_channels, init_value)


class _ChannelHeads(torch.autograd.Function):
    """Views [B, g, H, W, c] of ``x``'s channel heads, whose backward writes one gradient map in ``x``'s layout.

    The heads' math wants each group's channels last; through autograd's own ``reshape -> permute (-> unbind)``
    their gradients come back stacked and then copied into a contiguous-format map, and in a channels-last network
    every later gradient of that map (a BatchNorm, a GRN, a 1 x 1 conv, the sum with other branches) then pays a
    format conversion. Here each head's gradient is copied once, straight into a map of ``x``'s memory format.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, parts: int, groups: int) -> Tuple[torch.Tensor, ...]:
        ctx.parts, ctx.groups = parts, groups
        ctx.memory_format = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        return tuple(_head_views(x, parts, groups).unbind(0))

    @staticmethod
    def backward(ctx, *grads: Optional[torch.Tensor]):
        like = next(grad for grad in grads if grad is not None)
        b, _, height, width, c = like.shape
        grad_x = torch.empty((b, ctx.parts * ctx.groups * c, height, width), dtype=like.dtype, device=like.device,
                             memory_format=ctx.memory_format)
        for head, grad in zip(_head_views(grad_x, ctx.parts, ctx.groups).unbind(0), grads):
            if grad is None:
                head.zero_()
            else:
                head.copy_(grad)
        return grad_x, None, None


def _head_views(x: torch.Tensor, parts: int, groups: int) -> torch.Tensor:
    """[B, parts * groups * c, H, W] -> [parts, B, groups, H, W, c], a view (channels laid out (parts, groups, c))."""
    b, _, height, width = x.shape
    return x.reshape(b, parts, groups, -1, height, width).permute(1, 0, 2, 4, 5, 3)


def channel_heads(x: torch.Tensor, parts: int, groups: int) -> Tuple[torch.Tensor, ...]:
    """``x`` [B, parts * groups * c, H, W] as ``parts`` views [B, groups, H, W, c] (see ``_ChannelHeads``)."""
    if x.requires_grad and torch.is_grad_enabled() and not is_tracing():
        return _ChannelHeads.apply(x, parts, groups)
    return tuple(_head_views(x, parts, groups).unbind(0))


class RepConvBlock(nn.Module):
    """Large-kernel re-parameterisable conv block of stages 1-4.

    ``x = dwconv(x); x = ls(x) + proj(x)`` (``res_scale``) or ``x + drop_path(ls(proj(x)))`` otherwise, with
    ``proj = [LN, DilatedReparamBlock(K), BN, SE, pw d->m, GELU, ResDWConv(m), GRN(m), pw m->d, DropPath]``.

    Every argument but ``dim`` is keyword-only, so that a preset's numbers cannot land in the wrong place.

    Args:
        dim (int): Channels d.
        kernel_size (int): Large kernel K of the DilatedReparamBlock.
        mlp_ratio (float): m = int(d * mlp_ratio).
        ls_init_value (float, optional): LayerScale init; ``None`` means no LayerScale.
        res_scale (bool): Scale the residual instead of the branch (OverLoCK uses ``True``).
        drop_path (float): Stochastic depth rate.
        deploy (bool): Build the DilatedReparamBlock in its folded form.
    """

    def __init__(self, dim: int, *, kernel_size: int, mlp_ratio: float = 4., ls_init_value: Optional[float] = None,
                 res_scale: bool = True, drop_path: float = 0., deploy: bool = False):
        super().__init__()
        self.res_scale = res_scale
        mlp_dim = int(dim * mlp_ratio)
        self.dwconv = ResDWConv(dim, 3)
        self.proj = FusingSequential(
            LayerNorm2d(dim),
            DilatedReparamBlock(dim, kernel_size, deploy=deploy),
            nn.BatchNorm2d(dim),
            SEModule(dim),
            PointwiseConv2d(dim, mlp_dim),
            nn.GELU(),
            ResDWConv(mlp_dim, 3),
            GRN(mlp_dim),
            PointwiseConv2d(mlp_dim, dim),
            DropPath(drop_path) if drop_path > 0 else nn.Identity(),
        )
        self.ls = _layer_scale_or_identity(dim, ls_init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(x)
        if self.res_scale:
            return self.ls(x) + self.proj(x)
        return x + self.proj[-1](self.ls(self.proj[:-1](x)))


class ContMixBlock(nn.Module):
    """Context-Mixing dynamic-kernel block of the Focus-Net (the authors' ``DynamicConvBlock``).

    Fuses the feature map ``x`` (d channels) with the context ``h`` (c channels), then aggregates each pixel's
    neighbourhood with two per-pixel dynamic kernels (S x S and K x K) whose logits are the affinities between the
    pixel's query and 7 x 7 pooled keys of the context, mixed by ``weight_proj``. See ``spec/overlock.md``.

    Every argument but ``dim`` and ``ctx_dim`` is keyword-only, as in ``RepConvBlock``.

    Args:
        dim (int): Channels d of ``x``.
        ctx_dim (int): Channels c of the context ``h``.
        kernel_size (int): Large dynamic kernel K.
        smk_size (int): Small dynamic kernel S.
        num_heads (int): Heads h; the kernels use G = 2h groups.
        mlp_ratio (float): MLP hidden width ratio.
        ls_init_value (float, optional): LayerScale init of ``ls1``/``ls2``; ``None`` means none.
        res_scale (bool): Scale the residual instead of the branch.
        drop_path (float): Stochastic depth rate.
        is_first (bool): First block of a stage: ``h`` is used as is (no ``x_scale``/``h_scale``).
        is_last (bool): Return the unsplit ``d + c`` map and ``None``.
        deploy (bool): Build the DilatedReparamBlock in its folded form.
        contmix_backend (str, optional): The ``backend`` of :func:`~mmoverlock.ops.contmix_aggregate`: ``None``
            (automatic), ``'cpu'``, ``'cuda'``, ``'torch'``, or ``'unfused'`` (the authors' formulation).
    """

    def __init__(self, dim: int, ctx_dim: int, *, kernel_size: int, smk_size: int = 5, num_heads: int = 2,
                 mlp_ratio: float = 4., ls_init_value: Optional[float] = None, res_scale: bool = True,
                 drop_path: float = 0., is_first: bool = False, is_last: bool = False, deploy: bool = False,
                 contmix_backend: Optional[str] = None):
        super().__init__()
        out_dim = dim + ctx_dim
        mlp_dim = int(dim * mlp_ratio)
        self.dim = dim
        self.kernel_size = kernel_size
        self.smk_size = smk_size
        self.num_groups = num_heads * 2
        self.scale = (dim // self.num_groups) ** -0.5
        self.res_scale = res_scale
        self.is_first = is_first
        self.is_last = is_last
        self.contmix_backend = contmix_backend

        if not is_first:
            self.x_scale = LayerScale(ctx_dim, init_value=1)
            self.h_scale = LayerScale(ctx_dim, init_value=1)
        self.dwconv1 = ResDWConv(out_dim, 3)
        self.norm1 = LayerNorm2d(out_dim)
        self.fusion = FusingSequential(
            DepthwiseConv2d(out_dim, 3),
            nn.BatchNorm2d(out_dim),
            nn.GELU(),
            PointwiseConv2d(out_dim, dim),
            GRN(dim),
        )
        self.weight_query = FusingSequential(PointwiseConv2d(dim, dim // 2, bias=False), nn.BatchNorm2d(dim // 2))
        self.weight_key = FusingSequential(
            nn.AdaptiveAvgPool2d(7),
            nn.Conv2d(ctx_dim, dim // 2, 1, bias=False),  # 49 pixels: nn.Conv2d (see SEModule)
            nn.BatchNorm2d(dim // 2),
        )
        self.weight_proj = nn.Conv2d(49, smk_size**2 + kernel_size**2, 1)
        self.dyconv_proj = FusingSequential(PointwiseConv2d(dim, dim, bias=False), nn.BatchNorm2d(dim))
        self.lepe = FusingSequential(DilatedReparamBlock(dim, kernel_size, deploy=deploy), nn.BatchNorm2d(dim))
        self.se_layer = SEModule(dim)
        self.gate = FusingSequential(PointwiseConv2d(dim, dim, bias=False), nn.BatchNorm2d(dim), nn.SiLU())
        self.proj = nn.Sequential(nn.BatchNorm2d(dim), PointwiseConv2d(dim, out_dim))
        self.dwconv2 = ResDWConv(out_dim, 3)
        self.norm2 = LayerNorm2d(out_dim)
        self.mlp = FusingSequential(
            PointwiseConv2d(out_dim, mlp_dim),
            nn.GELU(),
            ResDWConv(mlp_dim, 3),
            GRN(mlp_dim),
            PointwiseConv2d(mlp_dim, out_dim),
        )
        self.ls1 = _layer_scale_or_identity(out_dim, ls_init_value)
        self.ls2 = _layer_scale_or_identity(out_dim, ls_init_value)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        # Relative position biases of the two dynamic kernels, indexed by (row, col) offset + K - 1.
        self.rpb1 = nn.Parameter(torch.zeros(self.num_groups, 2 * smk_size - 1, 2 * smk_size - 1))
        self.rpb2 = nn.Parameter(torch.zeros(self.num_groups, 2 * kernel_size - 1, 2 * kernel_size - 1))

    def _working_size(self, height: int, width: int) -> Optional[Tuple[int, int]]:
        """The size the kernels run at when the map is smaller than K (the authors' rule, in Python floats)."""
        k = self.kernel_size
        if min(height, width) >= k:
            return None
        if height < width:
            return k, int(k / height * width)
        return int(k / width * height), k

    def _dynamic_conv(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Per-pixel dynamic kernels from queries of ``f``'s first d channels and keys of its context channels."""
        b, _, height, width = x.shape
        g = self.num_groups
        s2 = self.smk_size**2
        # split, not two slices: its backward writes one gradient map in f's memory format, where each slice's
        # backward would make a zero-filled, contiguous-format map of f's size (and the sum of the two).
        features, context = f.split([self.dim, f.shape[1] - self.dim], dim=1)
        (query, ) = channel_heads(self.weight_query(features) * self.scale, 1, g)
        query = query.reshape(b, g, height * width, -1)  # [B, G, HW, c]
        key = self.weight_key(context)
        key = key.reshape(b, g, -1, 49)
        # The logits are weight_proj(q^T k) = q^T (k W^T) + bias: weight_proj goes into the 49 keys first, so the
        # per-pixel products have c terms (8 to 16 in the presets) instead of 49, and the [B, G, HW, 49] affinity map
        # and its GEMM are gone. One product per kernel keeps both logits contiguous.
        kernel_keys = torch.matmul(key, self.weight_proj.weight.flatten(1).t().to(key.dtype))  # [B, G, c, S2+K2]
        logits1 = torch.matmul(query, kernel_keys[..., :s2])  # [B, G, HW, S2]
        logits2 = torch.matmul(query, kernel_keys[..., s2:])
        dtype = logits1.dtype  # float16 under autocast
        proj_bias = self.weight_proj.bias.to(dtype)
        logits1 = logits1.add_(proj_bias[:s2]).view(b, g, height, width, s2)
        logits2 = logits2.add_(proj_bias[s2:]).view(b, g, height, width, -1)
        # value channels are laid out (m, g, c) with m = 2: the first half feeds kernel 1, the second kernel 2.
        value1, value2 = (value.to(dtype) for value in channel_heads(x, 2, g))
        # The biases stay in the accumulation dtype (float32 under float16 autocast): no rounding, and their
        # gradient (a sum over every pixel) comes back in float32 instead of overflowing float16.
        bias_dtype = accumulation_dtype(dtype)
        out1 = self._aggregate(logits1, value1, self.smk_size, self.rpb1.to(bias_dtype))
        out2 = self._aggregate(logits2, value2, self.kernel_size, self.rpb2.to(bias_dtype))  # [B, G, H, W, c]
        # Back to [B, d, H, W] with channels (2G, c), written once, in x's memory format.
        if is_channels_last(x):
            out = torch.cat([out1.permute(0, 2, 3, 1, 4), out2.permute(0, 2, 3, 1, 4)], dim=3)  # [B, H, W, 2G, c]
            return out.reshape(b, height, width, self.dim).permute(0, 3, 1, 2)
        out = torch.cat([out1.permute(0, 1, 4, 2, 3), out2.permute(0, 1, 4, 2, 3)], dim=1)  # [B, 2G, c, H, W]
        return out.reshape(b, self.dim, height, width)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """``mlp(norm2(x))``, keeping ``x`` rather than the normalised map for the first conv's backward."""
        return self.mlp[1:](recompute_into_conv(self.norm2, (x, ), [self.norm2], self.mlp[0]))

    def _aggregate(self, logits: torch.Tensor, value: torch.Tensor, kernel_size: int,
                   rpb: torch.Tensor) -> torch.Tensor:
        """The ContMix core: ``softmax(logits + rpb)``-weighted K x K neighbourhood sums of ``value``."""
        return contmix_aggregate(logits, value, kernel_size, rpb=rpb, softmax=True, backend=self.contmix_backend)

    def forward(self, x: torch.Tensor, h: torch.Tensor,
                ctx: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Mix ``x`` [B, d, H, W] with the running context ``h`` [B, c, H, W] and the overview ``ctx`` [B, c, H, W].

        Returns:
            tuple: ``(x [B, d, H, W], h [B, c, H, W])``, or ``(y [B, d + c, H, W], None)`` for the last block.
        """
        height, width = x.shape[-2:]
        if not self.is_first:
            h = self.x_scale(h) + self.h_scale(ctx)
        f = self.dwconv1(torch.cat([x, h], dim=1))
        identity = f
        f = self.norm1(f)
        x = self.fusion(f)
        # gate, lepe and dyconv_proj end in cheap layers (BN, SiLU) that feed proj with SE: their outputs are
        # recomputed in the backward from the convs' outputs (recompute_into_conv) instead of being kept.
        gate, gate_tail = self.gate.split_cheap_tail(x)
        lepe, lepe_tail = self.lepe.split_cheap_tail(x)

        size = self._working_size(height, width)
        if size is not None:
            x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
            f = F.interpolate(f, size=size, mode='bilinear', align_corners=False)
        x = self._dynamic_conv(x, f)
        if size is not None:
            x = F.adaptive_avg_pool2d(x, (height, width))

        x, dyconv_tail = self.dyconv_proj.split_cheap_tail(x)
        bn, conv = self.proj

        def gated(x: torch.Tensor, lepe: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
            return bn(gate_tail(gate) * self.se_layer(dyconv_tail(x) + lepe_tail(lepe)))

        x = recompute_into_conv(gated, (x, lepe, gate), [dyconv_tail, lepe_tail, gate_tail, self.se_layer, bn], conv)
        if self.res_scale:
            x = self.ls1(identity) + self.drop_path(x)
            x = self.dwconv2(x)
            x = self.ls2(x) + self.drop_path(self._mlp(x))
        else:
            x = identity + self.drop_path(self.ls1(x))
            x = self.dwconv2(x)
            x = x + self.drop_path(self.ls2(self._mlp(x)))

        if self.is_last:
            return x, None
        return tuple(x.split([self.dim, x.shape[1] - self.dim], dim=1))  # (see _dynamic_conv on split)


class ContextDownsample(nn.Module):
    """Stride-2 downsampling of the feature map (d -> D3) and of the context (c -> c) between sub-stages 3 and 4."""

    def __init__(self, *, in_dim: int, out_dim: int, ctx_dim: int):
        super().__init__()
        self.x_proj = conv_bn(in_dim, out_dim, stride=2)
        self.h_proj = conv_bn(ctx_dim, ctx_dim, stride=2)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.x_proj(x), self.h_proj(h)
