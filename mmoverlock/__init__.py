"""mmoverlock: the OverLoCK backbone (CVPR 2025) as an OpenMMLab 2.0 plugin.

``import mmoverlock`` registers the models (and the CPU data-parallel wrapper and the resumable checkpoint hook of
:mod:`mmoverlock.engine`) in MMEngine's registries and calls :func:`mmoverlock.compat.apply_mmengine_fixes`, the one
function that changes mmengine: checkpoints load weights-only and remote ones over https only
(:mod:`mmoverlock.checkpoint_io`). ``mmoverlock.ops`` depends on torch alone, so the ContMix op also imports on a
machine without OpenMMLab; there this package import registers only the timm classifiers (where timm is
installed), which need neither mmengine nor mmcv.
"""
from .version import __version__

try:
    import mmengine  # noqa: F401
except ImportError:
    mmengine = None
try:
    import timm  # noqa: F401
except ImportError:
    timm = None

if mmengine is not None:
    from .compat import apply_mmengine_fixes
    apply_mmengine_fixes()  # the one place mmoverlock changes mmengine (weights-only loading, atomic writes)
    from . import models  # noqa: F401  (registers OverLoCK, and the timm classifiers)
    from . import engine  # noqa: F401  (registers CPUDistributedDataParallel)
elif timm is not None:
    from . import models  # noqa: F401  (registers the timm classifiers: they need torch and timm only)
del mmengine, timm

__all__ = ['__version__']
