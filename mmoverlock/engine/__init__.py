"""Running mmoverlock configs with mmengine's runner, on GPUs and on CPU-only machines (gloo, CPU SyncBatchNorm), with
checkpoints that a killed job resumes from.

Importing it registers :class:`CPUDistributedDataParallel` in mmengine's ``MODEL_WRAPPERS`` and
:class:`ResumableCheckpointHook` in its ``HOOKS``.
"""
from .checkpoint_hook import ResumableCheckpointHook, find_resumable_checkpoint
from .cpu_distributed import (CPUDistributedDataParallel, CPUSyncBatchNorm, convert_cpu_sync_batchnorm,
                              setup_cpu_distributed)
from .runner import build_runner, load_runner_config

__all__ = [
    'CPUDistributedDataParallel', 'CPUSyncBatchNorm', 'convert_cpu_sync_batchnorm', 'setup_cpu_distributed',
    'build_runner', 'load_runner_config', 'ResumableCheckpointHook', 'find_resumable_checkpoint'
]
