"""Per-sample, per-channel statistics of NCHW maps without a map-sized temporary.

``spatial_dot(a, b)`` is ``(a * b).sum((2, 3))``, GRN's statistics: its norms (``a = b``) and its backward's
``<grad_out, x>``. On CPU float32/float64 maps it runs the compiled ``mmoverlock::spatial_dot`` (one read of each
map, vectorised over channels for channels-last maps, where ``torch.linalg.vector_norm`` over H and W is slow and
``(a * b).sum`` writes a product map first); elsewhere, or while tracing, the composition. Not differentiable by
itself: the autograd functions that use it (GRN's) define their own backward.
"""
import torch

from .contmix import available_backends
from .tracing import is_tracing

#: Whether the compiled op exists (the CPU extension is built and has it).
HAS_SPATIAL_DOT = 'cpu' in available_backends() and hasattr(torch.ops.mmoverlock, 'spatial_dot')

if HAS_SPATIAL_DOT:

    @torch.library.register_fake('mmoverlock::spatial_dot')
    def _spatial_dot_fake(a, b):
        torch._check(a.dim() == 4 and a.shape == b.shape, lambda: 'spatial_dot: two maps [N, C, H, W] of one shape')
        return a.new_empty(a.shape[:2])


def runs_compiled(*maps: torch.Tensor) -> bool:
    """Whether ``spatial_dot`` of these maps runs the compiled op (else the composition)."""
    return (HAS_SPATIAL_DOT and not is_tracing() and all(t.device.type == 'cpu' and t.dim() == 4
                                                         and t.dtype in (torch.float32, torch.float64)
                                                         and t.dtype == maps[0].dtype for t in maps))


def spatial_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum((2, 3))`` [N, C] for maps [N, C, H, W] of one shape, in the memory format of ``a``."""
    if runs_compiled(a, b) and a.shape == b.shape:
        return torch.ops.mmoverlock.spatial_dot(a, b)
    return (a * b).sum((2, 3))
