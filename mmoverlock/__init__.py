"""mmoverlock: the OverLoCK backbone (CVPR 2025) as an OpenMMLab 2.0 plugin.

``import mmoverlock`` registers the models (and the CPU data-parallel wrapper and the resumable checkpoint hook of
:mod:`mmoverlock.engine`) in MMEngine's registries, applies the compatibility fixes that the OpenMMLab 2.0 stack needs
on current torch (see :mod:`mmoverlock.compat`), and makes mmengine load checkpoints weights-only and remote ones over
https only (:mod:`mmoverlock.checkpoint_io`). ``mmoverlock.ops`` depends on torch alone, so the ContMix op also
imports on a machine without OpenMMLab; there this package import skips the registrations.
"""
import importlib.util

from .version import __version__

if importlib.util.find_spec('mmengine') is not None:
    from . import compat  # noqa: F401  (applies the fixes on import)
    from . import checkpoint_io  # noqa: F401  (weights-only, https-only checkpoint loading for mmengine)
    from . import models  # noqa: F401  (registers OverLoCK)
    from . import engine  # noqa: F401  (registers CPUDistributedDataParallel)

__all__ = ['__version__']
