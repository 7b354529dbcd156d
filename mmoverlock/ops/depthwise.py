"""Stride-1 depthwise convolution on the compiled ``mmoverlock::depthwise_*`` operators, and the training steps
built on it.

``depthwise_conv2d`` is ``F.conv2d(x, weight, bias, 1, padding, dilation, groups=C)``. On CPU tensors (and CUDA ones
when the extension was built with nvcc) it runs the compiled op: per-ISA CPU kernels (baseline, AVX2, AVX-512, the
instruction set ContMix's kernels use, ``MMOVERLOCK_CPU_CAPABILITY``) vectorised over channels for channels-last maps
and over columns for NCHW ones, for any odd kernel size and any dilation, with its own input and weight gradients.
So its speed does not depend on which path a vendor library picks on a given CPU. float16/bfloat16 inputs (and
autocast) compute in float32 and return the half dtype, as ContMix's CPU kernels do. ``F.conv2d`` remains the
fallback (no extension, other devices, paddings outside ``[0, dilation * (k - 1)]``) and the path that tracing and
export record.

``residual_depthwise_conv2d`` (``x + dwconv(x)``) runs as one conv with the identity added to the kernel's centre.
``fused_depthwise_conv2d`` is the inference step of an MLP's ``GELU -> ResDWConv -> GRN``: one pass that convolves
``gelu(x)`` and also returns the output's per-channel sums of squares (GRN's statistic), with no GELU map and no
squared map in between.
Two training-memory steps built on it keep only their inputs for the backward and recompute the rest there:
``gelu_res_dwconv`` (``u + dwconv(u)`` with ``u = gelu(z)``) and ``recomputed_branch_sum`` (the batch-normalised sum
of parallel depthwise branches, i.e. a DilatedReparamBlock in training).
"""
import functools
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch._prims_common import suggest_memory_format
from torch.autograd.function import once_differentiable

from .contmix import available_backends
from .statistics import spatial_dot
from .tracing import is_tracing

#: Devices whose depthwise convs run the compiled op (those the extension was built for).
_OP_DEVICES = tuple(d for d in ('cpu', 'cuda') if d in available_backends()
                    and hasattr(torch.ops.mmoverlock, 'depthwise_forward'))
#: Dtypes the op computes in float32 (its CPU kernels are float32/float64), returning the input dtype.
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _output_size(x: torch.Tensor, weight: torch.Tensor, padding: int, dilation: int) -> Tuple[int, int]:
    span = dilation * (weight.shape[-1] - 1)
    return x.shape[2] + 2 * padding - span, x.shape[3] + 2 * padding - span


if _OP_DEVICES:

    @torch.library.register_fake('mmoverlock::depthwise_forward')
    def _forward_fake(x, weight, bias, padding, dilation):
        torch._check(x.dim() == 4 and weight.dim() == 4 and weight.shape[0] == x.shape[1],
                     lambda: 'depthwise: input [N, C, H, W] and weight [C, 1, K, K] expected')
        return torch.empty((x.shape[0], x.shape[1], *_output_size(x, weight, padding, dilation)), dtype=x.dtype,
                           device=x.device, memory_format=suggest_memory_format(x))

    @torch.library.register_fake('mmoverlock::depthwise_backward')
    def _backward_fake(grad_out, x, weight, padding, dilation, output_mask):
        grad_x = torch.empty_like(x, memory_format=suggest_memory_format(x)) if output_mask[0] else x.new_empty(0)
        grad_w = torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else x.new_empty(0)
        return grad_x, grad_w

    def _setup_context(ctx, inputs, output):
        x, weight, bias, padding, dilation = inputs
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None

    def _backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x, grad_w = torch.ops.mmoverlock.depthwise_backward(grad_out, x, weight, ctx.padding, ctx.dilation,
                                                                 [needs[0], needs[1]])
        grad_b = grad_out.sum((0, 2, 3)) if ctx.has_bias and needs[2] else None
        return grad_x if needs[0] else None, grad_w if needs[1] else None, grad_b, None, None

    torch.library.register_autograd('mmoverlock::depthwise_forward', _backward, setup_context=_setup_context)

