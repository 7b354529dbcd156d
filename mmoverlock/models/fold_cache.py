"""Folded kernels kept between inference calls.

In eval mode the backbone folds each BatchNorm into the conv before it, and a ``DilatedReparamBlock``'s branches
into one kernel, from the current parameters on every call: some 1,500 small operators per forward of OverLoCK-T,
a fifth of its time on 64 x 64 images and 3% at 512 x 512 (2-core Xeon, ``benchmarks/README.md``). Without a gradient
the results depend on the parameters and buffers alone, so :func:`reuse_fold` keeps each one with a stamp of its
sources (each tensor itself, its version counter and its storage address) and hands it out again while the stamp
holds. An in-place change (an optimizer step, ``load_state_dict``, ``copy_`` under ``no_grad``) bumps the version,
``.to()`` and ``.half()`` replace the storage, a new ``nn.Parameter`` is another tensor: each makes the next call fold
again. Writes through ``.data`` bypass the version counter (mmengine's EMA hook swaps weights that way), so the
trunk also drops its folds whenever ``train()`` or ``eval()`` is called, as every mmengine loop does before it runs.
With a gradient, while tracing, or for inference tensors (no version counter) nothing is kept.
"""
import weakref
from typing import Callable, Hashable, Iterable, List, TypeVar

import torch
from torch import nn

from ..ops.tracing import is_tracing

T = TypeVar('T')

#: module -> {key: (stamp, value)}; weak, so a deleted model's folds go with it (and copies never share them).
_FOLDS: 'weakref.WeakKeyDictionary[nn.Module, dict]' = weakref.WeakKeyDictionary()


def _sources(modules: Iterable[nn.Module]) -> List[torch.Tensor]:
    # The registries themselves: ``parameters(recurse=False)`` walks a generator chain per module, a third of the
    # stamping's cost (3% of a 64 x 64 inference of OverLoCK-T).
    return [t for m in modules for table in (m._parameters, m._buffers) for t in table.values() if t is not None]


def _stamp(tensors: List[torch.Tensor]) -> tuple:
    return tuple((t, t._version, t.data_ptr()) for t in tensors)


def _holds(stamp: tuple, now: tuple) -> bool:
    return len(stamp) == len(now) and all(a[0] is b[0] and a[1:] == b[1:] for a, b in zip(stamp, now))


def reuse_fold(owner: nn.Module, key: Hashable, modules: Iterable[nn.Module], fold: Callable[[], T]) -> T:
    """``fold()``, a function of the parameters and buffers of ``modules`` (and of ``key``, which names the fold and
    any number it depends on, such as a BatchNorm's eps), computed once and reused while no gradient is wanted and
    none of those tensors changed (see the module's docstring); kept with ``owner``."""
    if torch.is_grad_enabled() or is_tracing():
        return fold()
    tensors = _sources(modules)
    try:
        now = _stamp(tensors)
    except RuntimeError:  # an inference tensor: no version counter to stamp
        return fold()
    folds = _FOLDS.setdefault(owner, {})
    entry = folds.get(key)
    if entry is not None and _holds(entry[0], now):
        return entry[1]
    value = fold()
    folds[key] = (now, value)
    return value


def drop_folds(module: nn.Module) -> None:
    """Forget the folds kept with ``module`` and its submodules."""
    for m in module.modules():
        _FOLDS.pop(m, None)
