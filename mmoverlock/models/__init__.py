"""OverLoCK models for OpenMMLab 2.0 (importing this module registers them)."""
from .blocks import ContextDownsample, ContMixBlock, RepConvBlock
from .checkpoint import load_overlock_checkpoint
from .overlock import OverLoCK
from .registry import MODELS

__all__ = ['OverLoCK', 'RepConvBlock', 'ContMixBlock', 'ContextDownsample', 'load_overlock_checkpoint', 'MODELS']
