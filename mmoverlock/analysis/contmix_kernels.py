"""The per-pixel dynamic kernels of ContMix blocks, taken from the very logits the ContMix op consumes.

A :class:`~mmoverlock.models.ContMixBlock` computes, per pixel and group, the logits of its small (S x S) and large
(K x K) dynamic kernels and hands them with its relative position biases (``rpb1``, ``rpb2``) to
:func:`mmoverlock.ops.contmix_aggregate` through its ``_aggregate`` method. :func:`record_contmix_calls` wraps that
method on each block instance for the duration of a ``with`` (an instance attribute over the class's static method,
removed on exit; the class and every other model are untouched) and keeps what each call received; a forward
pre-hook keeps the size of each block's input map. Nothing of the block is computed a second time.

From a recorded call, :func:`kernel_probabilities` gives the kernels the op applied: per pixel (i, j) and group g,
``P[g, i, j, a, e] = softmax_t(logits[g, i, j, t] + rpb[g, s(i) + a - i + K - 1, s(j) + e - j + K - 1])`` over the
taps ``t = a * K + e``, where tap (a, e) weighs the neighbour ``(s(i) + a, s(j) + e)`` and
``s(i) = clamp(i - K // 2, 0, H - K)`` (windows shifted inwards at the borders). A block whose map is smaller than
K works on a bilinearly enlarged map (``ContMixBlock._working_size``); the recorded logits are on that working grid,
and image coordinates map onto it by scaling.

:func:`mean_distance` is how far a kernel's mass reaches: ``sum_t P_t * |offset_t|``, the offset from the pixel to the
tap's neighbour measured in input-image pixels (one working-grid cell spans ``H_img / h`` by ``W_img / w`` pixels).
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Tuple

import torch
from torch import nn

#: The two kernels of a ContMix block, in the order the block applies them.
KERNELS = ('small', 'large')


@dataclass
class ContMixCall:
    """What one ContMix block passed to the op for one of its kernels.

    Attributes:
        block (str): The block's module name in the model (e.g. ``'sub_blocks3.0'``).
        kernel (str): ``'small'`` (S x S, ``rpb1``) or ``'large'`` (K x K, ``rpb2``).
        kernel_size (int): S or K.
        logits (Tensor): [B, G, h, w, K*K], before the bias, as the op received them (detached).
        rpb (Tensor): [G, 2K-1, 2K-1], the bias the op added (detached).
        block_size (tuple[int, int]): (H, W) of the block's input map; (h, w) differ from it when the block worked
            on an enlarged map.
    """
    block: str
    kernel: str
    kernel_size: int
    logits: torch.Tensor
    rpb: torch.Tensor
    block_size: Tuple[int, int]

    @property
    def grid_size(self) -> Tuple[int, int]:
        """(h, w): the grid the kernels ran on."""
        return tuple(self.logits.shape[2:4])

    @property
    def num_groups(self) -> int:
        return self.logits.shape[1]


def contmix_blocks(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The (name, module) of every ContMix block of ``model``, in module order."""
    from ..models.blocks import ContMixBlock
    return [(name, module) for name, module in model.named_modules() if isinstance(module, ContMixBlock)]


@contextmanager
def record_contmix_calls(model: nn.Module) -> Iterator[List[ContMixCall]]:
    """Record the inputs of every ContMix op call that ``model``'s blocks make inside the ``with``.

    Yields:
        list[ContMixCall]: Filled as the model runs, in call order (per block: the small kernel, then the large).

    Raises:
        ValueError: When ``model`` has no ContMix block.
    """
    blocks = contmix_blocks(model)
    if not blocks:
        raise ValueError(f'model has no ContMix block (a {type(model).__name__}): the kernels exist in OverLoCK '
                         'backbones and classifiers only')
    calls: List[ContMixCall] = []
    handles = []
    previous = [block.__dict__.get('_aggregate') for _, block in blocks]  # an override already in place stays
    for name, block in blocks:
        state = dict(size=None, count=0)

        def before_forward(module, args, state=state):
            state['size'], state['count'] = tuple(args[0].shape[-2:]), 0

        def recording_aggregate(logits, value, kernel_size, rpb, name=name, state=state, aggregate=block._aggregate):
            calls.append(ContMixCall(name, KERNELS[min(state['count'], 1)], kernel_size, logits.detach(),
                                     rpb.detach(), state['size']))
            state['count'] += 1
            return aggregate(logits, value, kernel_size, rpb)

        handles.append(block.register_forward_pre_hook(before_forward))
        block._aggregate = recording_aggregate  # instance attribute: this block of this model only
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()
        for (_, block), override in zip(blocks, previous):
            if override is None:
                del block._aggregate
            else:
                block._aggregate = override


