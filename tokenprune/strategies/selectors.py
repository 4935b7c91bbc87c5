"""Rank-based selectors: ``top_k``, ``skip``, ``grid_max``, ``grid_random`` and ``vtw``.

Each orders the valid candidates (first index wins ties) and keeps the first
``budget[b]`` of sample b. Padding scores are -inf and rank last.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenprune.cues import Cues
from tokenprune.errors import SpecError
from tokenprune.layout import Layout, region_values
from tokenprune.selection import Selection
from tokenprune.strategies.base import Selector
from tokenprune.strategies.ranking import rank_order

__all__ = ["Drop", "GridMax", "GridRandom", "Skip", "TopK", "grid_cells"]


def _positive_int(arg: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{arg}: expected an int >= 1, got {value!r}")
    return value


@dataclass(frozen=True, repr=False)
class TopK(Selector):
    """Keep the highest-scoring tokens (FastV's selection)."""

    name = "top_k"

    def __call__(self, scores: Tensor, cues: Cues, budget: Tensor) -> Selection:
        return Selection.from_ranking(rank_order(scores), budget, scores)


@dataclass(frozen=True, repr=False)
class Skip(Selector):
    """Every ``stride``-th token of the ranking: every other token of the top 2k.

    With keep k that is the paper's "every other token of the top 20%" at keep 10%.
    Beyond the top ``stride * k`` it continues with the skipped ranks, best first.
    """

    stride: int = 2
    name = "skip"

    def __post_init__(self) -> None:
        _positive_int("skip stride", self.stride)

    def __call__(self, scores: Tensor, cues: Cues, budget: Tensor) -> Selection:
        order = rank_order(scores)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
        tier = torch.where(cues.layout.valid, rank % self.stride, torch.full_like(rank, self.stride))
        return Selection.from_ranking(rank_order(-rank.to(scores.dtype), tier), budget, scores)


def grid_cells(layout: Layout, cell: int) -> Tensor:
    """``(B, N)`` long id of the ``cell x cell`` block of each placed token (blocks tile
    each region from its top-left; edge blocks may be smaller); -1 without a place."""
    shapes = layout.region_shapes
    blocks_h = torch.div(shapes[..., 0] + cell - 1, cell, rounding_mode="floor")
    blocks_w = torch.div(shapes[..., 1] + cell - 1, cell, rounding_mode="floor")
    count = blocks_h * blocks_w
    base = torch.cumsum(count, dim=1) - count
    pos = torch.nan_to_num(layout.coords).long()
    ids = (
        region_values(layout, base)
        + torch.div(pos[..., 0], cell, rounding_mode="floor") * region_values(layout, blocks_w)
        + torch.div(pos[..., 1], cell, rounding_mode="floor")
    )
    return torch.where(layout.placed, ids, torch.full_like(ids, -1))


def _block_winners(key: Tensor, blocks: Tensor) -> Tensor:
    """``(B, N)`` bool: the first token with the largest ``key`` in each block."""
    b, n = key.shape
    # Block ids count the blocks of every region, occupied or not, so a sparse layout can
    # have ids >= N: size the groups from the largest id. Unplaced tokens share a scratch
    # group after it.
    scratch = int(blocks.max()) + 1 if blocks.numel() else 0
    groups = scratch + 1
    block = torch.where(blocks >= 0, blocks, torch.full_like(blocks, scratch))
    best = torch.full((b, groups), float("-inf"), dtype=key.dtype, device=key.device)
    best = best.scatter_reduce(1, block, key, reduce="amax", include_self=True)
    is_best = key == torch.gather(best, 1, block)
    index = torch.arange(n, device=key.device).expand(b, n)
    first = torch.full((b, groups), n, dtype=torch.long, device=key.device)
    first = first.scatter_reduce(1, block, torch.where(is_best, index, n), reduce="amin", include_self=True)
    return (torch.gather(first, 1, block) == index) & (blocks >= 0)


def _grid_select(scores: Tensor, key: Tensor, layout: Layout, cell: int, budget: Tensor) -> Selection:
    winners = _block_winners(key, grid_cells(layout, cell))
    # Block winners first (by score), then the other valid tokens (by score), padding last.
    tier = torch.where(winners, 0, torch.where(layout.valid, 1, 2))
    return Selection.from_ranking(rank_order(scores, tier), budget, scores)


@dataclass(frozen=True, repr=False)
class GridMax(Selector):
    """Best token of each ``cell x cell`` block of each region, then the top k of those
    (the paper's max-pooling 3x3 baseline)."""

    cell: int = 3
    name = "grid_max"

    def __post_init__(self) -> None:
        _positive_int("grid_max cell", self.cell)

    def __call__(self, scores: Tensor, cues: Cues, budget: Tensor) -> Selection:
        return _grid_select(scores, scores, cues.layout, self.cell, budget)


@dataclass(frozen=True, repr=False)
class GridRandom(Selector):
    """One random token of each ``cell x cell`` block (from ``cues.generator``), then the
    top k of those by score (the paper's "Random 3x3" baseline)."""

    cell: int = 3
    name = "grid_random"

    def __post_init__(self) -> None:
        _positive_int("grid_random cell", self.cell)

    def __call__(self, scores: Tensor, cues: Cues, budget: Tensor) -> Selection:
        draw = torch.rand(scores.shape, generator=cues.generator, device=scores.device, dtype=scores.dtype)
        return _grid_select(scores, draw, cues.layout, self.cell, budget)


@dataclass(frozen=True, repr=False)
class Drop(Selector):
    """VTW: keep no candidate at all (every visual token leaves from the pruning layer)."""

    name = "vtw"
    uses_budget = False

    def __call__(self, scores: Tensor, cues: Cues, budget: Tensor) -> Selection:
        mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        return Selection.from_mask(mask, scores)
