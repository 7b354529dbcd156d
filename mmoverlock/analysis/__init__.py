"""Measuring mmoverlock models: parameters and FLOPs (ContMix core included), speed and peak memory, and the
classifier's ImageNet-style accuracy."""
from .benchmark import PHASES, PeakMemory, benchmark_model, time_calls
from .classification import evaluate_classifier, imagenet_folder_loader
from .flops import (CONTMIX_OPS, DEFAULT_SHAPES, backbone_complexity, config_complexity, contmix_flop_jit,
                    flop_analyzer, flops_on_100_mask_rois, model_flops)

__all__ = [
    'CONTMIX_OPS', 'DEFAULT_SHAPES', 'contmix_flop_jit', 'flop_analyzer', 'backbone_complexity', 'model_flops',
    'flops_on_100_mask_rois', 'config_complexity', 'PHASES', 'PeakMemory', 'time_calls', 'benchmark_model',
    'imagenet_folder_loader', 'evaluate_classifier'
]
