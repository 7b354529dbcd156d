"""Loading an mmoverlock config and telling which OpenMMLab task it belongs to."""
import importlib
import os.path as osp
from typing import Optional, Union

from mmengine.config import Config

#: The OpenMMLab packages an mmoverlock config can belong to; a config names its own in ``default_scope``.
TASKS = ('mmdet', 'mmseg')


def task_of(cfg: Config) -> str:
    """The task of a loaded config: ``'mmdet'`` (detector) or ``'mmseg'`` (segmentor), read from ``default_scope``.

    Raises:
        ValueError: For any other scope (or none); an mmoverlock config inherits it from an ``mmdet::`` or
            ``mmseg::`` base config.
    """
    scope = cfg.get('default_scope')
    if scope not in TASKS:
        name = f' of {cfg.filename}' if getattr(cfg, 'filename', None) else ''
        raise ValueError(f'config{name} has default_scope {scope!r}; expected one of {TASKS} (inherit an mmdet:: '
                         'or mmseg:: base config, or set default_scope)')
    return scope


def resolve_config_path(config: str) -> str:
    """A config path, or ``'<package>::<path>'`` (as in ``_base_``) for a config an installed OpenMMLab package ships
    under its ``.mim/configs``, e.g. ``'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'``.

    Raises:
        FileNotFoundError: If a ``::`` path names no file of the installed package.
    """
    package, sep, relative = config.partition('::')
    if not sep:
        return config
    root = osp.join(osp.dirname(importlib.import_module(package).__file__), '.mim', 'configs')
    path = osp.join(root, relative)
    if not osp.isfile(path):
        raise FileNotFoundError(f'config {config!r}: no file {relative!r} under {root}')
    return path


def load_config(config: Union[str, Config], cfg_options: Optional[dict] = None) -> Config:
    """Load ``config`` (a path, or a :class:`Config` that is copied), merge ``cfg_options`` and check its task.

    Args:
        config (str | Config): Config file path (or ``'mmdet::...'``, see :func:`resolve_config_path`) or an
            already loaded config.
        cfg_options (dict, optional): ``key=value`` overrides as ``--cfg-options`` gives them. Defaults to ``None``.

    Returns:
        Config: The config; :func:`task_of` accepts it.
    """
    cfg = config.copy() if isinstance(config, Config) else Config.fromfile(resolve_config_path(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    task_of(cfg)
    return cfg
