"""OverLoCK models for OpenMMLab 2.0 and timm (importing this module registers the backbone in MMEngine's registry
and the classifiers ``overlock_xt`` / ``_t`` / ``_s`` / ``_b`` in timm's)."""
from .blocks import ContextDownsample, ContMixBlock, RepConvBlock
from .checkpoint import load_overlock_checkpoint
from .classifier import OverLoCKClassifier, classifier_from_checkpoint
from .overlock import OverLoCK
from .registry import MODELS

__all__ = [
    'OverLoCK', 'OverLoCKClassifier', 'classifier_from_checkpoint', 'RepConvBlock', 'ContMixBlock', 'ContextDownsample',
    'load_overlock_checkpoint', 'MODELS'
]