#: Whether the CPU op has its fused (GELU prologue, sum-of-squares epilogue) inference forward.
_HAS_FUSED = 'cpu' in _OP_DEVICES and hasattr(torch.ops.mmoverlock, 'depthwise_forward_fused')

if _HAS_FUSED:

    @torch.library.register_fake('mmoverlock::depthwise_forward_fused')
    def _forward_fused_fake(x, weight, bias, padding, dilation, gelu_input, square_sums, gelu_grad_at=None,
                            product_with=None):
        out = _forward_fake(x, weight, bias, padding, dilation)
        return out, x.new_empty((x.shape[0], x.shape[1]) if square_sums else (0, ))

    @torch.library.register_fake('mmoverlock::depthwise_grad_weight_fused')
    def _grad_weight_fused_fake(grad_out, x, weight, padding, dilation, gelu_input):
        _backward_fake(grad_out, x, weight, padding, dilation, [False, False])  # the same checks
        return torch.empty_like(weight, memory_format=torch.contiguous_format)

    @torch.library.register_fake('mmoverlock::depthwise_statistics')
    def _statistics_fake(x, weight, bias, padding, dilation):
        _forward_fake(x, weight, bias, padding, dilation)  # the same checks
        return x.new_empty(x.shape[:2]), x.new_empty(x.shape[:2])


def _runs_op(x: torch.Tensor, weight: torch.Tensor, padding: int, dilation: int) -> bool:
    """Whether the compiled op takes this call (else ``F.conv2d``, which also raises the errors of bad input)."""
    if x.device.type not in _OP_DEVICES or is_tracing() or x.dim() != 4 or weight.dim() != 4:
        return False
    k = weight.shape[-1]
    return (weight.shape[0] == x.shape[1] and weight.shape[1] == 1 and weight.shape[2] == k and k % 2 == 1
            and dilation >= 1 and 0 <= padding <= dilation * (k - 1) and min(_output_size(x, weight, padding,
                                                                                          dilation)) >= 1
            and x.dtype in (torch.float32, torch.float64) + _HALF_DTYPES and weight.dtype == x.dtype
            and (x.device.type == 'cuda' or x.dtype not in _HALF_DTYPES))


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, padding: int = 0,
                     dilation: int = 1) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, 1, padding, dilation, groups=C)`` on the compiled op where it applies.

    Args:
        x (Tensor): Input [N, C, H, W] (any memory format; the output follows it).
        weight (Tensor): Depthwise kernel [C, 1, k, k].
        bias (Tensor, optional): [C]. Defaults to ``None``.
        padding (int): Zero padding on every side. Defaults to 0.
        dilation (int): Dilation. Defaults to 1.

    Returns:
        Tensor: [N, C, H + 2p - d(k-1), W + 2p - d(k-1)], in the dtype ``F.conv2d`` would return (under autocast:
        the autocast dtype, computed in float32 on the CPU).
    """
    device = x.device.type
    if device == 'cpu' and not is_tracing():
        autocast = torch.is_autocast_enabled('cpu')
        half = x.dtype in _HALF_DTYPES or (autocast and x.dtype == torch.float32)
        if half:
            # The CPU kernels are float32/float64: compute in float32, return the dtype the conv would return.
            # Autocast stays off inside, so the backward sees one dtype too.
            dtype = torch.get_autocast_dtype('cpu') if autocast else x.dtype
            cast = (lambda t: t if t is None else t.float())
            if _runs_op(cast(x), cast(weight), padding, dilation):
                with torch.autocast('cpu', enabled=False):
                    out = torch.ops.mmoverlock.depthwise_forward(x.float(), weight.float(), cast(bias), padding,
                                                                 dilation)
                return out.to(dtype)
    if _runs_op(x, weight, padding, dilation) and not torch.is_autocast_enabled(device):
        return torch.ops.mmoverlock.depthwise_forward(x, weight, bias, padding, dilation)
    return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])


def depthwise_conv2d_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: int,
                              dilation: int, output_mask: Sequence[bool]) -> Tuple[torch.Tensor, ...]:
    """Input, weight and bias gradients of ``depthwise_conv2d`` (``None`` where ``output_mask`` is false)."""
    if _runs_op(x, weight, padding, dilation) and grad_out.dtype == x.dtype:
        grad_x, grad_w = torch.ops.mmoverlock.depthwise_backward(grad_out, x, weight, padding, dilation,
                                                                 [output_mask[0], output_mask[1]])
        grad_b = grad_out.sum((0, 2, 3)) if output_mask[2] else None
        return grad_x if output_mask[0] else None, grad_w if output_mask[1] else None, grad_b
    channels = x.shape[1]
    return torch.ops.aten.convolution_backward(grad_out, x, weight, [channels], [1, 1], [padding, padding],
                                               [dilation, dilation], False, [0, 0], channels, list(output_mask))


def _folds_identity(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``residual_depthwise_conv2d`` adds the identity to the kernel: float32/float64 without autocast. A
    half-precision kernel would lose the small centre tap's low bits to the added 1 (an 11-bit mantissa)."""
    return (x.dtype in (torch.float32, torch.float64) and weight.dtype in (torch.float32, torch.float64)
            and not (x.device.type in ('cpu', 'cuda') and torch.is_autocast_enabled(x.device.type)))


