"""Torch-only operators (no OpenMMLab imports here: this package must import where only torch is installed)."""
from .contmix import available_backends, contmix_aggregate

__all__ = ['available_backends', 'contmix_aggregate']
