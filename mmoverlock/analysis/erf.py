"""Effective receptive field (ERF) of a backbone and its high-contribution area ratios, as RepLKNet reports them.

The definition is RepLKNet's (Ding et al., CVPR 2022, ``erf/visualize_erf.py`` and ``erf/analyze_erf.py`` in
DingXiaoH/RepLKNet-pytorch), which SLaK and UniRepLKNet reuse, so the numbers compare with theirs:

1. For one normalised image x [1, 3, H, W], let y [1, C, h, w] be the chosen output map of the backbone in eval
   mode. The score of the central output pixel is ``s = sum_c relu(y[0, c, h // 2, w // 2])``; the image's
   contribution map is ``m(x) = sum over the 3 input channels of relu(ds / dx)`` [H, W].
2. The ERF map M is the mean of m(x) over the images (an image whose map is not finite is skipped and counted).
3. Display and area ratios use the log-scaled map ``L = log10(M + 1)``, divided by its maximum for display.
4. The high-contribution area ratio at a threshold t is the area of the smallest square of odd side ``2r + 1``
   (r = 0, 1, 2, ...) centred on the pixel ``(H // 2, W // 2)`` whose sum of L is more than t times L's total,
   divided by ``H * W``; a square reaching past the image is clipped to it (so the last one is the whole image).

Where this differs from RepLKNet's code: their squares start at r = 1 (a centre pixel holding more than t of the
mass reports side 1 here, 3 there) and stop at r = H // 2 - 1 (returning nothing beyond); they use the square's
unclipped side for non-square maps. For square maps and r in 1 .. H // 2 - 1 both give the same side and ratio.
The same ratios on the raw map M (no logarithm) are given too: they do not depend on the scale of the gradients.
"""
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

#: The thresholds RepLKNet, SLaK and UniRepLKNet report.
ERF_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)

Outputs = Union[torch.Tensor, Sequence[torch.Tensor]]


class ErfMap(NamedTuple):
    """The accumulated ERF of a model.

    Attributes:
        map (np.ndarray): M [H, W] (float64), the mean contribution map over the images used.
        num_images (int): Images whose maps were averaged.
        num_skipped (int): Images skipped because their map was not finite.
    """
    map: np.ndarray
    num_images: int
    num_skipped: int


class AreaRatio(NamedTuple):
    """The smallest centred square holding more than a threshold of a map's mass.

    Attributes:
        side (int): Its (unclipped) side ``2r + 1`` in pixels.
        area_ratio (float): Its area, clipped to the map, over the map's area.
    """
    side: int
    area_ratio: float


def select_output(outputs: Outputs, stage: int) -> torch.Tensor:
    """The map ``outputs[stage]`` of a backbone's list of maps (a single tensor is returned as it is).

    Raises:
        IndexError: When ``stage`` does not index the list, naming how many maps there are.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    outputs = list(outputs)
    if not -len(outputs) <= stage < len(outputs):
        raise IndexError(f'stage must index the backbone\'s {len(outputs)} output maps ({-len(outputs)} .. '
                         f'{len(outputs) - 1}), got {stage}')
    return outputs[stage]


def contribution_maps(model: Callable[[torch.Tensor], Outputs], images: torch.Tensor,
                      stage: int = -1) -> torch.Tensor:
    """m(x) of each image of a batch (step 1 of the module docstring), in one forward and backward pass.

    Each image's score depends on that image alone in eval mode (no statistic is shared across the batch), so the
    gradient of the summed scores holds every image's own map.

    Args:
        model (Callable): Maps images [B, 3, H, W] to a feature map [B, C, h, w] or a list of them, in eval mode.
        images (Tensor): Normalised images [B, 3, H, W].
        stage (int): Which map of a list to use. Defaults to -1 (the last, deepest).

    Returns:
        Tensor: [B, H, W], float64.
    """
    if images.dim() != 4:
        raise ValueError(f'images must be a batch [B, C, H, W], got shape {tuple(images.shape)}')
    images = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = select_output(model(images), stage)
        if out.dim() != 4 or out.shape[0] != images.shape[0]:
            raise ValueError(f'the output map must be [B, C, h, w] with B = {images.shape[0]}, got shape '
                             f'{tuple(out.shape)}')
        score = out[:, :, out.shape[2] // 2, out.shape[3] // 2].relu().sum()
        if not score.requires_grad:  # the central pixel does not depend on the images
            return torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.float64)
        (grad, ) = torch.autograd.grad(score, images)
    return grad.relu().sum(dim=1).double()


def contribution_map(model: Callable[[torch.Tensor], Outputs], image: torch.Tensor, stage: int = -1) -> torch.Tensor:
    """m(x) of one image [1, 3, H, W]: :func:`contribution_maps` of a batch of one, [H, W]."""
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f'image must be one image [1, C, H, W], got shape {tuple(image.shape)}')
    return contribution_maps(model, image, stage)[0]


def _batches(images: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive images [1, 3, H, W] concatenated into batches of ``batch_size`` (the last may be smaller)."""
    batch, shape = [], None
    for image in images:
        shape = shape or tuple(image.shape)
        if tuple(image.shape) != shape:
            raise ValueError(f'images must all have one shape: got {tuple(image.shape)} after {shape}')
        batch.append(image)
        if len(batch) == batch_size:
            yield torch.cat(batch)
            batch = []
    if batch:
        yield torch.cat(batch)