def residual_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                              padding: int) -> torch.Tensor:
    """``x + depthwise_conv2d(x, weight, bias, padding)`` for an odd "same" kernel, as one conv where it can.

    The identity is the kernel with a 1 at its centre, so the sum is one conv with that 1 added to the centre tap:
    no pass over the map for the addition, none for its gradient, and the same weight gradient (the added 1 is a
    constant). Exact up to the rounding of ``w + 1``; in half precision the two terms stay apart.
    """
    if not _folds_identity(x, weight):
        return depthwise_conv2d(x, weight, bias, padding).add_(x)
    return depthwise_conv2d(x, _plus_identity(weight), bias, padding)


def fused_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: int,
                           dilation: int = 1, *, gelu: Optional[str] = None, residual: bool = False,
                           square_sums: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``y = u + dwconv(u)`` (``residual``) or ``dwconv(u)``, with ``u = F.gelu(x, approximate=gelu)`` (or ``x`` for
    ``gelu=None``), and, with ``square_sums``, ``y``'s per-sample, per-channel sum of squares [N, C] (else ``None``).

    For inference: on CPU float32/float64 maps with no gradient wanted, one pass of the compiled op reads ``x`` once
    and writes ``y`` once (``gelu='none'``; the identity folded into the kernel as in ``residual_depthwise_conv2d``).
    The composition (a GELU map, the conv, a squared map) runs elsewhere, e.g. when autograd records the call.
    """
    wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    folds = residual and _folds_identity(x, weight)
    kernel = _plus_identity(weight) if folds else weight
    if (_HAS_FUSED and gelu in (None, 'none') and not wants_grad and x.device.type == 'cpu'
            and not torch.is_autocast_enabled('cpu') and _runs_op(x, kernel, padding, dilation)):
        # (float32/float64 without autocast: a residual is always folded into the kernel here)
        out, sums = torch.ops.mmoverlock.depthwise_forward_fused(x, kernel, bias, padding, dilation, gelu is not None,
                                                                 square_sums)
        return out, sums if square_sums else None
    u = x if gelu is None else F.gelu(x, approximate=gelu)
    out = depthwise_conv2d(u, kernel, bias, padding, dilation)
    if residual and not folds:
        out = out + u
    return out, out.square().sum((2, 3)) if square_sums else None


def _plus_identity(weight: torch.Tensor) -> torch.Tensor:
    """The depthwise kernel plus the identity's (a 1 at the centre tap); differentiable, one operator."""
    return weight + _identity_kernel(weight.shape[-1], weight.dtype, weight.device)