def window_starts(length: int, kernel_size: int, device=None) -> torch.Tensor:
    """s(i) = clamp(i - K // 2, 0, length - K) for i in 0 .. length - 1: each pixel's first window row/column."""
    return (torch.arange(length, device=device) - kernel_size // 2).clamp(0, length - kernel_size)


def tap_offsets(length: int, kernel_size: int, device=None) -> torch.Tensor:
    """[length, K]: ``s(i) + a - i``, the offset (in grid cells) from pixel i to its window's a-th row/column."""
    return window_starts(length, kernel_size, device)[:, None] + torch.arange(kernel_size, device=device) - \
        torch.arange(length, device=device)[:, None]


def kernel_probabilities(call: ContMixCall) -> torch.Tensor:
    """The softmax-normalised kernels the op applied: [B, G, h, w, K, K] (see the module docstring)."""
    k = call.kernel_size
    height, width = call.grid_size
    device = call.logits.device
    bias_rows = tap_offsets(height, k, device) + k - 1  # [h, K]
    bias_cols = tap_offsets(width, k, device) + k - 1  # [w, K]
    bias = call.rpb[:, bias_rows[:, None, :, None], bias_cols[None, :, None, :]]  # [G, h, w, K, K]
    logits = call.logits.reshape(*call.logits.shape[:4], k, k) + bias.to(call.logits.dtype)
    return logits.flatten(-2).softmax(-1).unflatten(-1, (k, k))


def cell_size(call: ContMixCall, image_size: Tuple[int, int]) -> Tuple[float, float]:
    """(height, width) of one cell of the kernels' grid in input-image pixels."""
    height, width = call.grid_size
    return image_size[0] / height, image_size[1] / width


def query_cell(call: ContMixCall, image_size: Tuple[int, int], x: float, y: float) -> Tuple[int, int]:
    """The grid cell (i, j) holding the image pixel (x, y) (column, row of the network's input)."""
    if not (0 <= x < image_size[1] and 0 <= y < image_size[0]):
        raise ValueError(f'query pixel (x={x}, y={y}) lies outside the {image_size[1]}x{image_size[0]} (WxH) input')
    cell_h, cell_w = cell_size(call, image_size)
    return int(y // cell_h), int(x // cell_w)


def mean_distance(probabilities: torch.Tensor, call: ContMixCall, image_size: Tuple[int, int]) -> torch.Tensor:
    """How far each kernel's mass reaches: ``sum_t P_t * |offset_t|`` in input-image pixels, [B, G, h, w].

    Args:
        probabilities (Tensor): :func:`kernel_probabilities` of ``call``.
        call (ContMixCall): The recorded call.
        image_size (tuple[int, int]): (H, W) of the network's input.
    """
    k = call.kernel_size
    height, width = call.grid_size
    cell_h, cell_w = cell_size(call, image_size)
    dy = tap_offsets(height, k, probabilities.device).to(probabilities.dtype) * cell_h  # [h, K]
    dx = tap_offsets(width, k, probabilities.device).to(probabilities.dtype) * cell_w  # [w, K]
    distance = (dy[:, None, :, None]**2 + dx[None, :, None, :]**2).sqrt()  # [h, w, K, K]
    return (probabilities * distance).sum(dim=(-2, -1))
