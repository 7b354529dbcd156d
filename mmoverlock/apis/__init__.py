"""Using mmoverlock configs outside a runner: loading them, telling their task, building their models, feeding
them synthetic batches. Shared by the command-line tools and the tests."""
from .config import TASKS, load_config, resolve_config_path, task_of
from .dummy_inputs import dummy_batch, dummy_data_samples, dummy_metainfo, num_classes_of
from .model import build_model

__all__ = [
    'TASKS', 'load_config', 'resolve_config_path', 'task_of', 'build_model', 'dummy_batch', 'dummy_data_samples', 'dummy_metainfo',
    'num_classes_of'
]