@functools.lru_cache(maxsize=None)
def _identity_kernel(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The constant [1, 1, size, size] kernel of the identity (built once per size, dtype and device)."""
    kernel = torch.zeros(1, 1, size, size, dtype=dtype, device=device)
    kernel[..., size // 2, size // 2] = 1
    return kernel


class DepthwiseConv2d(nn.Conv2d):
    """A stride-1 depthwise ``nn.Conv2d`` (same parameters and state-dict keys) that runs ``depthwise_conv2d``."""

    def __init__(self, num_channels: int, kernel_size: int, padding: Optional[int] = None, dilation: int = 1,
                 bias: bool = True):
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        super().__init__(num_channels, num_channels, kernel_size, padding=padding, dilation=dilation,
                         groups=num_channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight, self.bias, self.padding[0], self.dilation[0])


def gelu_res_dwconv(z: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: int,
                    approximate: str = 'none') -> torch.Tensor:
    """``u + dwconv(u)`` with ``u = gelu(z)``; when a gradient is wanted, keeps only ``z`` for the backward.

    Under autocast, for half dtypes or while tracing the plain composition runs (autograd's own casts keep the
    backward's dtypes apart).
    """
    wants_grad = torch.is_grad_enabled() and (z.requires_grad or weight.requires_grad)
    # (autocast has no state for devices such as 'meta', where timm builds and runs models to check shapes)
    if not wants_grad:
        return fused_depthwise_conv2d(z, weight, bias, padding, gelu=approximate, residual=True)[0]
    if (is_tracing() or z.device.type not in ('cpu', 'cuda') or torch.is_autocast_enabled(z.device.type)
            or z.dtype in _HALF_DTYPES):
        return residual_depthwise_conv2d(F.gelu(z, approximate=approximate), weight, bias, padding)
    return _GeluResDWConv.apply(z, weight, bias, padding, approximate)


class _GeluResDWConv(torch.autograd.Function):
    """``u + dwconv(u)`` with ``u = gelu(z)``, keeping ``z`` alone for the backward.

    Autograd would keep both ``z`` (for GELU's gradient) and ``u`` (for the conv's weight gradient), two maps of
    the widest (MLP) width; the backward here recomputes ``u`` from ``z`` for the weight gradient (one elementwise
    pass) and takes the input gradient ``gelu'(z) * conv^T(grad_out)`` in one pass of the op (its GELU-gradient
    epilogue; elsewhere the conv's input gradient, then ``gelu_backward``), with the plain chain's gradients.
    ``gelu_res_dwconv`` calls it for float32/float64 without autocast only, where ``residual_depthwise_conv2d``
    always folds the identity into the kernel: the conv's input gradient then includes grad_out's own term.
    """

    @staticmethod
    def forward(ctx, z, weight, bias, padding: int, approximate: str):
        ctx.save_for_backward(z, weight)
        ctx.padding, ctx.approximate, ctx.has_bias = padding, approximate, bias is not None
        return fused_depthwise_conv2d(z, weight, bias, padding, gelu=approximate, residual=True)[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        z, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        return (*gelu_res_dwconv_backward(grad_out, z, weight, ctx.padding, ctx.approximate, mask), None, None)


def gelu_res_dwconv_backward(grad_out: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, padding: int,
                             approximate: str, mask: Sequence[bool]) -> Tuple[Optional[torch.Tensor], ...]:
    """The gradients (``z``, weight, bias; ``None`` where ``mask`` is false) of ``u + dwconv(u)``, ``u = gelu(z)``,
    from ``z`` alone. Where the CPU op runs, no ``u`` map is made: the weight gradient takes each row's GELU as it
    reads ``z`` (``depthwise_grad_weight_fused``, the very float GELU the fused forward convolved), and
    ``grad_z = gelu'(z) * conv^T(grad_out)`` is one pass (the fused forward's GELU-gradient epilogue). Elsewhere
    ``u`` is recomputed for the conv's gradients, then ``gelu_backward``. Float32/float64 without autocast only (the
    identity folded into the kernel)."""
    kernel = _plus_identity(weight)
    fused = (approximate == 'none' and _HAS_FUSED and z.device.type == 'cpu' and grad_out.dtype == z.dtype
             and _runs_op(z, kernel, padding, 1))
    if not fused:
        grad_u, grad_w, grad_b = depthwise_conv2d_backward(grad_out, F.gelu(z, approximate=approximate), kernel,
                                                           padding, 1, mask)
        return (torch.ops.aten.gelu_backward(grad_u, z, approximate=approximate) if mask[0] else None), grad_w, grad_b
    op = torch.ops.mmoverlock
    grad_z = grad_w = grad_b = None
    if mask[0]:
        grad_z = op.depthwise_forward_fused(grad_out, kernel.flip((2, 3)), None, kernel.shape[-1] - 1 - padding, 1,
                                            False, False, z)[0]
    if mask[1]:
        grad_w = op.depthwise_grad_weight_fused(grad_out, z, kernel, padding, 1, True)
    if mask[2]:
        grad_b = grad_out.sum((0, 2, 3))
    return grad_z, grad_w, grad_b


def branch_sum(x: torch.Tensor, kernels: Sequence[torch.Tensor], dilations: Sequence[int],
               norm) -> torch.Tensor:
    """``sum_i norm(i, dwconv_i(x))`` over depthwise branches with "same" zero padding ``r_i * (k_i - 1) / 2``."""
    out = None
    for i, (kernel, r) in enumerate(zip(kernels, dilations)):
        y = norm(i, depthwise_conv2d(x, kernel, None, r * (kernel.shape[-1] - 1) // 2, r))
        out = y if out is None else out + y
    return out


def recomputed_branch_sum(x: torch.Tensor, kernels: Sequence[torch.Tensor], dilations: Sequence[int],
                          bn_weights: Sequence[torch.Tensor], bn_biases: Sequence[torch.Tensor],
                          eps: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The sum of batch-normalised depthwise branches (batch statistics), keeping only ``x`` for the backward.

    With the compiled op (float32/float64, no autocast) this is ``_FoldedBranchSum``: each branch's batch statistics,
    then the whole sum as one conv with the BN-folded kernel, and an analytic backward of the same cost class.
    Otherwise ``_RecomputedBranchSum`` runs the plain formulation and differentiates its recomputation.

    Args:
        x (Tensor): Input [N, C, H, W], either memory format.
        kernels (Sequence[Tensor]): One depthwise kernel [C, 1, k_i, k_i] per branch (odd ``k_i``).
        dilations (Sequence[int]): Each branch's dilation; its padding is ``r_i * (k_i - 1) / 2``.
        bn_weights, bn_biases (Sequence[Tensor]): Each branch's BN affine parameters [C].
        eps (Sequence[float]): Each branch's BN epsilon.

    Returns:
        tuple[Tensor, Tensor]: The sum [N, C, H, W] and the batch statistics [branches, 2, C] (mean, unbiased
        variance) of each branch's conv output, for the caller to update its running statistics (no gradient).
    """
    n = len(kernels)
    if not (len(dilations) == len(bn_weights) == len(bn_biases) == len(eps) == n):
        raise ValueError(f'recomputed_branch_sum: kernels, dilations, bn_weights, bn_biases and eps must have one '
                         f'entry per branch, got {n}, {len(dilations)}, {len(bn_weights)}, {len(bn_biases)}, '
                         f'{len(eps)}')
    if _folds(x, kernels, dilations, bn_weights):
        return _FoldedBranchSum.apply(x, tuple(dilations), tuple(eps), *kernels, *bn_weights, *bn_biases)
    return _RecomputedBranchSum.apply(x, tuple(dilations), tuple(eps), *kernels, *bn_weights, *bn_biases)


