"""OverLoCK models for OpenMMLab 2.0 and timm.

Importing this package registers the classifiers ``overlock_xt`` / ``_t`` / ``_s`` / ``_b`` in timm's registry
(torch and timm suffice) and, where mmengine is installed, the backbone ``OverLoCK`` in MMEngine's registry.
"""
from .aux_loss import AuxiliaryLoss
from .blocks import ContextDownsample, ContMixBlock, RepConvBlock
from .classifier import OverLoCKClassifier, classifier_from_checkpoint
from .trunk import OverLoCKTrunk

__all__ = [
    'OverLoCKTrunk', 'OverLoCKClassifier', 'classifier_from_checkpoint', 'AuxiliaryLoss', 'RepConvBlock',
    'ContMixBlock', 'ContextDownsample'
]

try:
    import mmengine  # noqa: F401
except ImportError:  # timm use only: no mmengine backbone
    pass
else:
    from .checkpoint import load_overlock_checkpoint
    from .overlock import OverLoCK
    from .registry import MODELS
    __all__ += ['OverLoCK', 'load_overlock_checkpoint', 'MODELS']
