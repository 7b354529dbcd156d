"""Compatibility fixes that the OpenMMLab 2.0 stack needs on current torch, applied once on ``import mmoverlock``.

Each fix names the upstream problem and the versions that need it. Nothing here changes behaviour globally beyond
what is stated: in particular torch's ``weights_only=True`` default stays on.
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


allow_mmengine_checkpoints()
