"""Loading an mmoverlock config and telling which OpenMMLab task it belongs to."""
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


def load_config(config: Union[str, Config], cfg_options: Optional[dict] = None) -> Config:
    """Load ``config`` (a path, or a :class:`Config` that is copied), merge ``cfg_options`` and check its task.

    Args:
        config (str | Config): Config file path or an already loaded config.
        cfg_options (dict, optional): ``key=value`` overrides as ``--cfg-options`` gives them. Defaults to ``None``.

    Returns:
        Config: The config; :func:`task_of` accepts it.
    """
    cfg = config.copy() if isinstance(config, Config) else Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    task_of(cfg)
    return cfg
