"""How a model's time grows with the input: a per-call cost that does not depend on the image size, plus a cost per
pixel.

A backbone's time per call is about ``fixed + per_pixel * pixels``: the per-pixel part is the convolutions and
elementwise passes over the feature maps; the fixed part is what every call pays whatever the image (dispatching
its operators, folding weights, reading every weight at least once). Two backbones can do equally well per pixel and
still differ at a given size by their fixed parts, which shrinking kernels' times cannot fix; the fit over several
sizes, measured side by side, says which part a ratio at one size comes from.
"""
from dataclasses import dataclass
from typing import Sequence

#: How the report states the fit.
SIZE_SCALING_DEFINITION = ('least-squares fit of time = fixed + per-megapixel cost * megapixels over the measured '
                           'sizes (one size after another in one process, the models interleaved at each size)')


@dataclass(frozen=True)
class SizeScaling:
    """``seconds ~ fixed_s + per_megapixel_s * megapixels`` over the measured sizes, and the largest residual."""
    fixed_s: float
    per_megapixel_s: float
    max_residual_s: float

    def at(self, pixels: float) -> float:
        """The fitted time of one call on ``pixels`` pixels."""
        return self.fixed_s + self.per_megapixel_s * pixels / 1e6


def size_scaling(pixels: Sequence[float], seconds: Sequence[float]) -> SizeScaling:
    """Fit ``seconds = fixed + per_megapixel * pixels / 1e6`` (ordinary least squares) to one model's times.

    Raises:
        ValueError: Fewer than two distinct sizes, or ``pixels`` and ``seconds`` of different lengths.
    """
    if len(pixels) != len(seconds):
        raise ValueError(f'size_scaling: pixels and seconds must have the same length, got {len(pixels)} and '
                         f'{len(seconds)}')
    if len(set(pixels)) < 2:
        raise ValueError(f'size_scaling: needs times at two or more distinct sizes, got pixels {list(pixels)}')
    xs = [p / 1e6 for p in pixels]
    mean_x, mean_y = sum(xs) / len(xs), sum(seconds) / len(seconds)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, seconds))
             / sum((x - mean_x)**2 for x in xs))
    fixed = mean_y - slope * mean_x
    residual = max(abs(fixed + slope * x - y) for x, y in zip(xs, seconds))
    return SizeScaling(fixed, slope, residual)
