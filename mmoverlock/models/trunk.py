"""The OverLoCK network body as a plain ``nn.Module``, shared by the mmdet/mmseg backbone and the timm classifier.

A Base-Net (stem + stages 1-3 of RepConvBlocks) encodes the image, a light Overview-Net (stage 4) turns the stage-3
map into a coarse context, and a Focus-Net re-processes stages 3 and 4 with ContMix blocks guided by that context.
Module names and state-dict keys are the authors' (``../shared/spec/overlock.md``). This module needs torch and timm
only, so ``timm.create_model('overlock_t')`` works where OpenMMLab is not installed; the mmengine backbone
(:class:`~mmoverlock.models.OverLoCK`) adds its levels' norms, freezing and checkpoint loading on top.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from timm.layers import register_notrace_function
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops.pointwise import PointwiseConv2d
from .arch import ARCH_SETTINGS, MEMORY_FORMATS, check_trunk_arguments, parse_arch
from .blocks import ContextDownsample, ContMixBlock, RepConvBlock
from .fold_cache import drop_folds
from .layers import GRN, DilatedReparamBlock, LayerScale, conv_bn, stem, store_kernels_channels_last


def trunc_normal_init_(module: nn.Module, std: float = .02) -> None:
    """The authors' init of a conv or linear layer: truncated normal weight (at +-2), zero bias. The values are drawn
    in the weight's index order whatever its memory layout (an in-place draw follows the storage order), so a seed
    gives the same weights with channels-last kernels (``store_kernels_channels_last``) as with NCHW ones."""
    weight = module.weight
    with torch.no_grad():
        weight.copy_(nn.init.trunc_normal_(torch.empty(weight.shape, dtype=weight.dtype, device=weight.device),
                                           std=std, a=-2., b=2.))
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def prepare_images(x: torch.Tensor, in_channels: int, min_size: int, weight: torch.Tensor, memory_format: str,
                   batch_stats: bool) -> torch.Tensor:
    """Refuse a malformed image batch before any layer runs, naming what is wrong and the expected form; return it
    in the memory format the network runs in (see ``OverLoCKTrunk``'s ``memory_format``).

    A free function that FX leaves as one call (``torch.fx.wrap`` below, and timm's ``register_notrace_function``),
    so symbolic tracing records the checks instead of failing on them; they run on the real tensor then.

    Args:
        x (Tensor): The input, expected [B, in_channels, H, W], floating point.
        in_channels (int): Expected channels.
        min_size (int): Smallest height and width.
        weight (Tensor): The first layer's weight: the device and dtype the input must match.
        memory_format (str): A key of ``MEMORY_FORMATS``.
        batch_stats (bool): Whether some BatchNorm normalises with batch statistics (training mode).
    """
    expected = f'[B, {in_channels}, H, W]'
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'OverLoCK: input must be a Tensor {expected}, got {type(x).__name__}')
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f'OverLoCK: input must be {expected}, got shape {tuple(x.shape)}')
    height, width = x.shape[-2:]
    if min(height, width) < min_size:
        raise ValueError(f'OverLoCK: input height and width must be >= {min_size}, got {(height, width)}')
    if not x.is_floating_point():
        raise TypeError(f'OverLoCK: input must be a floating-point tensor (normalised images), got {x.dtype}')
    if x.device != weight.device:
        raise ValueError(f'OverLoCK: input is on {x.device} but the weights are on {weight.device}')
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f'OverLoCK: input has dtype {x.dtype} but the weights have {weight.dtype}; cast one '
                        f'to the other or run under torch.autocast')
    # BatchNorm in training mode needs two values per channel, and the stride-32 maps are the smallest.
    if batch_stats and 0 < x.shape[0] * -(-height // 32) * -(-width // 32) < 2:
        raise ValueError(f'OverLoCK: training with BatchNorm needs batch x ceil(H / 32) x ceil(W / 32) >= 2, '
                         f'got batch {x.shape[0]} of {height}x{width} images; use a larger batch or images, '
                         f'norm_eval=True, or eval mode')
    layout = MEMORY_FORMATS[memory_format]
    if layout is None:  # 'auto'
        layout = torch.channels_last if x.device.type in ('cpu', 'cuda') else torch.contiguous_format
    return x.contiguous(memory_format=layout)


torch.fx.wrap('prepare_images')
register_notrace_function(prepare_images)


class OverLoCKTrunk(nn.Module):
    """The OverLoCK network: stem, Base-Net, Overview-Net and Focus-Net, and the maps its forms are made of.

    Input size: any height and width from 1 pixel up (``min_input_size``), odd or not, any aspect ratio. Map i is
    ``ceil(H / 2^(i+2))`` by ``ceil(W / 2^(i+2))``; where a map is smaller than a ContMix kernel, the block runs the
    kernel on the map resized up to the kernel size and pools back (the authors' rule). In training mode BatchNorm
    needs ``batch * ceil(H / 32) * ceil(W / 32) >= 2``, which the input check enforces.

    Args:
        arch (str | dict): ``'xt'``, ``'t'``, ``'s'``, ``'b'``, or a dict with exactly the keys ``ARCH_KEYS``
            (:mod:`mmoverlock.models.arch`). Defaults to ``'t'``.
        in_channels (int): Input channels. Defaults to 3.
        drop_path_rate (float): Stochastic depth rate, linear over blocks1-4, sub_blocks3, sub_blocks4.
            Defaults to 0.
        deploy (bool): Build the re-parameterised form. Defaults to ``False``.
        with_cp (bool): Activation checkpointing per block (less memory, slower). Defaults to ``False``.
        memory_format (str): Layout the network runs in: ``'channels_last'``, ``'contiguous'`` (NCHW), or
            ``'auto'``, which picks channels-last on the CPU and on CUDA (oneDNN runs large depthwise kernels on a
            slow path in NCHW, about 20 times slower at 17 x 17; cuDNN prefers channels-last too) and NCHW on other
            devices. The input is converted once; the outputs are in that layout (same shapes and values, only the
            strides differ). Defaults to ``'auto'``.
        contmix_backend (str, optional): Where the ContMix blocks aggregate (the ``backend`` of
            :func:`~mmoverlock.ops.contmix_aggregate`): ``None`` picks the fused op's compiled kernels where built,
            else its torch fallback; ``'unfused'`` runs the authors' formulation (bias and softmax in torch, then the
            aggregation alone): same numbers, more memory and time, a baseline to compare with. Defaults to ``None``.
        **kwargs: Passed on to the next class in the method resolution order (the backbone's ``BaseModule`` takes
            ``init_cfg``); none for a plain trunk.
    """

    #: The presets (``mmoverlock.models.arch.ARCH_SETTINGS``), by name.
    arch_settings: Dict[str, dict] = ARCH_SETTINGS
    #: Smallest input height and width (see the class docstring).
    min_input_size = 1

    def __init__(self,
                 arch: Union[str, dict] = 't',
                 in_channels: int = 3,
                 drop_path_rate: float = 0.,
                 deploy: bool = False,
                 with_cp: bool = False,
                 memory_format: str = 'auto',
                 contmix_backend: Optional[str] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.arch = parse_arch(arch)
        check_trunk_arguments(in_channels, drop_path_rate, memory_format, contmix_backend)
        self.in_channels = in_channels
        self.deploy = deploy
        self.with_cp = with_cp
        self.memory_format = memory_format

        a = self.arch
        dims = a['embed_dim']
        ctx_dim = dims[3] // 4
        #: Channels of the four maps of ``forward_maps``.
        self.level_channels = [dims[0], dims[1], dims[2] + ctx_dim, dims[3] + ctx_dim]
        # Stochastic depth grows linearly over the blocks in the order they run.
        num_blocks = sum(a['depth']) + sum(a['sub_depth'])
        drop_path = iter(torch.linspace(0, drop_path_rate, num_blocks, device='cpu').tolist())

        self.patch_embed1 = stem(in_channels, dims[0])
        self.patch_embed2 = conv_bn(dims[0], dims[1], stride=2)
        self.patch_embed3 = conv_bn(dims[1], dims[2], stride=2)
        self.patch_embed4 = conv_bn(dims[2], dims[3], stride=2)
        self.high_level_proj = PointwiseConv2d(dims[3], ctx_dim)
        self.patch_embedx = ContextDownsample(in_dim=dims[2], out_dim=dims[3], ctx_dim=ctx_dim)
        # Base-Net stages 1-3 and the Overview-Net (stage 4): large-kernel re-parameterisable conv blocks.
        for stage in range(4):
            self.add_module(f'blocks{stage + 1}', nn.ModuleList(
                RepConvBlock(dims[stage], kernel_size=a['kernel_size'][stage], mlp_ratio=a['mlp_ratio'][stage],
                             ls_init_value=a['ls_init_value'][stage], res_scale=a['res_scale'],
                             drop_path=next(drop_path), deploy=deploy)
                for _ in range(a['depth'][stage])))
        # Focus-Net sub-stages 3 and 4: ContMix blocks at the resolution of stages 3 and 4, guided by the context.
        for sub, stage in enumerate((2, 3)):
            n = a['sub_depth'][sub]
            self.add_module(f'sub_blocks{stage + 1}', nn.ModuleList(
                ContMixBlock(dims[stage], ctx_dim, kernel_size=a['kernel_size'][stage], smk_size=a['smk_size'],
                             num_heads=a['sub_num_heads'][sub], mlp_ratio=a['sub_mlp_ratio'][sub],
                             ls_init_value=a['ls_init_value'][stage], res_scale=a['res_scale'],
                             drop_path=next(drop_path), is_first=(stage == 2 and i == 0),
                             is_last=(stage == 3 and i == n - 1), deploy=deploy, contmix_backend=contmix_backend)
                for i in range(n)))
        if MEMORY_FORMATS[memory_format] is not torch.contiguous_format:  # 'auto': channels-last on CPU and CUDA
            store_kernels_channels_last(self)

    def train(self, mode: bool = True) -> 'OverLoCKTrunk':
        # Folds kept for inference are dropped at every mode switch: weights written through ``.data`` (mmengine's EMA
        # hook swaps them so before its validation loop calls eval()) leave no trace in their version counters.
        drop_folds(self)
        return super().train(mode)

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` checked (see ``prepare_images``) and in the memory format the network runs in."""
        batch_stats = self.training and any(m.training for m in self.modules() if isinstance(m, _BatchNorm))
        return prepare_images(x, self.in_channels, self.min_input_size, self.patch_embed1[0].weight,
                              self.memory_format, batch_stats)

    def _run(self, block: nn.Module, *args):
        if self.with_cp and args[0].requires_grad:
            return cp.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _stage3_input(self, x: torch.Tensor) -> torch.Tensor:
        """The map stage 3 continues from, given blocks2's output: the raw map here (the authors' classifier)."""
        return x

    def forward_maps(self, x: torch.Tensor, indices: Sequence[int] = (0, 1, 2, 3),
                     last: int = 3) -> Tuple[List[Optional[torch.Tensor]], Optional[torch.Tensor]]:
        """Run the network up to the maps that the backbone's levels and the classifier's heads are made of.

        Args:
            x (Tensor): Images [B, in_channels, H, W], any H, W >= 1, floating point in the weights' dtype (any float
                under autocast); any strides.
            indices (Sequence[int]): Which of the side maps 0 and 2 to keep; maps 1 and 3 are returned when computed.
            last (int): The last map to compute (0-3); the network stops there.

        Returns:
            tuple: The four maps (``None`` for a side map not in ``indices`` and for maps after ``last``) and the
            Overview-Net output [B, D3, H / 32, W / 32] (blocks4's, before ``high_level_proj``; ``None`` for
            ``last`` < 2). Map 0 is blocks1's output (D0), map 1 the map stage 3 continues from (D1), map 2
            ``concat[x, h]`` after sub_blocks3 (D2 + c), map 3 the last ContMix block's output (D3 + c).
        """
        x = self._check_input(x)
        maps: List[Optional[torch.Tensor]] = [None] * 4
        x = self.patch_embed1(x)
        for blk in self.blocks1:
            x = self._run(blk, x)
        if 0 in indices or last == 0:
            maps[0] = x
        if last == 0:
            return maps, None
        x = self.patch_embed2(x)
        for blk in self.blocks2:
            x = self._run(blk, x)
        x = self._stage3_input(x)
        maps[1] = x
        if last == 1:
            return maps, None

        # Base-Net stage 3, then the Overview-Net's coarse context.
        x = self.patch_embed3(x)
        for blk in self.blocks3:
            x = self._run(blk, x)
        overview = self.patch_embed4(x)
        for blk in self.blocks4:
            overview = self._run(blk, overview)

        # Focus-Net: ContMix blocks guided by the context.
        ctx = self.high_level_proj(overview)
        ctx_up = F.interpolate(ctx, size=x.shape[-2:], mode='bilinear', align_corners=False)
        h = ctx_up
        for blk in self.sub_blocks3:
            x, h = self._run(blk, x, h, ctx_up)
        if 2 in indices or last == 2:
            maps[2] = torch.cat([x, h], dim=1)
        if last == 2:
            return maps, overview
        x, h = self.patch_embedx(x, h)
        for blk in self.sub_blocks4:
            x, h = self._run(blk, x, h, ctx)
        maps[3] = x
        return maps, overview

    # ------------------------------------------------------------------ weights
    def init_weights(self) -> None:
        """The authors' initialisation."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                trunc_normal_init_(module)
            elif isinstance(module, (nn.LayerNorm, _BatchNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, GRN):
                nn.init.zeros_(module.gamma)
                nn.init.zeros_(module.beta)
            elif isinstance(module, ContMixBlock):
                nn.init.zeros_(module.rpb1)
                nn.init.zeros_(module.rpb2)
            elif isinstance(module, LayerScale):
                nn.init.constant_(module.weight, module.init_value)
                nn.init.zeros_(module.bias)

    def switch_to_deploy(self) -> 'OverLoCKTrunk':
        """Fold every DilatedReparamBlock into one large-kernel conv, in place (exact in eval mode)."""
        for module in self.modules():
            if isinstance(module, DilatedReparamBlock):
                module.switch_to_deploy()
        self.deploy = True
        return self

