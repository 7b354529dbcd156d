"""The ImageNet classification form of OverLoCK, registered in timm as ``overlock_xt`` / ``_t`` / ``_s`` / ``_b``.

It is the backbone's network (:class:`~mmoverlock.models.OverLoCK`, same blocks, same module names) in the form of the
authors' ImageNet model: no per-level LayerNorms (``extra_norm``), stage 3 continuing from the raw stage-2 map, and
two heads whose keys are the released checkpoints':

- ``head`` = [pw (D3 + c) -> projection no bias, BN, SiLU, global average pool, pw projection -> num_classes] on the
  Focus-Net's output;
- ``aux_head`` = [BN(D3), global average pool, pw D3 -> num_classes] on the Overview-Net's output, used in training
  mode only, where the model returns ``{'main': logits, 'aux': aux_logits}``.

Training with the auxiliary head: the authors' ImageNet script (their ``train.py``, timm-based) applies the same loss
to both outputs and adds them as ``loss = loss_fn(out['main'], y) + aux_loss_ratio * loss_fn(out['aux'], y)``, with
``--aux-loss-ratio`` defaulting to 0.4 (the value their per-variant launch scripts pass is not in the public code we
read). In eval mode the model returns the main logits alone, so evaluation code needs nothing special.

``import mmoverlock.models`` (and so ``import mmoverlock``) registers the four names in timm's registry::

    model = timm.create_model('overlock_t', pretrained=True)          # the authors' release, loaded strictly
    model = timm.create_model('overlock_t', pretrained=True, num_classes=10)   # new heads for fine-tuning
    feats = timm.create_model('overlock_t', features_only=True)       # the four maps, strides 4 / 8 / 16 / 32
    cfg = timm.data.resolve_data_config({}, model=model)              # bicubic, crop_pct of the release
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.model.weight_init import trunc_normal_init
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, create_model, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from ..checkpoint_io import load_checkpoint_file
from .checkpoint import check_compatible, extract_state_dict, is_deploy_form
from .overlock import ARCH_KEYS, RELEASE_URL, OverLoCK

#: The final 1x1 convs of the two heads (timm drops them from a checkpoint whose class count differs).
CLASSIFIERS = ('head.4', 'aux_head.2')
#: Eval centre-crop fraction of each release (the authors' timm configs).
CROP_PCT = dict(xt=0.925, t=0.95, s=0.95, b=0.975)
#: The names registered in timm.
MODEL_NAMES = tuple(f'overlock_{variant}' for variant in CROP_PCT)


def _head(in_channels: int, projection: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, projection, 1, bias=False),
        nn.BatchNorm2d(projection),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        _classifier(projection, num_classes),
    )


def _aux_head(in_channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(in_channels), nn.AdaptiveAvgPool2d(1), _classifier(in_channels, num_classes))


def _classifier(in_channels: int, num_classes: int) -> nn.Module:
    """The last layer of a head: a 1x1 conv on the pooled features, or nothing for ``num_classes=0``."""
    return nn.Conv2d(in_channels, num_classes, 1) if num_classes > 0 else nn.Identity()


class OverLoCKClassifier(OverLoCK):
    """OverLoCK as the authors' ImageNet classifier (see the module docstring); timm's model interface.

    Args:
        arch (str | dict): ``'xt'``, ``'t'``, ``'s'``, ``'b'``, or a dict with exactly the keys ``ARCH_KEYS``.
            Defaults to ``'t'``.
        num_classes (int): Classes of both heads; 0 leaves out their last conv (pooled features out).
            Defaults to 1000.
        projection (int): Width of the main head's 1x1 projection. Defaults to 1024.
        drop_rate (float): Dropout before the main head's last conv. The authors' constructor takes this argument
            but never applies it; 0 (the default) is their model.
        drop_path_rate (float): Stochastic depth rate, as in the backbone. Defaults to 0.
        deploy (bool): Build the re-parameterised form (the ``*_reparam.pth`` releases). Defaults to ``False``.
        in_chans (int): Input channels. Defaults to 3.
        with_cp (bool): Activation checkpointing per block (see ``set_grad_checkpointing``). Defaults to ``False``.
        memory_format (str): As in the backbone. Defaults to ``'auto'``.

    Example:
        >>> import torch
        >>> from mmoverlock.models import OverLoCKClassifier
        >>> model = OverLoCKClassifier(arch='xt', num_classes=10)
        >>> tuple(model.eval()(torch.rand(2, 3, 64, 64)).shape)
        (2, 10)
        >>> {k: tuple(v.shape) for k, v in model.train()(torch.rand(2, 3, 64, 64)).items()}
        {'main': (2, 10), 'aux': (2, 10)}
    """

    normalized_levels = False

    def __init__(self,
                 arch: Union[str, dict] = 't',
                 num_classes: int = 1000,
                 projection: int = 1024,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 deploy: bool = False,
                 in_chans: int = 3,
                 with_cp: bool = False,
                 memory_format: str = 'auto'):
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f'OverLoCKClassifier: num_classes must be an int >= 0, got {num_classes!r}')
        if not isinstance(projection, int) or projection <= 0:
            raise ValueError(f'OverLoCKClassifier: projection must be a positive int, got {projection!r}')
        if not 0 <= drop_rate < 1:
            raise ValueError(f'OverLoCKClassifier: drop_rate must be in [0, 1), got {drop_rate!r}')
        super().__init__(arch=arch, in_channels=in_chans, drop_path_rate=drop_path_rate, deploy=deploy,
                         with_cp=with_cp, memory_format=memory_format)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.projection = projection
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = projection  # timm: width of forward_head(pre_logits=True)
        dims = self.arch['embed_dim']
        self.head = _head(self.level_channels[3], projection, num_classes)
        self.head_drop = nn.Dropout(drop_rate)
        self.aux_head = _aux_head(dims[3], num_classes)
        self.feature_info = [
            dict(num_chs=channels, reduction=4 * 2**i, module=name)
            for i, (channels, name) in enumerate(zip(self.level_channels,
                                                     ('blocks1', 'blocks2', 'sub_blocks3', 'sub_blocks4')))
        ]
        self.init_weights()

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The Focus-Net's output [B, D3 + c, H / 32, W / 32], what ``head`` classifies (timm's interface)."""
        return self.forward_maps(x, indices=())[0][3]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Main logits [B, num_classes] of a ``forward_features`` map; ``pre_logits``: the pooled [B, projection]."""
        x = self.head_drop(self.head[:4](x))
        return x.flatten(1) if pre_logits else self.head[4](x).flatten(1)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        """Args:
            x (Tensor): Images [B, in_chans, H, W], any H, W >= 1 (as the backbone).

        Returns:
            Tensor | dict: Logits [B, num_classes] in eval mode; in training mode
            ``{'main': logits, 'aux': aux_logits}`` (the auxiliary head on the Overview-Net's output).
        """
        maps, overview = self.forward_maps(x, indices=())
        logits = self.forward_head(maps[3])
        if not self.training:
            return logits
        return dict(main=logits, aux=self.aux_head(overview).flatten(1))

    def forward_intermediates(self,
                              x: torch.Tensor,
                              indices: Optional[Union[int, Sequence[int]]] = None,
                              norm: bool = False,
                              stop_early: bool = False,
                              output_fmt: str = 'NCHW',
                              intermediates_only: bool = False
                              ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's feature API (``features_only=True`` uses it): the maps of ``forward_maps`` at ``indices``.

        Args:
            x (Tensor): Images [B, in_chans, H, W].
            indices (int | Sequence[int], optional): Map indices (0-3), the last n for an int, all for ``None``.
            norm (bool): Unused: this form has no per-level norms (timm passes it).
            stop_early (bool): Unused: every map needs the Overview-Net, which runs after stage 3.
            output_fmt (str): Only ``'NCHW'``.
            intermediates_only (bool): Return the maps alone, not also the ``forward_features`` output.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"OverLoCKClassifier: output_fmt must be 'NCHW', got {output_fmt!r}")
        take, _ = feature_take_indices(4, indices)
        maps, _overview = self.forward_maps(x, take)
        intermediates = [maps[i] for i in take]
        return intermediates if intermediates_only else (maps[3], intermediates)

    # ------------------------------------------------------------------ timm model interface
    def get_classifier(self) -> nn.Module:
        return self.head[4]

    def reset_classifier(self, num_classes: int) -> None:
        """New last convs of both heads for ``num_classes`` (0: none), initialised like the authors'."""
        self.num_classes = num_classes
        self.head[4] = _classifier(self.projection, num_classes)
        self.aux_head[2] = _classifier(self.arch['embed_dim'][3], num_classes)
        for conv in (self.head[4], self.aux_head[2]):
            if isinstance(conv, nn.Conv2d):
                trunc_normal_init(conv, std=.02, bias=0)

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the heads for a feature extractor (every map needs the whole network, so nothing else goes)."""
        take, _ = feature_take_indices(4, indices)
        if prune_head:
            self.num_classes = 0
            self.head = nn.Sequential()
            self.aux_head = nn.Sequential()
        return take

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.with_cp = enable


def checkpoint_filter_fn(checkpoint: dict, model: OverLoCKClassifier) -> Dict[str, torch.Tensor]:
    """The state dict of a release (``{'model': ...}``, ``{'state_dict': ...}`` or bare), checked against ``model``.

    A checkpoint of another variant or of the other (training / deploy) form fails here with a message saying
    which, instead of as a long list of mismatched keys.
    """
    state_dict = extract_state_dict(checkpoint)
    check_compatible(model, state_dict)
    return state_dict


def classifier_from_checkpoint(model_name: str, checkpoint: str, **kwargs) -> OverLoCKClassifier:
    """``timm.create_model(model_name)`` in the form (training / deploy) and with the class count of a checkpoint
    file, loaded strictly.

    Args:
        model_name (str): ``'overlock_xt'``, ``'overlock_t'``, ``'overlock_s'`` or ``'overlock_b'``.
        checkpoint (str): A local file or https URL, loaded weights-only (``load_checkpoint_file``): a release, a
            fine-tuned model's ``{'state_dict': ...}`` or a bare state dict.
        **kwargs: Further ``create_model`` arguments (``deploy`` and ``num_classes`` default to the checkpoint's).
    """
    if model_name.split('.')[0] not in MODEL_NAMES:
        raise ValueError(f'classifier_from_checkpoint: model_name must be one of {list(MODEL_NAMES)}, '
                         f'got {model_name!r}')
    state_dict = extract_state_dict(load_checkpoint_file(checkpoint, map_location='cpu'))
    kwargs.setdefault('deploy', is_deploy_form(state_dict))
    if 'head.4.weight' in state_dict:
        kwargs.setdefault('num_classes', int(state_dict['head.4.weight'].shape[0]))
    model = create_model(model_name, **kwargs)
    model.load_state_dict(checkpoint_filter_fn(state_dict, model), strict=True)
    return model


def _cfg(variant: str, form: str = '') -> dict:
    return dict(url=RELEASE_URL.format(arch=variant, form=form), num_classes=1000, input_size=(3, 224, 224),
                pool_size=(7, 7), crop_pct=CROP_PCT[variant], interpolation='bicubic', mean=IMAGENET_DEFAULT_MEAN,
                std=IMAGENET_DEFAULT_STD, first_conv='patch_embed1.0', classifier=CLASSIFIERS,
                license='apache-2.0', origin_url='https://github.com/LMMMEng/OverLoCK', paper_ids='arXiv:2502.20087')


#: ``overlock_<v>.in1k`` (the default) and ``overlock_<v>.in1k_reparam`` (the deploy-form file of the same weights).
default_cfgs = generate_default_cfgs({
    f'overlock_{v}.{tag}': _cfg(v, form)
    for v in OverLoCK.arch_settings for tag, form in (('in1k', ''), ('in1k_reparam', '_reparam'))
})


def _create_overlock(variant: str, pretrained: bool = False, **kwargs) -> OverLoCKClassifier:
    """Build ``overlock_<variant>`` as timm's models do: keyword arguments override the preset.

    Besides the constructor's arguments, any key of ``ARCH_KEYS`` overrides that entry of the preset.
    ``deploy=True`` selects the re-parameterised release (tag ``in1k_reparam``) unless a tag is given, and that tag
    builds the deploy form unless ``deploy`` is given.
    """
    if 'arch' in kwargs:
        raise TypeError(f"overlock_{variant}: choose the variant by the model name (overlock_xt / _t / _s / _b) "
                        f"and override single entries by their keys {list(ARCH_KEYS)}, not with arch=")
    tag = kwargs.get('pretrained_cfg')
    if not tag and kwargs.get('deploy'):
        kwargs['pretrained_cfg'] = 'in1k_reparam'
    elif tag == 'in1k_reparam':
        kwargs.setdefault('deploy', True)
    args = dict(OverLoCK.parse_arch(variant), **kwargs)  # timm's dict(model_args, **kwargs)
    arch = {key: args.pop(key) for key in ARCH_KEYS}
    return build_model_with_cfg(OverLoCKClassifier, f'overlock_{variant}', pretrained, arch=arch,
                                pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(feature_cls='getter', out_indices=(0, 1, 2, 3)), **args)


@register_model
def overlock_xt(pretrained: bool = False, **kwargs) -> OverLoCKClassifier:
    """OverLoCK-XT (16 M parameters in deploy form without the auxiliary head; the authors' top-1 82.7)."""
    return _create_overlock('xt', pretrained, **kwargs)


@register_model
def overlock_t(pretrained: bool = False, **kwargs) -> OverLoCKClassifier:
    """OverLoCK-T (33 M; the authors' top-1 84.2)."""
    return _create_overlock('t', pretrained, **kwargs)


@register_model
def overlock_s(pretrained: bool = False, **kwargs) -> OverLoCKClassifier:
    """OverLoCK-S (56 M; the authors' top-1 84.8)."""
    return _create_overlock('s', pretrained, **kwargs)


@register_model
def overlock_b(pretrained: bool = False, **kwargs) -> OverLoCKClassifier:
    """OverLoCK-B (95 M; the authors' top-1 85.1)."""
    return _create_overlock('b', pretrained, **kwargs)
