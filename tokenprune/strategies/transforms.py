"""Transforms: ``(B, N)`` scores -> ``(B, N)`` scores, within each region of the layout."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tokenprune._layout_memo import layout_memo
from tokenprune.cues import Cues
from tokenprune.errors import SpecError
from tokenprune.layout import Layout
from tokenprune.strategies.base import Transform
from tokenprune.strategies.grid import neighbors, square_offsets

__all__ = ["AvgPool", "Gaussian", "gaussian_map"]


def gaussian_map(layout: Layout, sigma: float | None = None) -> Tensor:
    """``(B, N)`` centre-correction factor of each token (1 for tokens without a place).

    For a region of h x w cells, rows sit on ``linspace(-h/2, h/2, h)`` and columns on
    ``linspace(-w/2, w/2, w)``; the factor is ``exp(-(y^2 / (2 sy^2) + x^2 / (2 sx^2)))``
    divided by its maximum over the region. ``sigma=None`` uses ``sy = h/2, sx = w/2``:
    for LLaVA-1.5's 24 x 24 grid that is the authors' ``sigma = 12`` on ``linspace(-12, 12, 24)``.
    """
    # Both axes at once on (B, N, 2) = (row, col) tensors: few ops, as this runs at
    # every prefill. A token's size on an axis is its region's, 0 without a region.
    b, r = layout.region_shapes.shape[:2]
    shapes = torch.cat([layout.region_shapes, layout.region_shapes.new_zeros(b, 1, 2)], dim=1)
    region = torch.where(layout.regions >= 0, layout.regions, r)
    size = torch.gather(shapes, 1, region.unsqueeze(-1).expand(-1, -1, 2))
    size_f = size.to(torch.float64)
    wide = size > 1
    # Cell i of an axis of n cells sits at -n/2 + i * n / (n - 1) (linspace); the centre
    # cell (n - 1) // 2 has the smallest |coordinate|, which the max-division removes.
    step = torch.where(wide, size_f / (size_f - 1).clamp(min=1), 0.0)
    half = -size_f / 2
    coord = torch.where(wide, half + torch.nan_to_num(layout.coords).long().to(torch.float64) * step, 0.0)
    centre = torch.where(wide, (half + torch.div(size - 1, 2, rounding_mode="floor").to(torch.float64) * step).abs(), 0.0)
    spread = size_f / 2 if sigma is None else torch.full_like(size_f, float(sigma))
    spread = spread.clamp(min=1e-12)
    # coord^2 >= centre^2 exactly; clamping the rounding error keeps a tiny sigma from
    # turning -1e-17 / sigma^2 into exp(+huge) = inf (the centre's factor is 1, others -> 0).
    exponent = ((coord**2 - centre**2) / (2 * spread**2)).clamp(min=0)
    factor = torch.exp(-(exponent[..., 0] + exponent[..., 1]))
    return torch.where(layout.placed, factor, 1.0)


@dataclass(frozen=True, repr=False)
class Gaussian(Transform):
    """AdaptPrune's distribution correction: multiply scores by a centred Gaussian per region.

    See `gaussian_map`. ``sigma`` in cells, or None for half the region side.
    """

    sigma: float | None = None
    name = "gaussian"

    def __post_init__(self) -> None:
        if self.sigma is not None and not (isinstance(self.sigma, (int, float)) and not isinstance(self.sigma, bool) and self.sigma > 0 and math.isfinite(self.sigma)):
            raise SpecError(f"gaussian sigma: expected a positive number of cells or None, got {self.sigma!r}")

    def __call__(self, scores: Tensor, cues: Cues) -> Tensor:
        layout = cues.layout
        factor = layout_memo(
            layout, ("gaussian", self.sigma, scores.dtype), lambda: gaussian_map(layout, self.sigma).to(scores.dtype)
        )
        return scores * factor


def _useful_size(size: int, region_shapes: Tensor) -> int:
    """``size``, capped where a larger square adds no offset that stays inside a region.

    An offset longer than a region's longest side leaves it, so the cap changes no
    result; it keeps ``size=10001`` from building a 10^8-offset window per token.
    """
    side = int(region_shapes.max()) if region_shapes.numel() else 1
    return min(size, 2 * max(side, 1) - 1)


@dataclass(frozen=True, repr=False)
class AvgPool(Transform):
    """``size x size`` stride-1 average of scores inside each region.

    Cells outside the region do not count (no zero padding). Tokens without a place keep
    their score.
    """

    size: int = 3
    name = "avg_pool"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1 or self.size % 2 == 0:
            raise SpecError(f"avg_pool size: expected an odd int >= 1, got {self.size!r}")

    def __call__(self, scores: Tensor, cues: Cues) -> Tensor:
        size = _useful_size(self.size, cues.layout.region_shapes)
        nbr = neighbors(cues.layout, square_offsets(size))  # (B, N, W)
        present = nbr >= 0
        values = torch.gather(scores, 1, nbr.clamp(min=0).flatten(1)).view_as(nbr)
        total = torch.where(present, values, torch.zeros_like(values)).sum(-1)
        count = present.sum(-1)
        pooled = total / count.clamp(min=1).to(scores.dtype)
        return torch.where(count > 0, pooled, scores)
