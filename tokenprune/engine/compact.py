"""Shorten a batch of sequences to the tokens each sample keeps.

Pure tensor math. Kept tokens stay in their original order and are right-aligned, so a
left-padded batch stays left-padded and every sample's last prompt token stays last;
the freed slots at the front are padding. Tokens keep their original positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Compaction", "compaction", "scatter_candidates"]


@dataclass(frozen=True)
class Compaction:
    """Which original position each slot of the shortened sequence holds.

    Attributes:
        source: ``(B, L')`` long, original position of each slot, -1 for padding slots.
        mask: ``(B, L')`` bool, True for slots that hold a token.
    """

    source: Tensor
    mask: Tensor

    @property
    def length(self) -> int:
        """L', the shortened length."""
        return self.source.shape[1]

    def gather(self, x: Tensor) -> Tensor:
        """Slots of ``x (B or 1, L, ...)`` as ``(B, L', ...)``; padding slots repeat
        position 0 (masked out everywhere they could be read)."""
        index = self.source.clamp(min=0)
        x = x.expand(index.shape[0], *x.shape[1:])
        index = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
        return x.gather(1, index)

    def positions(self, position_ids: Tensor) -> Tensor:
        """``position_ids (B or 1, L)`` of the slots, ``(B, L')``; padding slots get 1,
        as ``generate()`` gives padding."""
        return self.gather(position_ids).masked_fill(~self.mask, 1)


def compaction(keep: Tensor) -> Compaction:
    """The shortest right-aligned layout that holds every kept token.

    Args:
        keep: ``(B, L)`` bool, tokens that stay.

    Returns:
        `Compaction` with L' = the most tokens any sample keeps.
    """
    length = keep.shape[1]
    kept = int(keep.sum(dim=1).max()) if keep.numel() else 0
    position = torch.arange(length, device=keep.device).expand_as(keep)
    # Sorting puts dropped tokens (-1) first and kept ones in order; the tail holds them all.
    source = torch.where(keep, position, torch.full_like(position, -1)).sort(dim=1).values
    source = source[:, length - kept :]
    return Compaction(source=source, mask=source >= 0)


def scatter_candidates(candidates: Tensor, positions: Tensor, length: int) -> Tensor:
    """Spread a per-candidate bool over the sequence.

    Args:
        candidates: ``(B, N)`` bool, e.g. a `Selection`'s mask.
        positions: ``(B, N)`` long, each candidate's sequence position, -1 for padding.
        length: L.

    Returns:
        ``(B, L)`` bool, True where a True candidate sits.
    """
    out = torch.zeros(positions.shape[0], length + 1, dtype=torch.bool, device=positions.device)
    # Padding candidates go to the spare last column, which is dropped.
    index = torch.where(positions >= 0, positions, torch.full_like(positions, length))
    out.scatter_(1, index, candidates & (positions >= 0))
    return out[:, :length]
