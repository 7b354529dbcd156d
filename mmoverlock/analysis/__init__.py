"""Measuring mmoverlock models: parameters and FLOPs (ContMix core included), speed and peak memory (through the
one measuring module, :mod:`mmoverlock.analysis.measure`), and the classifier's ImageNet-style accuracy."""
from .benchmark import (PHASES, ModelUnderTest, benchmark_models, benchmark_records, benchmark_table, config_label,
                        phase_call)
from .classification import evaluate_classifier, imagenet_folder_loader
from .flops import (CONTMIX_OPS, DEFAULT_SHAPES, backbone_complexity, config_complexity, contmix_flop_jit,
                    flop_analyzer, flops_on_100_mask_rois, model_flops)

__all__ = [
    'CONTMIX_OPS', 'DEFAULT_SHAPES', 'contmix_flop_jit', 'flop_analyzer', 'backbone_complexity', 'model_flops',
    'flops_on_100_mask_rois', 'config_complexity', 'PHASES', 'ModelUnderTest', 'benchmark_models',
    'benchmark_records', 'benchmark_table', 'config_label', 'phase_call', 'imagenet_folder_loader',
    'evaluate_classifier'
]
