"""The OverLoCK backbone for mmdet and mmseg (Lou & Yu, "OverLoCK: An Overview-first-Look-Closely-next ConvNet
with Context-Mixing Dynamic Kernels", CVPR 2025, arXiv 2502.20087).

A Base-Net (stem + stages 1-3 of RepConvBlocks) encodes the image, a light Overview-Net (stage 4) turns the
stage-3 map into a coarse context, and a Focus-Net re-processes stages 3 and 4 with ContMix blocks guided by that
context. Module names and state-dict keys are the authors' (``../shared/spec/overlock.md``).
"""
import copy
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_init
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .blocks import ContextDownsample, ContMixBlock, RepConvBlock
from .checkpoint import load_overlock_checkpoint
from .layers import DILATED_BRANCHES, GRN, DilatedReparamBlock, LayerNorm2d, LayerScale, conv_bn, stem
from .registry import register_model

# The authors' ImageNet-1K release of each preset, loaded by ``pretrained=True``; the deploy form has its own file.
RELEASE_URL = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_{arch}_in1k_224{form}.pth'

#: ``memory_format`` choices: what ``'auto'`` picks per device type, or a fixed layout.
MEMORY_FORMATS = dict(auto=None, channels_last=torch.channels_last, contiguous=torch.contiguous_format)
ARCH_KEYS = ('depth', 'sub_depth', 'embed_dim', 'kernel_size', 'mlp_ratio', 'sub_mlp_ratio', 'sub_num_heads',
             'smk_size', 'ls_init_value', 'res_scale')


def _preset(depth, sub_depth, embed_dim, sub_num_heads) -> dict:
    return dict(depth=depth, sub_depth=sub_depth, embed_dim=embed_dim, kernel_size=[17, 15, 13, 7],
                mlp_ratio=[4, 4, 4, 4], sub_mlp_ratio=[3, 3], sub_num_heads=sub_num_heads, smk_size=5,
                ls_init_value=[None, None, 1, 1], res_scale=True)


