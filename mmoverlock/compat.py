"""Everything mmoverlock changes in mmengine, in one place: :func:`apply_mmengine_fixes`.

``import mmoverlock`` (which is what a config's ``custom_imports = dict(imports=['mmoverlock'])`` does) calls it once;
nothing else in the package changes mmengine's global state. Each fix names the upstream problem and the versions
that need it. Nothing here changes behaviour beyond what is stated: in particular torch's ``weights_only=True``
default stays on.
"""
import torch


def _mmengine_checkpoint_globals() -> list:
    """The non-tensor types that mmengine 0.10.x writes into every checkpoint (``message_hub``, ``meta``)."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    # numpy moved its internals from numpy.core to numpy._core in 2.0; checkpoints name whichever wrote them.
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(name)) for name in
                     ('float16', 'float32', 'float64', 'int8', 'int16', 'int32', 'int64', 'uint8', 'bool')]
    # HistoryBuffer pickles its statistics methods as ``getattr(HistoryBuffer, 'mean')`` etc., so every mmengine
    # checkpoint holds builtins.getattr. The weights-only unpickler still refuses to call anything that is not
    # allow-listed, so getattr can only fetch attributes of objects that were themselves allowed.
    return [HistoryBuffer, np.ndarray, np.dtype, _reconstruct, scalar, getattr, *dtype_classes]


def allow_mmengine_checkpoints() -> None:
    """torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine 0.10.7 checkpoints (``--resume``,
    ``load_from``, ``tools/test.py``, ``init_detector``, the inferencers) then fail with "Unsupported global:
    mmengine.logging.history_buffer.HistoryBuffer". Allow-list exactly the types those checkpoints contain."""
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if add_safe_globals is None:  # torch < 2.4 has no weights_only default to work around
        return
    add_safe_globals(_mmengine_checkpoint_globals())


def apply_mmengine_fixes() -> None:
    """Apply every mmengine fix (idempotent):

    * :func:`allow_mmengine_checkpoints`: mmengine's own checkpoints load under torch's weights-only default;
    * :func:`mmoverlock.checkpoint_io.register_checkpoint_loaders`: every checkpoint mmengine, mmdet and mmseg load
      goes through the weights-only, https-only loader, and the atomic file backend the checkpoint hook saves
      through is registered.
    """
    from .checkpoint_io import register_checkpoint_loaders

    allow_mmengine_checkpoints()
    register_checkpoint_loaders()
