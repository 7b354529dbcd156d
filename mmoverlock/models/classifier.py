"""The ImageNet classification form of OverLoCK, registered in timm as ``overlock_xt`` / ``_t`` / ``_s`` / ``_b``.

It is the network of the backbone (:class:`~mmoverlock.models.trunk.OverLoCKTrunk`, same blocks, same module names)
in the form of the authors' ImageNet model: no per-level LayerNorms, stage 3 continuing from the raw stage-2 map, and
the heads whose keys are the released checkpoints':

- ``head`` = [pw (D3 + c) -> projection no bias, BN, SiLU, global pool, pw projection -> num_classes] on the
  Focus-Net's output (``forward_features``, D3 + c channels = ``num_features``; ``projection`` = ``head_hidden_size``);
- ``aux_head`` = [BN(D3), global pool, pw D3 -> num_classes] on the Overview-Net's output: the auxiliary head of the
  authors' training recipe, built only with ``aux_head=True``.

timm's contract holds in every mode: ``forward`` returns the main logits, in training as in eval. The auxiliary head
is an explicit opt-in, the way timm's DeiT exposes distillation: ``aux_head=True`` builds it (the releases carry its
weights, kept when loading ``pretrained=True``) and makes training mode return ``(logits, aux_logits)``;
``set_aux_training(False)`` turns that tuple off again. The authors' loss is
``loss_fn(logits, y) + 0.4 * loss_fn(aux_logits, y)`` (:class:`~mmoverlock.models.aux_loss.AuxiliaryLoss`).

Tracing and scripting: ``torch.fx`` (torchvision's ``create_feature_extractor``, timm's ``FeatureGraphNet``) traces
the model with timm's no-trace lists (see :mod:`mmoverlock.models.tracing`), as do ``torch.jit.trace`` and
``torch.export``; ``torch.jit.script`` is refused with the reason (``SCRIPTING_UNSUPPORTED``), and timm's TorchScript
tests are left out for these models, as timm's ``EXCLUDE_JIT_FILTERS`` does for its own non-scriptable ones.

``import mmoverlock`` registers the four names in timm's registry (mmengine and mmcv are not needed for this)::

    model = timm.create_model('overlock_t', pretrained=True)          # the authors' release, loaded strictly
    model = timm.create_model('overlock_t', pretrained=True, num_classes=10)   # new heads for fine-tuning
    model = timm.create_model('overlock_t', aux_head=True)            # the authors' training form
    feats = timm.create_model('overlock_t', features_only=True)       # the four maps, strides 4 / 8 / 16 / 32
    cfg = timm.data.resolve_data_config({}, model=model)              # bicubic, crop_pct of the release
"""
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, create_model, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from . import tracing  # noqa: F401  (registers the layers that FX keeps as leaves)
from .arch import ARCH_KEYS, ARCH_SETTINGS, POOL_TYPES, RELEASE_URL, check_head_arguments, parse_arch
from .checkpoint import check_compatible, extract_state_dict, is_deploy_form
from .trunk import OverLoCKTrunk, trunc_normal_init_

#: The final 1x1 conv of the main head (timm drops it from a checkpoint whose class count differs).
CLASSIFIER = 'head.4'
#: Key prefix of the auxiliary head in the releases.
AUX_HEAD_PREFIX = 'aux_head.'
#: Eval centre-crop fraction of each release (the authors' timm configs).
CROP_PCT = dict(xt=0.925, t=0.95, s=0.95, b=0.975)
#: The names registered in timm.
MODEL_NAMES = tuple(f'overlock_{variant}' for variant in CROP_PCT)
#: Why ``torch.jit.script`` is refused, and what works instead.
SCRIPTING_UNSUPPORTED = (
    'OverLoCKClassifier: torch.jit.script cannot compile OverLoCK: its re-parameterisable blocks reach their dilated '
    'branches by generated names (the released checkpoints\' keys, such as dil_conv_k5_1), and its memory-saving '
    'layers are custom autograd functions. Use torch.jit.trace, torch.export / torch.onnx.export, torch.compile, or '
    'torch.fx with timm\'s no-trace lists (timm.layers.get_notrace_modules / get_notrace_functions)')
#: Modules after each map that ``prune_intermediate_layers`` removes when the features end at that map.
_AFTER_MAP = (
    ('patch_embed2', 'blocks2'),
    ('patch_embed3', 'blocks3', 'patch_embed4', 'blocks4', 'high_level_proj', 'sub_blocks3'),
    ('patch_embedx', 'sub_blocks4'),
)


