"""The formulations the fused ContMix op replaces, and the op's minimum cost: shared by the benchmark and the tests.

All compute the op with ``rpb`` and ``softmax=True``, the numbers of ``contmix_aggregate(..., rpb=rpb, softmax=True)``:

* :func:`unfused_contmix`: the chain the fusion replaces, on a chosen aggregation kernel: gather the bias, add it,
  ``softmax`` in torch (:func:`~mmoverlock.ops.contmix.unfused_weights`), then ``contmix_aggregate(probs, value, K)``
  without bias or softmax (NATTEN's ``na2d_av``); ``contmix_aggregate(..., backend='unfused')``, which the models
  offer as ``contmix_backend='unfused'``, is this chain on the automatic kernel.
* :func:`unfold_contmix`: the authors' pure-torch formulation, ``F.unfold`` of the values (K*K*C numbers per pixel).
  Their code pads before unfolding; to give exactly our shifted-window numbers this unfolds the valid windows and
  replicate-pads the window grid, which has the same cost.

Test and benchmark code, not model code (hence :mod:`mmoverlock.testing`); imports only torch, like
:mod:`mmoverlock.ops`.
"""
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.contmix import available_backends, contmix_aggregate, unfused_weights

__all__ = [
    'unfused_contmix', 'unfold_contmix', 'contmix_method', 'random_inputs', 'contmix_cost',
    'contmix_cuda_traffic'
]

#: Environment variable that picks the instruction set of the compiled CPU kernels (read on every call).
CPU_CAPABILITY_ENV = 'MMOVERLOCK_CPU_CAPABILITY'


def unfused_contmix(weights: Tensor, value: Tensor, rpb: Tensor, kernel_size: int,
                    backend: Optional[str] = None) -> Tensor:
    """Bias and softmax in torch, then the aggregation kernel alone (``backend`` as in ``contmix_aggregate``)."""
    probs = unfused_weights(weights, rpb, kernel_size, softmax=True).to(value.dtype)
    return contmix_aggregate(probs, value, kernel_size, backend=backend)


def unfold_contmix(weights: Tensor, value: Tensor, rpb: Tensor, kernel_size: int) -> Tensor:
    """The authors' ``F.unfold`` formulation: K*K*C values per pixel, multiplied by the weights and summed."""
    B, G, H, W, C = value.shape
    K, r = kernel_size, kernel_size // 2
    probs = unfused_weights(weights, rpb, K, softmax=True).to(value.dtype)
    x = value.permute(0, 1, 4, 2, 3).reshape(B * G, C, H, W)
    cols = F.unfold(x, K).view(B * G, C * K * K, H - K + 1, W - K + 1)
    cols = F.pad(cols, (r, r, r, r), mode='replicate').view(B, G, C, K * K, H, W)
    out = (cols * probs.permute(0, 1, 4, 2, 3).unsqueeze(2)).sum(3)  # [B, G, C, H, W]
    return out.permute(0, 1, 3, 4, 2)


def contmix_cost(shape: Sequence[int], backward: bool, element_size: int = 4) -> Dict[str, int]:
    """The work of the op with bias and softmax for ``shape`` = (B, G, H, W, C, K), and the bytes it must move.

    Forward: P*T*C multiply-adds and P*T exps (P pixels, T = K*K taps); it reads the logits and the values once and
    writes the output. Backward (softmax recomputed): 2*P*T*C multiply-adds (dL/dP and grad_value) and P*T exps; it
    reads grad_out, the logits and the values and writes grad_weights and grad_value. The bias table is negligible.
    """
    B, G, H, W, C, K = shape
    P, T = B * G * H * W, K * K
    cost = {'multiply_adds': P * T * C, 'exps': P * T, 'bytes': P * (T + 2 * C) * element_size}
    if backward:
        cost['multiply_adds'] += 2 * P * T * C
        cost['exps'] += P * T
        cost['bytes'] += P * (2 * T + 3 * C) * element_size
    return cost


