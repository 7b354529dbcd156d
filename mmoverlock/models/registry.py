"""Registration of mmoverlock's models.

Registering in MMEngine's root ``MODELS`` makes ``dict(type='OverLoCK')`` resolve from mmdet (default_scope mmdet)
and mmseg (default_scope mmseg) configs alike, since their registries fall back to the root. A child registry with
scope ``mmoverlock`` also accepts the scoped name ``type='mmoverlock.OverLoCK'``.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmoverlock', locations=['mmoverlock.models'])


def register_model(cls):
    """Register ``cls`` in the root registry and under the ``mmoverlock`` scope."""
    MMENGINE_MODELS.register_module(module=cls)
    MODELS.register_module(module=cls)
    return cls