def _with_statistics(ctx, out: torch.Tensor, stats: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """What a branch-sum Function's forward returns: its output and the branches' batch statistics [branches, 2, C],
    marked non-differentiable."""
    ctx.mark_non_differentiable(stats)
    return out, stats


class _RecomputedBranchSum(torch.autograd.Function):
    """``recomputed_branch_sum``: the forward runs without recording, the backward recomputes and differentiates.

    Autograd would keep every branch's conv output (each BN's input) until the backward: as many maps as there are
    branches, about a sixth of OverLoCK's training memory. The backward recomputes the branch sum with the same
    kernels and batch statistics, then differentiates that: the same operations in the same order, so outputs and
    gradients equal the plain form's. Costs one extra forward per training step.
    """

    @staticmethod
    def forward(ctx, x, dilations, eps, *params):
        ctx.save_for_backward(x, *params)
        ctx.dilations, ctx.eps = dilations, eps
        device = x.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        n = len(dilations)
        kernels, weights, biases = params[:n], params[n:2 * n], params[2 * n:]
        stats = []

        def batch_norm(i: int, y: torch.Tensor) -> torch.Tensor:
            # Fresh buffers with momentum 1 come back holding this batch's mean and unbiased variance.
            mean = y.new_zeros(y.shape[1], dtype=weights[i].dtype)
            var = y.new_ones(y.shape[1], dtype=weights[i].dtype)
            out = F.batch_norm(y, mean, var, weights[i], biases[i], True, 1.0, eps[i])
            stats.append(torch.stack([mean, var]))
            return out

        with torch.no_grad():
            out = branch_sum(x, kernels, dilations, batch_norm)
        return _with_statistics(ctx, out, torch.stack(stats))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_stats):
        leaves = [None if t is None else t.detach().requires_grad_(need)
                  for t, need in zip(ctx.saved_tensors, (ctx.needs_input_grad[0], ) + ctx.needs_input_grad[3:])]
        n = len(ctx.dilations)
        kernels, weights, biases = leaves[1:1 + n], leaves[1 + n:1 + 2 * n], leaves[1 + 2 * n:]

        def batch_norm(i: int, y: torch.Tensor) -> torch.Tensor:  # batch statistics, no running ones
            return F.batch_norm(y, None, None, weights[i], biases[i], True, 0., ctx.eps[i])

        device, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device, dtype, enabled):
            out = branch_sum(leaves[0], kernels, ctx.dilations, batch_norm)
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out)) if wanted else iter(())
        grads = [next(grads) if t is not None and t.requires_grad else None for t in leaves]
        return (grads[0], None, None, *grads[1:])


