"""The OverLoCK network body as a plain ``nn.Module``, shared by the mmdet/mmseg backbone and the timm classifier.

A Base-Net (stem + stages 1-3 of RepConvBlocks) encodes the image, a light Overview-Net (stage 4) turns the stage-3
map into a coarse context, and a Focus-Net re-processes stages 3 and 4 with ContMix blocks guided by that context.
Module names and state-dict keys are the authors' (``../shared/spec/overlock.md``). This module needs torch and timm
only, so ``timm.create_model('overlock_t')`` works where OpenMMLab is not installed; the mmengine backbone
(:class:`~mmoverlock.models.OverLoCK`) adds its levels' norms, freezing and checkpoint loading on top.
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from timm.layers import register_notrace_function
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .blocks import ContextDownsample, ContMixBlock, RepConvBlock
from .layers import DILATED_BRANCHES, GRN, DilatedReparamBlock, LayerNorm2d, LayerScale, conv_bn, stem

# The authors' ImageNet-1K release of each preset; the deploy form has its own file.
RELEASE_URL = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_{arch}_in1k_224{form}.pth'

#: ``memory_format`` choices: what ``'auto'`` picks per device type, or a fixed layout.
MEMORY_FORMATS = dict(auto=None, channels_last=torch.channels_last, contiguous=torch.contiguous_format)
ARCH_KEYS = ('depth', 'sub_depth', 'embed_dim', 'kernel_size', 'mlp_ratio', 'sub_mlp_ratio', 'sub_num_heads',
             'smk_size', 'ls_init_value', 'res_scale')


def _preset(depth, sub_depth, embed_dim, sub_num_heads) -> dict:
    return dict(depth=depth, sub_depth=sub_depth, embed_dim=embed_dim, kernel_size=[17, 15, 13, 7],
                mlp_ratio=[4, 4, 4, 4], sub_mlp_ratio=[3, 3], sub_num_heads=sub_num_heads, smk_size=5,
                ls_init_value=[None, None, 1, 1], res_scale=True)


def trunc_normal_init_(module: nn.Module, std: float = .02) -> None:
    """The authors' init of a conv or linear layer: truncated normal weight (at +-2), zero bias."""
    nn.init.trunc_normal_(module.weight, std=std, a=-2., b=2.)
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
        arch (str | dict): ``'xt'``, ``'t'``, ``'s'``, ``'b'``, or a dict with exactly the keys ``ARCH_KEYS``.
            Defaults to ``'t'``.
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
        **kwargs: Passed on to the next class in the method resolution order (the backbone's ``BaseModule`` takes
            ``init_cfg``); none for a plain trunk.
    """

    arch_settings: Dict[str, dict] = {
        'xt': _preset([2, 2, 3, 2], [6, 2], [56, 112, 256, 336], [4, 6]),
        't': _preset([4, 4, 6, 2], [12, 2], [64, 128, 256, 512], [4, 8]),
        's': _preset([6, 6, 8, 3], [16, 3], [64, 128, 320, 512], [8, 16]),
        'b': _preset([8, 8, 10, 4], [20, 4], [80, 160, 384, 576], [6, 9]),
    }
    #: Smallest input height and width (see the class docstring).
    min_input_size = 1

    def __init__(self,
                 arch: Union[str, dict] = 't',
                 in_channels: int = 3,
                 drop_path_rate: float = 0.,
                 deploy: bool = False,
                 with_cp: bool = False,
                 memory_format: str = 'auto',
                 **kwargs):
        super().__init__(**kwargs)
        self.arch = self.parse_arch(arch)
        self._check_arguments(in_channels, drop_path_rate, memory_format)
        self.in_channels = in_channels
        self.deploy = deploy
        self.with_cp = with_cp
        self.memory_format = memory_format

        a = self.arch
        depth, sub_depth, dims, ks = a['depth'], a['sub_depth'], a['embed_dim'], a['kernel_size']
        ctx_dim = dims[3] // 4
        #: Channels of the four maps of ``forward_maps``.
        self.level_channels = [dims[0], dims[1], dims[2] + ctx_dim, dims[3] + ctx_dim]

        dpr = torch.linspace(0, drop_path_rate, sum(depth) + sum(sub_depth), device='cpu').tolist()
        self.patch_embed1 = stem(in_channels, dims[0])
        self.patch_embed2 = conv_bn(dims[0], dims[1], stride=2)
        self.patch_embed3 = conv_bn(dims[1], dims[2], stride=2)
        self.patch_embed4 = conv_bn(dims[2], dims[3], stride=2)
        self.high_level_proj = nn.Conv2d(dims[3], ctx_dim, 1)
        self.patch_embedx = ContextDownsample(dims[2], dims[3], ctx_dim)

        start = 0
        for stage in range(4):
            blocks = nn.ModuleList(
                RepConvBlock(dims[stage], ks[stage], a['mlp_ratio'][stage], a['ls_init_value'][stage],
                             a['res_scale'], dpr[start + i], deploy) for i in range(depth[stage]))
            setattr(self, f'blocks{stage + 1}', blocks)
            start += depth[stage]
        for sub, stage in enumerate((2, 3)):
            n = sub_depth[sub]
            blocks = nn.ModuleList(
                ContMixBlock(dims[stage], ctx_dim, ks[stage], a['smk_size'], a['sub_num_heads'][sub],
                             a['sub_mlp_ratio'][sub], a['ls_init_value'][stage], a['res_scale'], dpr[start + i],
                             is_first=(stage == 2 and i == 0), is_last=(stage == 3 and i == n - 1), deploy=deploy)
                for i in range(n))
            setattr(self, f'sub_blocks{stage + 1}', blocks)
            start += n

    # ------------------------------------------------------------------ arguments
    @classmethod
    def parse_arch(cls, arch: Union[str, dict]) -> dict:
        """Resolve a preset name or validate an arch dict (exactly ``ARCH_KEYS``)."""
        if isinstance(arch, str):
            key = arch.lower()
            if key not in cls.arch_settings:
                raise KeyError(f'OverLoCK: arch must be one of {sorted(cls.arch_settings)} or a dict, got {arch!r}')
            return copy.deepcopy(cls.arch_settings[key])
        if not isinstance(arch, dict):
            raise TypeError(f'OverLoCK: arch must be a str or a dict, got {type(arch).__name__}')
        missing, extra = set(ARCH_KEYS) - set(arch), set(arch) - set(ARCH_KEYS)
        if missing or extra:
            raise KeyError(f'OverLoCK: an arch dict needs exactly the keys {list(ARCH_KEYS)}; '
                           f'missing {sorted(missing)}, unexpected {sorted(extra)}')
        lengths = dict(depth=4, sub_depth=2, embed_dim=4, kernel_size=4, mlp_ratio=4, sub_mlp_ratio=2,
                       sub_num_heads=2, ls_init_value=4)
        for key, n in lengths.items():
            if len(arch[key]) != n:
                raise ValueError(f'OverLoCK: arch[{key!r}] must have {n} entries, got {arch[key]}')
        cls._check_arch_values(arch)
        return copy.deepcopy(dict(arch))

    @staticmethod
    def _check_arch_values(arch: dict) -> None:
        """Refuse arch entries that would only fail later, deep in a layer (``ValueError`` naming the entry)."""

        def positive_ints(key: str) -> bool:
            return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in arch[key])

        for key in ('depth', 'sub_depth', 'embed_dim', 'sub_num_heads'):
            if not positive_ints(key):
                raise ValueError(f'OverLoCK: arch[{key!r}] must hold positive ints, got {arch[key]}')
        for key in ('mlp_ratio', 'sub_mlp_ratio'):
            if not all(isinstance(v, (int, float)) and v > 0 for v in arch[key]):
                raise ValueError(f'OverLoCK: arch[{key!r}] must hold positive numbers, got {arch[key]}')
        if any(k not in DILATED_BRANCHES for k in arch['kernel_size']):
            raise ValueError(f"OverLoCK: arch['kernel_size'] entries must be among {sorted(DILATED_BRANCHES)} (the "
                             f"sizes of the dilated re-parameterisable block), got {arch['kernel_size']}")
        smk = arch['smk_size']
        if isinstance(smk, bool) or not isinstance(smk, int) or smk < 1 or smk % 2 == 0:
            raise ValueError(f"OverLoCK: arch['smk_size'] must be a positive odd int, got {smk!r}")
        for sub, stage in enumerate((2, 3)):
            # A ContMix block splits its channels into 2 kernels x 2*heads groups, and its queries into 2*heads.
            dim, heads = arch['embed_dim'][stage], arch['sub_num_heads'][sub]
            if dim % (4 * heads):
                raise ValueError(f"OverLoCK: arch['embed_dim'][{stage}] = {dim} must be a multiple of "
                                 f"4 * arch['sub_num_heads'][{sub}] = {4 * heads}")

    @staticmethod
    def _check_arguments(in_channels: int, drop_path_rate: float, memory_format: str) -> None:
        """Refuse malformed constructor arguments, naming the argument and its expected form."""
        if not is_int(in_channels) or in_channels < 1:
            raise ValueError(f'OverLoCK: in_channels must be a positive int, got {in_channels!r}')
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) or \
                not 0 <= drop_path_rate < 1:
            raise ValueError(f'OverLoCK: drop_path_rate must be a number in [0, 1), got {drop_path_rate!r}')
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f'OverLoCK: memory_format must be one of {list(MEMORY_FORMATS)}, got {memory_format!r}')

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


def is_int(value) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)
