"""A backbone named as a user names it on a command line, as a module that returns its feature maps.

Analysis tools (:mod:`mmoverlock.analysis.erf`, :mod:`mmoverlock.analysis.contmix_kernels`) compare backbones of
different origins: the backbone of an mmdet / mmseg config, or a timm model (``convnext_tiny``,
``swin_tiny_patch4_window7_224``, ``overlock_t``, ...). :func:`build_feature_extractor` builds either, loads an
optional checkpoint weights-only, and returns a :class:`FeatureExtractor`: the network in eval mode, its maps as a
list of NCHW tensors, and the input normalisation it was trained with.
"""
import os
import os.path as osp
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

#: Input normalisation used when a model states none (ImageNet's, in the [0, 1] pixel scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: File endings read as images by :func:`list_image_files`.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


class FeatureExtractor(nn.Module):
    """A backbone that maps images [B, 3, H, W] to its list of feature maps [B, C_i, H_i, W_i].

    Args:
        network (nn.Module): The model; kept as ``self.network`` in eval mode.
        source (str): ``'config'`` (``network`` is an mmdet / mmseg backbone returning a tuple of maps) or
            ``'timm'`` (a timm model with ``forward_intermediates``).
        label (str): Name shown in figures and tables.
        mean (Sequence[float]): Per-channel mean of the [0, 1]-scaled RGB input.
        std (Sequence[float]): Per-channel standard deviation of the [0, 1]-scaled RGB input.
    """

    def __init__(self, network: nn.Module, source: str, label: str, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if source not in ('config', 'timm'):
            raise ValueError(f"FeatureExtractor: source must be 'config' or 'timm', got {source!r}")
        self.network = network.eval()
        self.source = source
        self.label = label
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        """Args:
            images (Tensor): Normalised images [B, 3, H, W] (see :meth:`preprocess`).

        Returns:
            list[Tensor]: Every map the backbone outputs, shallowest first, each [B, C_i, H_i, W_i].
        """
        if self.source == 'timm':
            return list(self.network.forward_intermediates(images, intermediates_only=True))
        return list(self.network(images))

    def preprocess(self, image, size: Tuple[int, int]) -> torch.Tensor:
        """An RGB image (PIL image or path) resized bicubically to ``size`` (H, W) and normalised: [1, 3, H, W]."""
        from PIL import Image
        if isinstance(image, str):
            with Image.open(image) as opened:
                image = opened.convert('RGB')
        image = image.convert('RGB').resize((size[1], size[0]), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.).permute(2, 0, 1)[None]
        return (pixels - self.mean) / self.std


def list_image_files(folder: str) -> List[str]:
    """The image files directly in ``folder``, sorted by name.

    Raises:
        FileNotFoundError: When ``folder`` is not a folder or holds no image (naming the endings looked for).
    """
    if not osp.isdir(folder):
        raise FileNotFoundError(f'images: {folder!r} is not a folder')
    files = sorted(osp.join(folder, name) for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f'images: no {"/".join(IMAGE_EXTENSIONS)} file in {folder!r}')
    return files


def _is_config(model: str) -> bool:
    return model.endswith('.py') or osp.isfile(model)


def _config_normalisation(cfg) -> Tuple[tuple, tuple]:
    """The data preprocessor's mean / std in the [0, 1] pixel scale (mmdet / mmseg state them in [0, 255])."""
    preprocessor = cfg.model.get('data_preprocessor') or {}
    mean, std = preprocessor.get('mean'), preprocessor.get('std')
    if mean is None or std is None:
        return IMAGENET_MEAN, IMAGENET_STD
    scale = 255. if max(mean) > 1 else 1.
    return tuple(m / scale for m in mean), tuple(s / scale for s in std)


def _config_backbone(config: str, checkpoint: Optional[str]) -> FeatureExtractor:
    from mmengine.runner import load_checkpoint

    from .model import build_model
    model, cfg = build_model(config)
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True, logger='current')
    mean, std = _config_normalisation(cfg)
    return FeatureExtractor(model.backbone, 'config', osp.splitext(osp.basename(config))[0], mean, std)


def _timm_model(name: str, checkpoint: Optional[str], input_size: Tuple[int, int]) -> FeatureExtractor:
    import timm

    from ..checkpoint_io import load_checkpoint_file
    from ..models import classifier_from_checkpoint
    from ..models.checkpoint import extract_state_dict
    from ..models.classifier import MODEL_NAMES
    kwargs = {}
    pretrained_cfg = timm.get_pretrained_cfg(name)
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs['img_size'] = tuple(input_size)  # e.g. Swin: window and position tables follow the input size
    if checkpoint and name.split('.')[0] in MODEL_NAMES:
        network = classifier_from_checkpoint(name, checkpoint, **kwargs)  # training or deploy form, as the file
    else:
        network = timm.create_model(name, pretrained=False, **kwargs)
        if checkpoint:
            state_dict = extract_state_dict(load_checkpoint_file(checkpoint, map_location='cpu'))
            # timm's convention: a model's module converts the official releases' layouts
            filter_fn = getattr(sys.modules[type(network).__module__], 'checkpoint_filter_fn', None)
            if filter_fn is not None:
                state_dict = filter_fn(state_dict, network)
            network.load_state_dict(state_dict, strict=True)
    cfg = network.pretrained_cfg
    return FeatureExtractor(network, 'timm', name, cfg.get('mean', IMAGENET_MEAN), cfg.get('std', IMAGENET_STD))


def build_feature_extractor(model: str, checkpoint: Optional[str] = None,
                            input_size: Tuple[int, int] = (224, 224)) -> FeatureExtractor:
    """Build the backbone a user names, on the CPU, in eval mode.

    Args:
        model (str): An mmdet / mmseg config file (its ``model.backbone`` is taken) or a timm model name
            (``import mmoverlock`` registers ``overlock_xt`` / ``_t`` / ``_s`` / ``_b``).
        checkpoint (str, optional): Weights, loaded weights-only: for a config, a checkpoint of the whole detector /
            segmentor (strict, as ``tools/test.py`` loads it); for a timm name, that model's state dict (a release
            in the layout the model's ``checkpoint_filter_fn`` converts, or an OverLoCK release in either form).
            ``None`` keeps the random initialisation. Defaults to ``None``.
        input_size (tuple[int, int]): (H, W) the images will have; models with a fixed input size (Swin) are built
            for it. Defaults to ``(224, 224)``.

    Returns:
        FeatureExtractor: The backbone; its ``label`` is the config's file name or the timm name.

    Raises:
        ValueError: When ``model`` is neither an existing ``.py`` config nor a timm model name.
    """
    import timm

    from .. import models  # noqa: F401  (registers OverLoCK and the overlock_* timm models)
    if not isinstance(model, str) or not model:
        raise ValueError(f'model must be a config file path or a timm model name (str), got {model!r}')
    if _is_config(model):
        if not osp.isfile(model):
            raise ValueError(f'model: the config file {model!r} does not exist')
        return _config_backbone(model, checkpoint)
    if not timm.is_model(model.split('.')[0]):
        raise ValueError(f'model must be an mmdet / mmseg config file (.py) or a timm model name '
                         f'(e.g. convnext_tiny, swin_tiny_patch4_window7_224, overlock_t), got {model!r}')
    return _timm_model(model, checkpoint, input_size)