def contmix_cuda_traffic(shape: Sequence[int], element_size: int = 4, deterministic: bool = False) -> Dict:
    """Bytes each pass of the CUDA kernels moves to and from global memory for ``shape`` = (B, G, H, W, C, K), with
    bias and softmax, next to the op's minimum (:func:`contmix_cost`).

    The model of the present design (csrc/cuda/contmix_cuda.cu): a pass fetches each element it reads once (the
    K*K-neighbourhood re-reads of a pixel's rows are served by the caches) and writes each output once; ``acc`` is the
    accumulation type's size (4 bytes, 8 for float64); the [G, 2K-1, 2K-1] bias tables are negligible, as in
    contmix_cost. Passes:

    * ``forward``: logits and values in; out and the log-sum-exp per pixel (``lse``, one acc number) out.
    * ``backward``: one pass, grad_out, the saved out, values, logits and lse in; grad_weights and grad_value out
      (nothing of the forward is recomputed: sum_t P_t dL/dP_t is <grad_out, out>). With ``deterministic`` it
      writes the logit gradients in the accumulation type instead, and ``grad_rpb`` gathers them in a fixed order
      (read once; per plane row a [K, 2K-1] partial table written and read back); for half types ``copy`` then
      casts them into grad_weights.

    Returns:
        dict: ``{'forward': {pass: bytes}, 'backward': {pass: bytes}, 'forward_min', 'backward_min',
        'forward_ratio', 'backward_ratio'}`` (ratio = modelled bytes / minimum).
    """
    B, G, H, W, C, K = shape
    P, T = B * G * H * W, K * K
    e, acc = element_size, 8 if element_size == 8 else 4
    logits, values, lse = P * T * e, P * C * e, P * acc  # one [P, T] or [P, C] tensor, the saved log-sum-exp
    traffic = {'forward': {'forward': logits + 2 * values + lse}}
    if not deterministic:
        traffic['backward'] = {'backward': 2 * logits + 4 * values + lse}
    else:
        kept, rows = P * T * acc, B * G * H * K * (2 * K - 1) * acc  # logit gradients in acc, the row partials
        traffic['backward'] = {'backward': logits + kept + 4 * values + lse, 'grad_rpb': kept + 2 * rows}
        if acc != e:
            traffic['backward']['copy'] = kept + logits
    minimum = {'forward': contmix_cost(shape, False, e)['bytes']}
    minimum['backward'] = contmix_cost(shape, True, e)['bytes'] - minimum['forward']
    for kind in ('forward', 'backward'):
        traffic[f'{kind}_min'] = minimum[kind]
        traffic[f'{kind}_ratio'] = sum(traffic[kind].values()) / minimum[kind]
    return traffic


def contmix_method(name: str, device: str) -> Callable[[Tensor, Tensor, Tensor, int], Tensor]:
    """A function ``(weights, value, rpb, K) -> out`` for a method name.

    ``fused-<backend>`` is ``contmix_aggregate`` with that backend; ``fused-cpu:<isa>`` runs the compiled CPU kernels
    with one instruction set (``default``, ``avx2``, ``avx512``); ``unfused`` runs on the compiled kernel of
    ``device`` when built, else on the torch fallback; ``unfold`` is the authors' formulation.
    """
    if name.startswith('fused-'):
        backend, _, isa = name[len('fused-'):].partition(':')
        if not isa:
            return lambda w, v, b, K: contmix_aggregate(w, v, K, rpb=b, softmax=True, backend=backend)

        def fused_with_isa(w, v, b, K):
            before = os.environ.get(CPU_CAPABILITY_ENV)
            os.environ[CPU_CAPABILITY_ENV] = isa
            try:
                return contmix_aggregate(w, v, K, rpb=b, softmax=True, backend=backend)
            finally:
                if before is None:
                    del os.environ[CPU_CAPABILITY_ENV]
                else:
                    os.environ[CPU_CAPABILITY_ENV] = before

        return fused_with_isa
    if name == 'unfused':
        backend = device if device in available_backends() else 'torch'
        return lambda w, v, b, K: unfused_contmix(w, v, b, K, backend=backend)
    if name == 'unfold':
        return unfold_contmix
    raise ValueError(f"contmix_method: unknown method {name!r}; expected 'fused-<backend>[:<isa>]', 'unfused' or "
                     f"'unfold'")


def random_inputs(shape: Sequence[int], device='cpu', dtype=torch.float32, seed: int = 0,
                  requires_grad: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """Standard-normal logits and values and a 0.1-scaled bias table for ``shape`` = (B, G, H, W, C, K)."""
    B, G, H, W, C, K = shape
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(B, G, H, W, K * K, generator=gen).to(device, dtype)
    value = torch.randn(B, G, H, W, C, generator=gen).to(device, dtype)
    rpb = (0.1 * torch.randn(G, 2 * K - 1, 2 * K - 1, generator=gen)).to(device, dtype)
    return tuple(t.requires_grad_(requires_grad) for t in (weights, value, rpb))