def _folds(x: torch.Tensor, kernels: Sequence[torch.Tensor], dilations: Sequence[int],
           bn_weights: Sequence[torch.Tensor]) -> bool:
    """Whether ``_FoldedBranchSum`` takes the call: the op runs every branch, the first kernel's span holds every
    other one, one dtype, no autocast, more than one value per channel (else BatchNorm's own error is raised)."""
    if torch.is_autocast_enabled(x.device.type) or x.dtype not in (torch.float32, torch.float64):
        return False
    if x.dim() != 4 or x.shape[0] * x.shape[2] * x.shape[3] < 2:
        return False
    span = kernels[0].shape[-1]
    return all(_runs_op(x, k, r * (k.shape[-1] - 1) // 2, r) and r * (k.shape[-1] - 1) + 1 <= span
               and w.dtype == x.dtype for k, r, w in zip(kernels, dilations, bn_weights))


def sum_branch_kernels(kernels: Sequence[torch.Tensor], dilations: Sequence[int],
                       scales: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The one depthwise kernel of parallel branches: ``sum_i scale_i[c] * kernel_i`` with each (dilated) kernel
    spread and centred in the first kernel's K x K (every span at most K). ``scales`` [branches, C] default to one.

    A fixed number of operators whatever the branch count (the eval-mode forward runs this on every call): the
    scaled taps of every branch, side by side, are added at their positions in the K x K kernel by one index_add.
    """
    size = kernels[0].shape[-1]
    taps = torch.cat([kernel.flatten(1) for kernel in kernels], dim=1)  # [C, sum k_i^2]
    sizes = tuple(kernel.shape[-1] for kernel in kernels)
    positions, owners = _tap_positions(size, sizes, tuple(dilations), kernels[0].device)
    if scales is not None:
        taps = taps * scales.t().index_select(1, owners)
    out = taps.new_zeros(taps.shape[0], size * size).index_add_(1, positions, taps)
    return out.view(-1, 1, size, size)


@functools.lru_cache(maxsize=None)
def _tap_positions(size: int, sizes: Tuple[int, ...], dilations: Tuple[int, ...],
                   device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """For branch kernels of ``sizes`` and ``dilations`` centred in a ``size`` x ``size`` kernel: the flat position
    of each of their taps (in ``torch.cat`` order) and the branch each tap belongs to (constants, built once)."""
    positions, owners = [], []
    for branch, (k, r) in enumerate(zip(sizes, dilations)):
        offset = (size - r * (k - 1) - 1) // 2
        for a in range(k):
            for b in range(k):
                positions.append((offset + r * a) * size + offset + r * b)
                owners.append(branch)
    as_tensor = functools.partial(torch.tensor, dtype=torch.long, device=device)
    return as_tensor(positions), as_tensor(owners)


class _FoldedBranchSum(torch.autograd.Function):
    """``recomputed_branch_sum`` in two passes over the input, keeping only ``x`` (and per-channel statistics).

    In training a BatchNorm is the per-channel affine map ``s_i * (y_i - mean_i) + beta_i`` with
    ``s_i = gamma_i / sqrt(var_i + eps_i)`` once its batch statistics are known, so the sum of the normalised
    branches is one K x K depthwise conv of ``x`` with the folded kernel ``sum_i s_i * k_i`` (each branch spread into
    the large kernel's span) and bias ``sum_i beta_i - s_i * mean_i``. The forward computes each branch's statistics
    (``mmoverlock::depthwise_statistics``: the conv with a sum epilogue, no branch map written), then that one conv;
    no branch output or normalised map is kept or summed.

    Backward, with ``g`` = grad_out, ``g' = g - mean(g)`` per channel and ``M = N*H*W``, BatchNorm's gradient is
    ``dL/dy_i = s_i * g' - e_i * (y_i - mean_i)`` with ``dgamma_i = <g', y_i - mean_i> / sigma_i``,
    ``e_i = s_i * dgamma_i / (M * sigma_i)`` and ``dbeta_i = sum(g)``. Each branch output is recomputed once, one
    branch at a time, turned into ``dL/dy_i`` in place and handed to the op's backward (input and weight gradient
    together): no second pass through autograd, no BatchNorm forward or backward kernels. Same values as the plain
    formulation up to rounding (sums grouped differently).
    """

    @staticmethod
    def forward(ctx, x, dilations, eps, *params):
        n = len(dilations)
        kernels, weights, biases = params[:n], params[n:2 * n], params[2 * n:]
        op = torch.ops.mmoverlock
        count = x.shape[0] * x.shape[2] * x.shape[3]
        # Each branch's statistics come from the op's epilogue, without its output map: sums and sums of squares
        # of y - shift, with the shift mean(x) * sum(kernel) (y's mean but for the border), so that
        # var = E[(y - shift)^2] - E[y - shift]^2 keeps float32 precision for channels far from zero.
        # The per-channel arithmetic runs on all branches at once ([branches, C]): a fixed number of operators.
        shifts = x.mean((0, 2, 3)) * torch.stack([kernel.sum((1, 2, 3)) for kernel in kernels])
        negated = shifts.neg()
        sums, squares = zip(*(op.depthwise_statistics(x, kernel, shift, r * (kernel.shape[-1] - 1) // 2, r)
                              for kernel, r, shift in zip(kernels, dilations, negated.unbind(0))))
        shifted_means = torch.stack(sums).sum(1) / count  # [branches, C]
        variances = (torch.stack(squares).sum(1) / count - shifted_means.square()).clamp_min_(0)
        means = shifted_means + shifts
        stds = (variances + x.new_tensor(eps).view(n, 1)).sqrt()
        scales = torch.stack(weights) / stds
        bias = (torch.stack(biases) - means * scales).sum(0)
        folded = sum_branch_kernels(kernels, dilations, scales)
        out = op.depthwise_forward(x, folded, bias, kernels[0].shape[-1] // 2, 1)
        ctx.save_for_backward(x, *kernels, *weights, means, stds)
        ctx.dilations = dilations
        return _with_statistics(ctx, out, torch.stack([means, variances * (count / (count - 1))], dim=1))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_stats):
        dilations = ctx.dilations
        n = len(dilations)
        x, *rest, means, stds = ctx.saved_tensors  # means, stds: [branches, C]
        kernels, weights = rest[:n], rest[n:]
        needs_x, needs = ctx.needs_input_grad[0], ctx.needs_input_grad[3:]
        op = torch.ops.mmoverlock
        count = x.shape[0] * x.shape[2] * x.shape[3]
        grad_sum = grad_out.sum((0, 2, 3))
        centred = grad_out - (grad_sum / count).view(1, -1, 1, 1)
        scales = torch.stack(weights) / stds  # [branches, C], as the per-channel factors below
        neg_coef_per_dot = scales / stds.square().mul_(-count)  # -coef_i / <g', y_i - mean_i>
        # Each branch's per-channel rows as views, one operator per quantity rather than one per branch.
        per_branch = zip(kernels, dilations, means.neg().unbind(0), neg_coef_per_dot.unbind(0),
                         scales.view(n, 1, -1, 1, 1).unbind(0))
        grad_x, grad_k, dots = None, [], []
        # y_i - mean_i (the mean as the bias) and <g', y_i - mean_i> (grad_gamma_i = dot / std_i): on the CPU in one
        # pass, the dot taken from each output row while it is in cache (the fused op's product epilogue).
        fused = _HAS_FUSED and x.device.type == 'cpu'
        if fused:  # in the layout the op computes in, once rather than once per branch
            centred = centred.contiguous(memory_format=suggest_memory_format(x))
        for i, (kernel, r, neg_mean, neg_coef, scale) in enumerate(per_branch):
            padding = r * (kernel.shape[-1] - 1) // 2
            if fused:
                y, dot = op.depthwise_forward_fused(x, kernel, neg_mean, padding, r, False, True, None, centred)
            else:
                y = op.depthwise_forward(x, kernel, neg_mean, padding, r)
                dot = spatial_dot(centred, y)
            dot = dot.sum(0)
            # dL/dy_i = scale_i * g' - coef_i * (y_i - mean_i), in place of y_i.
            grad_y = y.mul_((dot * neg_coef).view(1, -1, 1, 1))
            grad_y.addcmul_(centred, scale)
            gx_i, gk_i = op.depthwise_backward(grad_y, x, kernel, padding, r, [needs_x, needs[i]])
            del y, grad_y
            if needs_x:
                grad_x = gx_i if grad_x is None else grad_x.add_(gx_i)
            grad_k.append(gk_i if needs[i] else None)
            dots.append(dot)
        grad_w = (torch.stack(dots) / stds).unbind(0) if any(needs[n:2 * n]) else (None, ) * n
        grad_w = [g if need else None for g, need in zip(grad_w, needs[n:2 * n])]
        grad_b = [grad_sum if needs[2 * n + i] else None for i in range(n)]
        return (grad_x, None, None, *grad_k, *grad_w, *grad_b)
