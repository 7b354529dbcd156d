"""Building the model of an mmoverlock config outside a runner (analysis tools, the checkpoint converter, tests)."""
from typing import Optional, Tuple, Union

from mmengine.config import Config
from torch import nn

from .config import load_config, task_of


def build_model(config: Union[str, Config], cfg_options: Optional[dict] = None, pretrained: bool = False,
                init: bool = True, deploy: bool = False) -> Tuple[nn.Module, Config]:
    """Build a config's detector or segmentor on the CPU in eval mode, its SyncBatchNorms reverted to BatchNorms.

    mmengine's per-parameter initialisation report is silenced (the current logger becomes a WARNING-level one).

    Args:
        config (str | Config): Config file path or loaded config (not modified).
        cfg_options (dict, optional): Overrides merged into the config. Defaults to ``None``.
        pretrained (bool): Keep the config's pretrained weights (the backbone's ``init_cfg``, mmseg's
            ``model.pretrained``), loaded, downloaded if need be, by ``init_weights``. ``False`` drops them, so
            nothing is downloaded and the weights are the model's own initialisation. Defaults to ``False``.
        init (bool): Run ``init_weights``. Without it the parameters are those of the constructors, enough for
            key layouts and parameter counts; the real initialisation matters for outputs (e.g. how many proposals
            an untrained detector yields). Defaults to ``True``.
        deploy (bool): Re-parameterise the backbone (``switch_to_deploy``) after initialisation. Defaults to
            ``False``.

    Returns:
        tuple[nn.Module, Config]: The model and the loaded config (see :func:`task_of` for its task).
    """
    from mmengine.logging import MMLogger
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope

    if pretrained and not init:
        raise ValueError('build_model: pretrained=True loads the weights in init_weights, so it needs init=True')
    cfg = load_config(config, cfg_options)
    if not pretrained:
        cfg.model.backbone.init_cfg = None
        if 'pretrained' in cfg.model:
            cfg.model.pretrained = None
    init_default_scope(task_of(cfg))
    if not MMLogger.check_instance_created('mmoverlock_build'):  # print_log(logger='current') goes to the latest
        MMLogger.get_instance('mmoverlock_build', log_level='WARNING')
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    if init:
        model.init_weights()
    if deploy:
        model.backbone.switch_to_deploy()
    return model.eval(), cfg
