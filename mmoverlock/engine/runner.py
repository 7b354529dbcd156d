"""Preparing a config for mmengine's runner and building it: what ``tools/train.py`` and ``tools/test.py`` share."""
import os.path as osp
from typing import Optional, Tuple

from mmengine.config import Config

from ..apis import load_config, task_of
from .cpu_distributed import setup_cpu_distributed


def load_runner_config(config: str, launcher: str = 'none', work_dir: Optional[str] = None,
                       cfg_options: Optional[dict] = None) -> Tuple[Config, str]:
    """Load a config for a training or test run and apply the options every OpenMMLab tool takes.

    The work dir follows mmdet's and mmseg's rule: ``work_dir`` > the config's ``work_dir`` >
    ``./work_dirs/<config name>``. For detection configs it also raises dynamo's cache size limit, as mmdet's tools do
    (fewer recompilations when a model is compiled).

    Args:
        config (str): Config file path.
        launcher (str): ``none``, ``pytorch``, ``slurm`` or ``mpi``. Defaults to ``'none'``.
        work_dir (str, optional): Output directory. Defaults to ``None``.
        cfg_options (dict, optional): Overrides merged into the config. Defaults to ``None``.

    Returns:
        tuple[Config, str]: The config and its task (``mmdet`` / ``mmseg``).
    """
    cfg = load_config(config, cfg_options)
    task = task_of(cfg)
    if task == 'mmdet':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg, task


def build_runner(cfg: Config):
    """The runner the config asks for (``runner_type``, else mmengine's), on CPU-only machines set up for gloo.

    A distributed launch (``cfg.launcher`` other than ``none``) without a GPU goes through
    :func:`~mmoverlock.engine.setup_cpu_distributed` first.
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    setup_cpu_distributed(cfg, cfg.get('launcher', 'none'))
    return RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
