"""The OverLoCK backbone for mmdet and mmseg (Lou & Yu, "OverLoCK: An Overview-first-Look-Closely-next ConvNet
with Context-Mixing Dynamic Kernels", CVPR 2025, arXiv 2502.20087).

The network itself is :class:`~mmoverlock.models.trunk.OverLoCKTrunk` (a plain ``nn.Module``, shared with the timm
classifier); this module makes it an mmengine ``BaseModule`` with the levels, per-level norms, freezing and
checkpoint loading that mmdet and mmseg configs expect. Module names and state-dict keys are the authors'
(``../shared/spec/overlock.md``).
"""
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops.pointwise import PointwiseConv2d
from .arch import check_levels, release_checkpoint
from .checkpoint import load_overlock_checkpoint
from .layers import LayerNorm2d, LayerScale
from .registry import register_model
from .trunk import OverLoCKTrunk

__all__ = ['OverLoCK']


@register_model
class OverLoCK(OverLoCKTrunk, BaseModule):
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
            (``RELEASE_URL`` of :mod:`~mmoverlock.models.arch`; the re-parameterised file when ``deploy=True``), as
            their ``overlock_t(pretrained=True)`` does. A string is a deprecated alias of
            ``init_cfg=dict(type='Pretrained', checkpoint=...)``, set by mmseg's ``EncoderDecoder(pretrained=...)``.
            ``False`` or ``None``: no checkpoint. Defaults to ``None``.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH_OR_URL)`` loads the authors'
            ImageNet, deploy-form, or full mmdet/mmseg checkpoints. Defaults to ``None`` (the authors' init).
        memory_format (str): Layout the network runs in: ``'channels_last'``, ``'contiguous'`` (NCHW), or
            ``'auto'``, which picks channels-last on the CPU and on CUDA (oneDNN runs large depthwise kernels on a
            slow path in NCHW, about 20 times slower at 17 x 17; cuDNN prefers channels-last too) and NCHW on other
            devices. The input is converted once; the outputs are in that layout (same shapes and values, only the
            strides differ; call ``.contiguous()`` on them where NCHW strides are needed). Defaults to ``'auto'``.
        contmix_backend (str, optional): Where the ContMix blocks aggregate (the ``backend`` of
            :func:`~mmoverlock.ops.contmix_aggregate`): ``None`` picks the fused op's compiled kernels where built,
            else its torch fallback; ``'unfused'`` runs the authors' formulation (bias and softmax in torch, then the
            aggregation alone): same numbers, more memory and time, a baseline to compare with. Defaults to ``None``.

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
                 memory_format: str = 'auto',
                 contmix_backend: Optional[str] = None):
        if pretrained is not None and pretrained is not False:
            if init_cfg is not None:
                raise ValueError('OverLoCK: give either pretrained or init_cfg, not both')
            if isinstance(pretrained, str):
                # mmseg's EncoderDecoder forwards its model-level ``pretrained`` here, as mmseg's own backbones accept.
                warnings.warn('OverLoCK: pretrained=<path> is deprecated, use init_cfg=dict(type="Pretrained", '
                              'checkpoint=...)')
            init_cfg = dict(type='Pretrained', checkpoint=release_checkpoint(pretrained, arch, deploy))
        out_indices = check_levels(out_indices, frozen_stages)
        super().__init__(arch=arch, in_channels=in_channels, drop_path_rate=drop_path_rate, deploy=deploy,
                         with_cp=with_cp, memory_format=memory_format, contmix_backend=contmix_backend,
                         init_cfg=init_cfg)
        self.out_indices = out_indices
        self.overview_fusion = overview_fusion
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.out_channels = [self.level_channels[i] for i in out_indices]

        dims = self.arch['embed_dim']
        norms = [LayerNorm2d(c) for c in self.level_channels]
        if overview_fusion:
            norms.append(LayerNorm2d(dims[3]))
            self.h_proj = nn.Sequential(PointwiseConv2d(dims[3], self.level_channels[3]),
                                        LayerScale(self.level_channels[3], init_value=1e-5))
        self.extra_norm = nn.ModuleList(norms)
        self._freeze_stages()

    # ------------------------------------------------------------------ forward
    def _stage3_input(self, x: torch.Tensor) -> torch.Tensor:
        # Unlike level 0, level 1 is not a side branch: the authors' stage 3 continues from the *normalised* map
        # (their forward_base_features takes extra_norm[1]'s output; the reference gradients confirm it).
        return self.extra_norm[1](x)

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
            BaseModule.init_weights(self)
            return
        super().init_weights()  # the trunk's: the authors' initialisation
        self._is_init = True
