"""One answer to "is a graph being recorded?", for every op that must then run plain aten operators."""
import torch


def is_tracing(compiling: bool = True) -> bool:
    """Whether ``torch.jit.trace`` or ``torch.export`` (or, with ``compiling``, ``torch.compile``) records this call.

    Ops registered with ``torch.library`` (fake and autograd included) stay usable under ``torch.compile``, so they ask
    with ``compiling=False``; custom ``autograd.Function`` paths that graphs cannot capture ask with the default.
    """
    exporting = getattr(torch.compiler, 'is_exporting', lambda: False)
    return torch.jit.is_tracing() or exporting() or (compiling and torch.compiler.is_compiling())