@register_model
class OverLoCK(BaseModule):
    """OverLoCK backbone returning multi-scale features (strides 4, 8, 16, 32).

    Output channels of the four levels are ``[D0, D1, D2 + c, D3 + c]`` with ``c = D3 // 4`` (see
    ``out_channels``). Level 3 of the detection form (``overview_fusion=True``) also adds the projected
    Overview-Net output, ``h_proj(extra_norm[4](ctx))``, as in the authors' detector.

    ``frozen_stages`` freezes (no grad, eval mode) the modules up to that stage index:

    - ``0``: the stem ``patch_embed1``;
    - ``1``: + ``blocks1`` and ``extra_norm[0]``;
    - ``2``: + ``patch_embed2``, ``blocks2``, ``extra_norm[1]``;
    - ``3``: + ``patch_embed3``, ``blocks3``, ``patch_embed4``, ``blocks4``, ``high_level_proj`` (the rest of the
      Base-Net and the whole Overview-Net);
    - ``4``: + the Focus-Net: ``sub_blocks3``, ``extra_norm[2]``, ``patch_embedx``, ``sub_blocks4``,
      ``extra_norm[3]`` (and ``extra_norm[4]``, ``h_proj`` in the detection form), i.e. everything.

    Input size: any height and width from 1 pixel up (``min_input_size``), odd or not, any aspect ratio, so every
    image that mmdet's and mmseg's pipelines pass on runs through. Level i is ``ceil(H / 2^(i+2))`` by
    ``ceil(W / 2^(i+2))``; where a level is smaller than a ContMix kernel, the block runs the kernel on the map
    resized up to the kernel size and pools back (the authors' rule). Images below 32 pixels give 1 x 1 deeper levels,
    fine for inference; in training mode BatchNorm needs ``batch * ceil(H / 32) * ceil(W / 32) >= 2``, which
    ``forward`` checks.

    Args:
        arch (str | dict): ``'xt'``, ``'t'``, ``'s'``, ``'b'``, or a dict with exactly the keys ``ARCH_KEYS``.
            Defaults to ``'t'``.
        in_channels (int): Input channels. Defaults to 3.
        out_indices (Sequence[int]): Levels to return, from 0-3. Defaults to ``(0, 1, 2, 3)``.
        overview_fusion (bool): Detection form (adds ``extra_norm[4]`` and ``h_proj``). Defaults to ``False``.
        drop_path_rate (float): Stochastic depth rate, linear over blocks1-4, sub_blocks3, sub_blocks4.
            Defaults to 0.
        deploy (bool): Build the re-parameterised form. Defaults to ``False``.
        frozen_stages (int): Stages to freeze, -1 for none (see above). Defaults to -1.
        norm_eval (bool): Keep BatchNorm layers in eval mode while training. Defaults to ``False``.
        with_cp (bool): Activation checkpointing per block (less memory, slower). Defaults to ``False``.
        pretrained (bool | str, optional): ``True`` loads the authors' ImageNet-1K checkpoint of the preset ``arch``
            (``RELEASE_URL``; the re-parameterised file when ``deploy=True``), as their ``overlock_t(pretrained=True)``
            does. A string is a deprecated alias of ``init_cfg=dict(type='Pretrained', checkpoint=...)``, set by
            mmseg's ``EncoderDecoder(pretrained=...)``. ``False`` or ``None``: no checkpoint. Defaults to ``None``.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH_OR_URL)`` loads the authors'
            ImageNet, deploy-form, or full mmdet/mmseg checkpoints. Defaults to ``None`` (the authors' init).
        memory_format (str): Layout the network runs in: ``'channels_last'``, ``'contiguous'`` (NCHW), or
            ``'auto'``, which picks channels-last on the CPU and on CUDA (oneDNN runs large depthwise kernels on a
            slow path in NCHW, about 20 times slower at 17 x 17; cuDNN prefers channels-last too) and NCHW on other
            devices. The input is converted once; the outputs are in that layout (same shapes and values, only the
            strides differ; call ``.contiguous()`` on them where NCHW strides are needed). Defaults to ``'auto'``.

    Example:
        >>> import torch
        >>> from mmoverlock.models import OverLoCK
        >>> model = OverLoCK(arch='xt').eval()
        >>> for level in model(torch.rand(1, 3, 64, 96)):
        ...     print(tuple(level.shape))
        (1, 56, 16, 24)
        (1, 112, 8, 12)
        (1, 340, 4, 6)
        (1, 420, 2, 3)
    """

    arch_settings: Dict[str, dict] = {
        'xt': _preset([2, 2, 3, 2], [6, 2], [56, 112, 256, 336], [4, 6]),
        't': _preset([4, 4, 6, 2], [12, 2], [64, 128, 256, 512], [4, 8]),
        's': _preset([6, 6, 8, 3], [16, 3], [64, 128, 320, 512], [8, 16]),
        'b': _preset([8, 8, 10, 4], [20, 4], [80, 160, 384, 576], [6, 9]),
    }
    #: Smallest input height and width (see the class docstring).
    min_input_size = 1
    #: Whether the form has the per-level LayerNorms ``extra_norm`` (the backbone forms). Stage 3 then continues from
    #: the normalised stage-2 map, as in the authors' detector and segmentor; their ImageNet classifier
    #: (:class:`~mmoverlock.models.OverLoCKClassifier`) has no such norms and continues from the raw map.
    normalized_levels = True

    def __init__(self,
                 arch: Union[str, dict] = 't',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 overview_fusion: bool = False,
                 drop_path_rate: float = 0.,
                 deploy: bool = False,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 pretrained: Union[bool, str, None] = None,
                 init_cfg: Optional[dict] = None,
                 memory_format: str = 'auto'):
        if pretrained is not None and pretrained is not False:
            if init_cfg is not None:
                raise ValueError('OverLoCK: give either pretrained or init_cfg, not both')
            init_cfg = dict(type='Pretrained', checkpoint=self.pretrained_checkpoint(pretrained, arch, deploy))
        super().__init__(init_cfg=init_cfg)
        self.arch = self.parse_arch(arch)
        out_indices = self._check_arguments(in_channels, out_indices, frozen_stages, drop_path_rate, memory_format)
        self.in_channels = in_channels
        self.out_indices = out_indices
        self.overview_fusion = overview_fusion
        self.deploy = deploy
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.memory_format = memory_format

        a = self.arch
        depth, sub_depth, dims, ks = a['depth'], a['sub_depth'], a['embed_dim'], a['kernel_size']
        ctx_dim = dims[3] // 4
        self.level_channels = [dims[0], dims[1], dims[2] + ctx_dim, dims[3] + ctx_dim]
        self.out_channels = [self.level_channels[i] for i in out_indices]

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

        if self.normalized_levels:
            norms = [LayerNorm2d(c) for c in self.level_channels]
            if overview_fusion:
                norms.append(LayerNorm2d(dims[3]))
                self.h_proj = nn.Sequential(nn.Conv2d(dims[3], dims[3] + ctx_dim, 1),
                                            LayerScale(dims[3] + ctx_dim, init_value=1e-5))
            self.extra_norm = nn.ModuleList(norms)
        self._freeze_stages()

    @classmethod
    def pretrained_checkpoint(cls, pretrained: Union[bool, str], arch: Union[str, dict], deploy: bool) -> str:
        """The checkpoint path or URL that the ``pretrained`` argument names (see the class docstring)."""
        if pretrained is True:
            if not isinstance(arch, str) or arch not in cls.arch_settings:
                raise ValueError(f'OverLoCK: pretrained=True loads the release of a preset arch, one of '
                                 f'{sorted(cls.arch_settings)}; got arch={arch!r}. Give a checkpoint path or URL '
                                 f'(init_cfg=dict(type="Pretrained", checkpoint=...)) for another architecture')
            return RELEASE_URL.format(arch=arch, form='_reparam' if deploy else '')
        if isinstance(pretrained, str):
            # mmseg's EncoderDecoder forwards its model-level ``pretrained`` here, as mmseg's own backbones accept.
            warnings.warn('OverLoCK: pretrained=<path> is deprecated, use init_cfg=dict(type="Pretrained", '
                          'checkpoint=...)')
            return pretrained
        raise TypeError(f'OverLoCK: pretrained must be True, False, None or a checkpoint path/URL string, '
                        f'got {pretrained!r}')

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
    def _check_arguments(in_channels: int, out_indices: Union[int, Sequence[int]], frozen_stages: int,
                         drop_path_rate: float, memory_format: str) -> Tuple[int, ...]:
        """Refuse malformed constructor arguments (naming the argument and its expected form); return the
        ``out_indices`` as a tuple (a single int is one level, as in mmpretrain's backbones)."""

        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not is_int(in_channels) or in_channels < 1:
            raise ValueError(f'OverLoCK: in_channels must be a positive int, got {in_channels!r}')
        if is_int(out_indices):
            levels = (out_indices, )
        else:
            levels = tuple(out_indices) if isinstance(out_indices, (list, tuple, range)) else ()
        if not levels or len(set(levels)) != len(levels) or any(not is_int(i) or not 0 <= i <= 3 for i in levels):
            raise ValueError(f'OverLoCK: out_indices must be a non-empty sequence of distinct levels in 0..3, '
                             f'got {out_indices!r}')
        if not is_int(frozen_stages) or not -1 <= frozen_stages <= 4:
            raise ValueError(f'OverLoCK: frozen_stages must be an int in -1..4, got {frozen_stages!r}')
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) or \
                not 0 <= drop_path_rate < 1:
            raise ValueError(f'OverLoCK: drop_path_rate must be a number in [0, 1), got {drop_path_rate!r}')
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f'OverLoCK: memory_format must be one of {list(MEMORY_FORMATS)}, got {memory_format!r}')
        return levels

    # ------------------------------------------------------------------ forward
    def _layout(self, x: torch.Tensor) -> torch.memory_format:
        """The memory format to run ``x`` in (see ``memory_format``)."""
        fixed = MEMORY_FORMATS[self.memory_format]
        if fixed is not None:
            return fixed
        return torch.channels_last if x.device.type in ('cpu', 'cuda') else torch.contiguous_format

    def _check_input(self, x: torch.Tensor) -> None:
        """Refuse a malformed image batch before any layer runs, naming what is wrong and the expected form."""
        expected = f'[B, {self.in_channels}, H, W]'
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'OverLoCK: input must be a Tensor {expected}, got {type(x).__name__}')
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'OverLoCK: input must be {expected}, got shape {tuple(x.shape)}')
        height, width = x.shape[-2:]
        if min(height, width) < self.min_input_size:
            raise ValueError(f'OverLoCK: input height and width must be >= {self.min_input_size}, '
                             f'got {(height, width)}')
        if not x.is_floating_point():
            raise TypeError(f'OverLoCK: input must be a floating-point tensor (normalised images), got {x.dtype}')
        weight = self.patch_embed1[0].weight  # what the input meets first
        if x.device != weight.device:
            raise ValueError(f'OverLoCK: input is on {x.device} but the weights are on {weight.device}')
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f'OverLoCK: input has dtype {x.dtype} but the weights have {weight.dtype}; cast one '
                            f'to the other or run under torch.autocast')
        # BatchNorm in training mode needs two values per channel, and the stride-32 maps are the smallest.
        if self.training and 0 < x.shape[0] * -(-height // 32) * -(-width // 32) < 2 and \
                any(m.training for m in self.modules() if isinstance(m, _BatchNorm)):
            raise ValueError(f'OverLoCK: training with BatchNorm needs batch x ceil(H / 32) x ceil(W / 32) >= 2, '
                             f'got batch {x.shape[0]} of {height}x{width} images; use a larger batch or images, '
                             f'norm_eval=True, or eval mode')

    def _run(self, block: nn.Module, *args):
        if self.with_cp and args[0].requires_grad:
            return cp.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward_maps(self, x: torch.Tensor,
                     indices: Sequence[int] = (0, 1, 2, 3)) -> Tuple[List[Optional[torch.Tensor]], torch.Tensor]:
        """Run the network up to the maps that the backbone's levels and the classifier's heads are made of.

        Args:
            x (Tensor): Images [B, in_channels, H, W] (see :meth:`forward`).
            indices (Sequence[int]): Which of the side maps 0 and 2 to keep; maps 1 and 3 are always returned.

        Returns:
            tuple: The four maps (``None`` for a side map not in ``indices``) and the Overview-Net output
            [B, D3, H / 32, W / 32] (blocks4's, before ``high_level_proj``). Map 0 is blocks1's output (D0), map 1
            the map stage 3 continues from (D1; after ``extra_norm[1]`` in the backbone forms), map 2
            ``concat[x, h]`` after sub_blocks3 (D2 + c), map 3 the last ContMix block's output (D3 + c).
        """
        self._check_input(x)
        maps: List[Optional[torch.Tensor]] = [None] * 4
        x = self.patch_embed1(x.contiguous(memory_format=self._layout(x)))
        for blk in self.blocks1:
            x = self._run(blk, x)
        if 0 in indices:
            maps[0] = x
        x = self.patch_embed2(x)
        for blk in self.blocks2:
            x = self._run(blk, x)
        if self.normalized_levels:
            # Unlike level 0, level 1 is not a side branch: the authors' stage 3 continues from the *normalised*
            # map (their forward_base_features takes extra_norm[1]'s output; the reference gradients confirm it).
            x = self.extra_norm[1](x)
        maps[1] = x

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
        if 2 in indices:
            maps[2] = torch.cat([x, h], dim=1)
        x, h = self.patch_embedx(x, h)
        for blk in self.sub_blocks4:
            x, h = self._run(blk, x, h, ctx)
        maps[3] = x
        return maps, overview

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Args:
            x (Tensor): Images [B, in_channels, H, W], any H, W >= 1 (see the class docstring), floating point in
                the weights' dtype (any float under autocast); any strides (views, channels-last).

        Returns:
            tuple[Tensor]: The levels in ``out_indices``, level i [B, level_channels[i], H / 2^(i+2),
            W / 2^(i+2)] (sizes rounded up); empty levels for an empty batch.

        Raises:
            TypeError: Not a tensor, not floating point, or another dtype than the weights outside autocast.
            ValueError: Another shape than [B, in_channels, H, W], another device than the weights, or a training
                batch too small for BatchNorm.
        """
        if isinstance(x, torch.Tensor) and x.shape[:1] == (0, ):  # empty levels: ContMix cannot reshape 0 images
            self._check_input(x)
            height, width = x.shape[-2:]
            return tuple(x.new_empty((0, self.level_channels[i], -(-height // 2**(i + 2)), -(-width // 2**(i + 2))))
                         for i in self.out_indices)
        levels, overview = self.forward_maps(x, self.out_indices)
        for i in (0, 2, 3):
            if i in self.out_indices:
                levels[i] = self.extra_norm[i](levels[i])
        if 3 in self.out_indices and self.overview_fusion:
            levels[3] = levels[3] + self.h_proj(self.extra_norm[4](overview))
        return tuple(levels[i] for i in self.out_indices)

    # ------------------------------------------------------------------ training behaviour
    def _stage_modules(self, stage: int) -> List[nn.Module]:
        """The modules that ``frozen_stages >= stage`` freezes (see the class docstring)."""
        if stage == 0:
            return [self.patch_embed1]
        if stage == 1:
            return [self.blocks1, self.extra_norm[0]]
        if stage == 2:
            return [self.patch_embed2, self.blocks2, self.extra_norm[1]]
        if stage == 3:
            return [self.patch_embed3, self.blocks3, self.patch_embed4, self.blocks4, self.high_level_proj]
        modules = [self.sub_blocks3, self.extra_norm[2], self.patch_embedx, self.sub_blocks4, self.extra_norm[3]]
        if self.overview_fusion:
            modules += [self.extra_norm[4], self.h_proj]
        return modules

    def _freeze_stages(self) -> None:
        for stage in range(self.frozen_stages + 1):
            for module in self._stage_modules(stage):
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    # ------------------------------------------------------------------ weights
    def init_weights(self) -> None:
        """The authors' initialisation, or the checkpoint named by ``init_cfg=dict(type='Pretrained', ...)``."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            # Kept so that users (and tests) can inspect what did not match; it is also logged.
            self.pretrained_load_result = load_overlock_checkpoint(
                self, cfg['checkpoint'], prefix=cfg.get('prefix'), map_location=cfg.get('map_location', 'cpu'))
            self._is_init = True
            return
        if cfg is not None:
            super().init_weights()
            return
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                trunc_normal_init(module, std=.02, bias=0)
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
        self._is_init = True

    def switch_to_deploy(self) -> 'OverLoCK':
        """Fold every DilatedReparamBlock into one large-kernel conv, in place (exact in eval mode)."""
        for module in self.modules():
            if isinstance(module, DilatedReparamBlock):
                module.switch_to_deploy()
        self.deploy = True
        return self
