"""Neighbourhoods on region grids, shared by spatial strategies.

Tokens are looked up by (region, row, col) through a per-sample cell table, so any
layout works: row-major or not, with separators, ragged. Nothing is N x N.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from tokenprune.layout import Layout, _cell_ids, region_values

__all__ = [
    "CellGrid",
    "cell_grid",
    "disc_offsets",
    "frame_neighbors",
    "frame_offsets",
    "lookup",
    "neighbors",
    "square_offsets",
]


def disc_offsets(radius: float) -> Tensor:
    """``(W, 2)`` long (drow, dcol) with ``drow^2 + dcol^2 <= radius^2``, (0, 0) first."""
    r = math.floor(radius)
    d = torch.arange(-r, r + 1)
    grid = torch.cartesian_prod(d, d)
    grid = grid[(grid**2).sum(-1) <= radius**2]
    first = (grid == 0).all(-1)
    return torch.cat([grid[first], grid[~first]])


def square_offsets(size: int) -> Tensor:
    """``(size^2, 2)`` long offsets of a centred ``size x size`` square (size odd)."""
    h = size // 2
    d = torch.arange(-h, h + 1)
    return torch.cartesian_prod(d, d)


class CellGrid(NamedTuple):
    """Per-sample lookup from (region, row, col) to token.

    Attributes:
        table: ``(B, C + 1)`` long, token index of each cell of the concatenated region
            grids (row-major per region), -1 for an empty cell; the last column is a
            scratch cell that is always -1.
        place: ``(B, N, 5)`` long per token: (cell, row, col, region height, region
            width); cell is -1 for tokens without a place and for padding.
    """

    table: Tensor
    place: Tensor


def cell_grid(layout: Layout) -> CellGrid:
    """Build the `CellGrid` of ``layout`` (O(B * N) memory)."""
    b, n = layout.regions.shape
    device = layout.device
    shapes = layout.region_shapes
    area = shapes[..., 0] * shapes[..., 1]
    cells = _cell_ids(layout)
    scratch = int(area.sum(1).max()) if b and shapes.shape[1] else 0
    table = torch.full((b, scratch + 1), -1, dtype=torch.long, device=device)
    placed = cells >= 0
    token = torch.arange(n, device=device).expand(b, n)
    table.scatter_(1, torch.where(placed, cells, scratch), torch.where(placed, token, -1))
    table[:, -1] = -1  # the scratch cell absorbed every unplaced token
    place = torch.stack(
        [
            cells,
            torch.nan_to_num(layout.coords[..., 0]).long(),
            torch.nan_to_num(layout.coords[..., 1]).long(),
            region_values(layout, shapes[..., 0]),
            region_values(layout, shapes[..., 1]),
        ],
        dim=-1,
    )
    return CellGrid(table, place)


def lookup(grid: CellGrid, tokens: Tensor, offsets: Tensor) -> Tensor:
    """Token at each offset from each of ``tokens``, inside the same region.

    Args:
        grid: from `cell_grid`.
        tokens: ``(B, M)`` long token indices.
        offsets: ``(W, 2)`` long (drow, dcol).

    Returns:
        ``(B, M, W)`` long neighbour index, -1 where the offset leaves the region, lands
        on an empty cell, or the token has no place.
    """
    b, m = tokens.shape
    place = torch.gather(grid.place, 1, tokens.unsqueeze(-1).expand(b, m, 5))
    cell, row, col, height, width = (place[..., i : i + 1] for i in range(5))
    dr, dc = offsets[:, 0], offsets[:, 1]
    r, c = row + dr, col + dc
    inside = (cell >= 0) & (r >= 0) & (r < height) & (c >= 0) & (c < width)
    scratch = grid.table.shape[1] - 1
    target = torch.where(inside, cell + dr * width + dc, scratch)
    return torch.gather(grid.table, 1, target.flatten(1)).view(b, m, offsets.shape[0])


def neighbors(layout: Layout, offsets: Tensor, chunk: int = 2048) -> Tensor:
    """Index of the token at each offset from every token, inside the same region.

    Args:
        layout: B samples of N tokens.
        offsets: ``(W, 2)`` long (drow, dcol).

    Returns:
        ``(B, N, W)`` long: the neighbour's token index, or -1 where the offset leaves
        the region, lands on an empty cell, or the token has no place / is padding.
    """
    b, n = layout.regions.shape
    grid = cell_grid(layout)
    offsets = offsets.to(layout.device)
    tokens = torch.arange(n, device=layout.device).expand(b, n)
    # Chunks of tokens bound the (B, chunk, W) temporaries (N = 10,000 stays small).
    parts = [lookup(grid, tokens[:, lo : lo + chunk], offsets) for lo in range(0, n, chunk)]
    return torch.cat(parts, dim=1) if parts else torch.zeros(b, 0, offsets.shape[0], dtype=torch.long)


def frame_offsets(reach: int) -> Tensor:
    """``(2 * reach,)`` long frame offsets ``-reach..-1, 1..reach``."""
    d = torch.arange(1, reach + 1)
    return torch.cat([-d.flip(0), d])


def frame_neighbors(layout: Layout, grid: CellGrid, reach: int) -> Tensor:
    """The token at the same (row, col) in the frames up to ``reach`` away, per token.

    Frames are the regions with ``layout.region_frames >= 0``; two frames belong to one
    video when their ``region_images`` agree (all of a sample's frames without it).

    Returns:
        ``(B, N, 2 * reach)`` long, for the frame offsets of `frame_offsets`: the token
        index, or -1 where the token is no video frame's, that frame does not exist, the
        cell lies outside it or is empty.
    """
    b, n = layout.regions.shape
    frames = layout.region_frames
    if frames is None or reach == 0 or layout.num_regions == 0:
        return torch.full((b, n, 0 if frames is None else 2 * reach), -1, dtype=torch.long, device=layout.device)
    videos = layout.region_images if layout.region_images is not None else torch.zeros_like(frames)
    dt = frame_offsets(reach).to(layout.device)
    is_frame = frames >= 0
    # match[b, r, s, k]: region s is frame (frame of r) + dt[k] of r's video.
    match = (
        (videos[:, :, None, None] == videos[:, None, :, None])
        & (frames[:, None, :, None] == frames[:, :, None, None] + dt)
        & is_frame[:, :, None, None]
        & is_frame[:, None, :, None]
    )
    target = torch.where(match.any(2), match.long().argmax(2), -1)  # (B, R, K)
    shapes = layout.region_shapes
    area = shapes[..., 0] * shapes[..., 1]
    base = torch.cumsum(area, dim=1) - area
    cell, row, col = grid.place[..., 0:1], grid.place[..., 1:2], grid.place[..., 2:3]
    region = torch.where(cell >= 0, layout.regions.unsqueeze(-1), 0)
    to = torch.gather(target, 1, region.expand(b, n, dt.numel()))  # (B, N, K)
    safe = to.clamp(min=0)
    height = torch.gather(shapes[..., 0], 1, safe.flatten(1)).view_as(to)
    width = torch.gather(shapes[..., 1], 1, safe.flatten(1)).view_as(to)
    start = torch.gather(base, 1, safe.flatten(1)).view_as(to)
    inside = (cell >= 0) & (to >= 0) & (row < height) & (col < width)
    scratch = grid.table.shape[1] - 1
    target_cell = torch.where(inside, start + row * width + col, scratch)
    return torch.gather(grid.table, 1, target_cell.flatten(1)).view_as(to)