def _classifier(in_channels: int, num_classes: int, like: torch.Tensor) -> nn.Module:
    """The last layer of a head: a 1x1 conv on the pooled features (initialised like the authors', on ``like``'s
    device and dtype), or nothing for ``num_classes=0``."""
    if num_classes == 0:
        return nn.Identity()
    conv = nn.Conv2d(in_channels, num_classes, 1, device=like.device, dtype=like.dtype)
    trunc_normal_init_(conv)
    return conv


class OverLoCKClassifier(OverLoCKTrunk):
    """OverLoCK as the authors' ImageNet classifier (see the module docstring); timm's model interface.

    Args:
        arch (str | dict): ``'xt'``, ``'t'``, ``'s'``, ``'b'``, or a dict with exactly the keys ``ARCH_KEYS``.
            Defaults to ``'t'``.
        num_classes (int): Classes of the heads; 0 leaves out their last conv (pooled features out).
            Defaults to 1000.
        projection (int): Width of the main head's 1x1 projection (``head_hidden_size``). Defaults to 1024.
        global_pool (str): Pooling of the heads, one of ``POOL_TYPES``; ``''`` keeps the maps (no pooling).
            Defaults to ``'avg'``.
        aux_head (bool): Build the auxiliary head of the authors' training recipe and return
            ``(logits, aux_logits)`` in training mode (see ``set_aux_training``). Defaults to ``False``.
        drop_rate (float): Dropout before the heads' last conv. The authors' constructor takes this argument but
            never applies it; 0 (the default) is their model.
        drop_path_rate (float): Stochastic depth rate, as in the backbone. Defaults to 0.
        deploy (bool): Build the re-parameterised form (the ``*_reparam.pth`` releases). Defaults to ``False``.
        in_chans (int): Input channels. Defaults to 3.
        with_cp (bool): Activation checkpointing per block (see ``set_grad_checkpointing``). Defaults to ``False``.
        memory_format (str): As in the backbone. Defaults to ``'auto'``.
        contmix_backend (str, optional): As in the backbone (``'unfused'``: the authors' ContMix formulation).
            Defaults to ``None``.
        device (torch.device | str, optional): Where to create the parameters (timm's factory argument).
        dtype (torch.dtype, optional): Their floating-point dtype (timm's factory argument).

    Example:
        >>> import torch
        >>> from mmoverlock.models import OverLoCKClassifier
        >>> model = OverLoCKClassifier(arch='xt', num_classes=10, aux_head=True)
        >>> tuple(model.eval()(torch.rand(2, 3, 64, 64)).shape)
        (2, 10)
        >>> [tuple(out.shape) for out in model.train()(torch.rand(2, 3, 64, 64))]
        [(2, 10), (2, 10)]
    """

    def __init__(self,
                 arch: Union[str, dict] = 't',
                 num_classes: int = 1000,
                 projection: int = 1024,
                 global_pool: str = 'avg',
                 aux_head: bool = False,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 deploy: bool = False,
                 in_chans: int = 3,
                 with_cp: bool = False,
                 memory_format: str = 'auto',
                 contmix_backend: Optional[str] = None,
                 device: Optional[Union[torch.device, str]] = None,
                 dtype: Optional[torch.dtype] = None):
        check_head_arguments(num_classes, projection, global_pool, drop_rate)
        with torch.device(device) if device is not None else nullcontext():
            super().__init__(arch=arch, in_channels=in_chans, drop_path_rate=drop_path_rate, deploy=deploy,
                             with_cp=with_cp, memory_format=memory_format, contmix_backend=contmix_backend)
            self.in_chans = in_chans
            self.num_classes = num_classes
            self.drop_rate = drop_rate
            self.global_pool = global_pool
            #: timm: the width of ``forward_features`` (unpooled) and of ``forward_head(pre_logits=True)``.
            self.num_features = self.level_channels[3]
            self.head_hidden_size = projection
            #: How many of the four maps the network computes (fewer after ``prune_intermediate_layers``).
            self.num_maps = 4
            like = self.patch_embed1[0].weight
            self.head = nn.Sequential(
                nn.Conv2d(self.num_features, projection, 1, bias=False),
                nn.BatchNorm2d(projection),
                nn.SiLU(),
                SelectAdaptivePool2d(pool_type=global_pool),
                _classifier(projection, num_classes, like),
            )
            self.head_drop = nn.Dropout(drop_rate)
            aux_dim = self.arch['embed_dim'][3]
            self.aux_head = nn.Sequential(nn.BatchNorm2d(aux_dim), SelectAdaptivePool2d(pool_type=global_pool),
                                          _classifier(aux_dim, num_classes, like)) if aux_head else None
            self.aux_training = aux_head
            self.feature_info = [
                dict(num_chs=channels, reduction=4 * 2**i, module=name)
                for i, (channels, name) in enumerate(zip(self.level_channels,
                                                         ('blocks1', 'blocks2', 'sub_blocks3', 'sub_blocks4')))
            ]
            self.init_weights()
        if dtype is not None:
            self.to(dtype=dtype)

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last map the network computes: the Focus-Net's output [B, num_features, H / 32, W / 32], what
        ``head`` classifies (timm's interface); after ``prune_intermediate_layers``, the last map kept."""
        last = self.num_maps - 1
        return self.forward_maps(x, indices=(last, ), last=last)[0][last]

    def _pool_out(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C] for pooled heads, the maps themselves for ``global_pool=''``."""
        return x if self.global_pool == '' else x.flatten(1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Main logits [B, num_classes] of a ``forward_features`` map; ``pre_logits``: the pooled
        [B, head_hidden_size] before the last conv."""
        x = self.head[2](self.head[1](self.head[0](x)))
        x = self.head_drop(self.head[3](x))
        if pre_logits:
            return self._pool_out(x)
        return self._pool_out(self.head[4](x))

    def forward_aux_head(self, overview: torch.Tensor) -> torch.Tensor:
        """Auxiliary logits [B, num_classes] of the Overview-Net's output [B, D3, H / 32, W / 32]."""
        if self.aux_head is None:
            raise RuntimeError('OverLoCKClassifier: this model has no auxiliary head; build it with aux_head=True')
        x = self.head_drop(self.aux_head[1](self.aux_head[0](overview)))
        return self._pool_out(self.aux_head[2](x))

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Args:
            x (Tensor): Images [B, in_chans, H, W], any H, W >= 1 (as the backbone).

        Returns:
            Tensor | tuple: Logits [B, num_classes]; in training mode with the auxiliary head on
            (``aux_head=True`` / ``set_aux_training()``), ``(logits, aux_logits)``.
        """
        if self.training and self.aux_training:
            maps, overview = self.forward_maps(x, indices=(), last=3)
            return self.forward_head(maps[3]), self.forward_aux_head(overview)
        return self.forward_head(self.forward_features(x))

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
            stop_early (bool): Stop after the last map in ``indices`` (the final output is then that map).
            output_fmt (str): Only ``'NCHW'``.
            intermediates_only (bool): Return the maps alone, not also the ``forward_features`` output.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"OverLoCKClassifier: output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(self.num_maps, indices)
        last = max_index if stop_early or intermediates_only else self.num_maps - 1
        maps, _overview = self.forward_maps(x, take, last)
        intermediates = [maps[i] for i in take]
        return intermediates if intermediates_only else (maps[last], intermediates)

    # ------------------------------------------------------------------ timm model interface
    def get_classifier(self) -> nn.Module:
        return self.head[4]

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False) -> None:
        """New last convs of both heads for ``num_classes`` (0: none), initialised like the authors'.

        Args:
            num_classes (int): Classes; 0 for pooled features out.
            global_pool (str, optional): New pooling, one of ``POOL_TYPES``; ``None`` keeps the current one.
            reset_other (bool): Also drop the main head's projection (``head_hidden_size`` becomes
                ``num_features``), as timm does when pruning.
        """
        check_head_arguments(num_classes, self.head_hidden_size, self.global_pool if global_pool is None
                             else global_pool, self.drop_rate)
        like = self.patch_embed1[0].weight
        heads = [(self.head, 3, 4, self.head_hidden_size)]
        if reset_other:
            for i in range(3):
                self.head[i] = nn.Identity()
            self.head_hidden_size = self.num_features
            heads[0] = (self.head, 3, 4, self.num_features)
        if self.aux_head is not None:
            heads.append((self.aux_head, 1, 2, self.arch['embed_dim'][3]))
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        for head, pool, classifier, width in heads:
            if global_pool is not None:
                head[pool] = SelectAdaptivePool2d(pool_type=global_pool)
            head[classifier] = _classifier(width, num_classes, like).train(self.training)

    @torch.jit.ignore
    def set_aux_training(self, enable: bool = True) -> None:
        """Make training mode return ``(logits, aux_logits)`` (the authors' recipe), or the logits alone again."""
        if enable and self.aux_head is None:
            raise RuntimeError('OverLoCKClassifier: set_aux_training needs the auxiliary head; build the model with '
                               'aux_head=True (timm.create_model(name, aux_head=True))')
        self.aux_training = enable

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop what the maps at ``indices`` do not need: the layers after the last of them, and the heads (always
        when layers go, since the heads are sized for the final map). ``prune_norm`` is unused (no final norm)."""
        take, max_index = feature_take_indices(self.num_maps, indices)
        prune_end = max_index < self.num_maps - 1
        if prune_end:
            for names in _AFTER_MAP[max_index:self.num_maps - 1]:
                for name in names:
                    setattr(self, name, nn.ModuleList() if name.startswith(('blocks', 'sub_blocks')) else nn.Identity())
            self.num_maps = max_index + 1
            self.num_features = self.head_hidden_size = self.level_channels[max_index]
        if prune_head or prune_end:
            self.aux_head, self.aux_training = None, False
            self.reset_classifier(0, '', reset_other=True)
        return take

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.with_cp = enable

    def __prepare_scriptable__(self):
        """``torch.jit.script`` calls this first: refuse with the reason and the alternatives, instead of failing
        deep inside a layer."""
        raise RuntimeError(SCRIPTING_UNSUPPORTED)


def checkpoint_filter_fn(checkpoint: dict, model: OverLoCKClassifier) -> Dict[str, torch.Tensor]:
    """The state dict of a release (``{'model': ...}``, ``{'state_dict': ...}`` or bare), checked against ``model``
    and fitted to its auxiliary head.

    A checkpoint of another variant or of the other (training / deploy) form fails here with a message saying
    which, instead of as a long list of mismatched keys. The releases carry the auxiliary head: its weights are
    dropped for a model without one (``aux_head=False``, the default), and its last conv for a model with another
    class count (timm drops ``head.4`` then, and loads the rest).
    """
    state_dict = extract_state_dict(checkpoint)
    check_compatible(model, state_dict)
    if model.aux_head is None:
        return {k: v for k, v in state_dict.items() if not k.startswith(AUX_HEAD_PREFIX)}
    classifier = model.aux_head[2]
    if not isinstance(classifier, nn.Conv2d) or state_dict.get('aux_head.2.weight', classifier.weight).shape != \
            classifier.weight.shape:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('aux_head.2.')}
    return state_dict


def classifier_from_checkpoint(model_name: str, checkpoint: str, **kwargs) -> OverLoCKClassifier:
    """``timm.create_model(model_name)`` in the form (training / deploy) and with the class count of a checkpoint
    file, loaded strictly.

    Args:
        model_name (str): ``'overlock_xt'``, ``'overlock_t'``, ``'overlock_s'`` or ``'overlock_b'``.
        checkpoint (str): A local file or https URL, loaded weights-only (``load_checkpoint_file``): a release, a
            fine-tuned model's ``{'state_dict': ...}`` or a bare state dict.
        **kwargs: Further ``create_model`` arguments (``deploy`` and ``num_classes`` default to the checkpoint's;
            the auxiliary head's weights are loaded with ``aux_head=True`` and left out otherwise).
    """
    if model_name.split('.')[0] not in MODEL_NAMES:
        raise ValueError(f'classifier_from_checkpoint: model_name must be one of {list(MODEL_NAMES)}, '
                         f'got {model_name!r}')
    from ..checkpoint_io import load_checkpoint_file  # needs mmengine (which the timm models themselves do not)

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
                std=IMAGENET_DEFAULT_STD, first_conv='patch_embed1.0', classifier=CLASSIFIER,
                license='apache-2.0', origin_url='https://github.com/LMMMEng/OverLoCK', paper_ids='arXiv:2502.20087')


#: ``overlock_<v>.in1k`` (the default) and ``overlock_<v>.in1k_reparam`` (the deploy-form file of the same weights).
default_cfgs = generate_default_cfgs({
    f'overlock_{v}.{tag}': _cfg(v, form)
    for v in ARCH_SETTINGS for tag, form in (('in1k', ''), ('in1k_reparam', '_reparam'))
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
    args = dict(parse_arch(variant), **kwargs)  # timm's dict(model_args, **kwargs)
    arch = {key: args.pop(key) for key in ARCH_KEYS}
    return build_model_with_cfg(OverLoCKClassifier, f'overlock_{variant}', pretrained, arch=arch,
                                pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(feature_cls='getter', out_indices=(0, 1, 2, 3)), **args)


@register_model
def overlock_xt(pretrained: bool = False, **kwargs) -> OverLoCKClassifier:
    """OverLoCK-XT (16 M parameters in deploy form; the authors' top-1 82.7)."""
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
