"""Neighbourhoods on region grids, shared by spatial strategies.

Tokens are looked up by (region, row, col) through a per-sample cell table, so any
layout works: row-major or not, with separators, ragged. Nothing is N x N.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tokenprune.layout import Layout, _cell_ids

__all__ = ["disc_offsets", "neighbors", "square_offsets"]


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


def neighbors(layout: Layout, offsets: Tensor, chunk: int = 2048) -> Tensor:
    """Index of the token at each offset from each token, inside the same region.

    Args:
        layout: B samples of N tokens.
        offsets: ``(W, 2)`` long (drow, dcol).

    Returns:
        ``(B, N, W)`` int32: the neighbour's token index, or -1 where the offset leaves
        the region, lands on an empty cell, or the token has no place / is padding.
    """
    b, n = layout.regions.shape
    device = layout.device
    offsets = offsets.to(device)
    shapes = layout.region_shapes
    area = shapes[..., 0] * shapes[..., 1]
    cells = _cell_ids(layout)
    table = torch.full((b, int(area.sum(1).max()) + 1 if b else 1), -1, dtype=torch.long, device=device)
    placed = cells >= 0
    token = torch.arange(n, device=device).expand(b, n)
    table.scatter_(1, torch.where(placed, cells, table.shape[1] - 1), torch.where(placed, token, -1))
    table[:, -1] = -1  # the scratch cell absorbs unplaced tokens
    region = layout.regions.clamp(min=0)
    height = torch.gather(shapes[..., 0], 1, region).unsqueeze(-1)
    width = torch.gather(shapes[..., 1], 1, region).unsqueeze(-1)
    row = torch.nan_to_num(layout.positions[..., 0]).long().unsqueeze(-1)
    col = torch.nan_to_num(layout.positions[..., 1]).long().unsqueeze(-1)
    dr, dc = offsets[:, 0], offsets[:, 1]
    out = torch.empty(b, n, offsets.shape[0], dtype=torch.int32, device=device)
    # Chunks of tokens bound the (B, chunk, W) int64 temporaries (N = 10,000 stays small).
    for lo in range(0, n, chunk):
        part = slice(lo, lo + chunk)
        r, c = row[:, part] + dr, col[:, part] + dc
        inside = placed[:, part].unsqueeze(-1) & (r >= 0) & (r < height[:, part]) & (c >= 0) & (c < width[:, part])
        cell = torch.where(inside, cells[:, part].unsqueeze(-1) + dr * width[:, part] + dc, table.shape[1] - 1)
        out[:, part] = torch.gather(table, 1, cell.flatten(1)).view_as(cell).to(torch.int32)
    return out