def accumulate_erf(model: Callable[[torch.Tensor], Outputs], images: Iterable[torch.Tensor], stage: int = -1,
                   batch_size: int = 1) -> ErfMap:
    """M: the mean of :func:`contribution_map` over ``images`` (steps 1-2 of the module docstring).

    Args:
        model (Callable): As in :func:`contribution_maps`, in eval mode.
        images (Iterable[Tensor]): Normalised images [1, 3, H, W], all of one size (wrap it in a progress bar to
            see it advance).
        stage (int): Which output map. Defaults to -1.
        batch_size (int): Images per forward / backward pass (the maps are the same for any value; larger batches
            use the CPU better and take more memory). Defaults to 1.

    Raises:
        ValueError: When no image gave a finite map, or the images differ in size.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive int, got {batch_size!r}')
    total, used, skipped = None, 0, 0
    for batch in _batches(images, batch_size):
        for grad_map in contribution_maps(model, batch, stage):
            if not torch.isfinite(grad_map).all():
                skipped += 1
                continue
            if total is None:
                total = torch.zeros_like(grad_map)
            total += grad_map
            used += 1
    if not used:
        raise ValueError(f'no image gave a finite ERF map ({skipped} skipped)')
    return ErfMap((total / used).numpy(), used, skipped)


def log_scaled(erf_map: np.ndarray) -> np.ndarray:
    """L = log10(M + 1) (step 3 of the module docstring); divide by its maximum for display."""
    erf_map = np.asarray(erf_map, dtype=np.float64)
    if erf_map.ndim != 2 or (erf_map < 0).any():
        raise ValueError(f'erf_map must be a non-negative 2-D map, got shape {erf_map.shape}')
    return np.log10(erf_map + 1)


def area_ratio(score_map: np.ndarray, threshold: float) -> Optional[AreaRatio]:
    """The smallest centred odd square holding more than ``threshold`` of the map's sum (step 4).

    Args:
        score_map (np.ndarray): A non-negative map [H, W].
        threshold (float): t in (0, 1).

    Returns:
        AreaRatio | None: ``None`` for a map whose sum is zero (no mass to locate).
    """
    score_map = np.asarray(score_map, dtype=np.float64)
    if score_map.ndim != 2 or (score_map < 0).any() or not np.isfinite(score_map).all():
        raise ValueError(f'score_map must be a finite non-negative 2-D map, got shape {score_map.shape}')
    if not 0 < threshold < 1:
        raise ValueError(f'threshold must be in (0, 1), got {threshold!r}')
    height, width = score_map.shape
    integral = np.zeros((height + 1, width + 1))
    integral[1:, 1:] = score_map.cumsum(0).cumsum(1)
    total = integral[-1, -1]
    if total <= 0:
        return None
    cy, cx = height // 2, width // 2
    for r in range(max(cy, height - 1 - cy, cx, width - 1 - cx) + 1):
        top, bottom = max(cy - r, 0), min(cy + r + 1, height)
        left, right = max(cx - r, 0), min(cx + r + 1, width)
        mass = integral[bottom, right] - integral[top, right] - integral[bottom, left] + integral[top, left]
        if mass > threshold * total:
            return AreaRatio(2 * r + 1, (bottom - top) * (right - left) / (height * width))
    # Only rounding can leave the whole map at or below t * total for t < 1: the whole image then.
    return AreaRatio(2 * max(cy, height - 1 - cy, cx, width - 1 - cx) + 1, 1.0)


def area_ratios(erf_map: np.ndarray, thresholds: Sequence[float] = ERF_THRESHOLDS,
                log_scale: bool = True) -> Dict[str, Optional[dict]]:
    """The high-contribution area ratio at each threshold, keyed by the threshold as text (JSON-ready).

    Args:
        erf_map (np.ndarray): M [H, W].
        thresholds (Sequence[float]): Defaults to :data:`ERF_THRESHOLDS`.
        log_scale (bool): Measure on ``log10(M + 1)`` as RepLKNet does (``False``: on M). Defaults to ``True``.

    Returns:
        dict: ``{'0.2': {'side': int, 'area_ratio': float} or None, ...}``.
    """
    scores = log_scaled(erf_map) if log_scale else np.asarray(erf_map, dtype=np.float64)
    found = {}
    for t in thresholds:
        ratio = area_ratio(scores, t)
        found[str(t)] = None if ratio is None else ratio._asdict()
    return found


def display_map(erf_map: np.ndarray) -> np.ndarray:
    """``log10(M + 1)`` divided by its maximum: [H, W] in [0, 1] (all zeros for an all-zero map)."""
    scores = log_scaled(erf_map)
    peak = scores.max()
    return scores / peak if peak > 0 else scores


def format_ratio_table(rows: Dict[str, Dict[str, Optional[dict]]],
                       thresholds: Sequence[float] = ERF_THRESHOLDS) -> List[str]:
    """Lines of a text table: one row per model, the area ratio (and square side) per threshold."""
    header = ['model'] + [f't={t}' for t in thresholds]
    lines = [header]
    for label, ratios in rows.items():
        cells = [label]
        for t in thresholds:
            ratio = ratios.get(str(t))
            cells.append('-' if ratio is None else f'{ratio["area_ratio"]:.4f} ({ratio["side"]} px)')
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return ['  '.join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]

