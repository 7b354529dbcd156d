"""Torch-only operators (no OpenMMLab imports here: this package must import where only torch is installed)."""
from .contmix import accumulation_dtype, available_backends, contmix_aggregate

__all__ = ['accumulation_dtype', 'available_backends', 'contmix_aggregate']
