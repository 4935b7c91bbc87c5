"""Shorten a batch of sequences to the tokens each sample keeps.

Pure tensor math. Kept tokens stay in their original order; a left-padded batch stays
left-padded (kept tokens right-aligned, so every sample's last prompt token stays last)
and a right-padded one stays right-padded (kept tokens left-aligned, so its real tokens
keep their slots when nothing is dropped). Tokens keep their original positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Compaction", "compaction", "is_right_padded", "last_real", "scatter_candidates"]


@dataclass(frozen=True)
class Compaction:
    """Which slot of the current sequence each slot of the shortened sequence holds.

    Attributes:
        source: ``(B, L')`` long, the current slot each new slot takes its token from,
            -1 for padding slots.
        mask: ``(B, L')`` bool, True for slots that hold a token.
    """

    source: Tensor
    mask: Tensor

    @property
    def length(self) -> int:
        """L', the shortened length."""
        return self.source.shape[1]

    def gather(self, x: Tensor, dim: int = 1) -> Tensor:
        """``x`` shortened along its sequence dimension ``dim``.

        The batch dimension is the one just before ``dim`` and may be 1 (shared by the
        batch): ``(B or 1, L, ...)`` with ``dim=1``; position ids ``(3, B, L)`` with
        ``dim=-1``; rotary tables ``(B, L, d)`` or ``(3, B, L, d)`` with ``dim=-2``.
        Padding slots repeat slot 0 (masked out everywhere they could be read).
        """
        dim = dim % x.dim()
        batch = self.source.shape[0]
        index = self.source.clamp(min=0)
        shape = list(x.shape)
        shape[dim - 1] = batch
        x = x.expand(*shape)
        view = [1] * x.dim()
        view[dim - 1], view[dim] = batch, self.length
        shape[dim] = self.length
        return x.gather(dim, index.view(view).expand(*shape))

    def positions(self, position_ids: Tensor) -> Tensor:
        """``position_ids (..., B or 1, L)`` of the slots, ``(..., B, L')``; padding slots get
        1, as ``generate()`` gives padding."""
        return self.gather(position_ids, dim=-1).masked_fill(~self.mask, 1)


def compaction(keep: Tensor, right_padded: bool = False) -> Compaction:
    """The shortest layout that holds every kept token, in order.

    Args:
        keep: ``(B, L)`` bool, tokens that stay.
        right_padded: put the padding at the end (kept tokens left-aligned) instead of
            the front.

    Returns:
        `Compaction` with L' = the most tokens any sample keeps.
    """
    length = keep.shape[1]
    kept = int(keep.sum(dim=1).max()) if keep.numel() else 0
    slot = torch.arange(length, device=keep.device).expand_as(keep)
    if right_padded:
        # Dropped tokens sort last (as L); the head holds the kept ones in order.
        source = torch.where(keep, slot, torch.full_like(slot, length)).sort(dim=1).values
        source = source[:, :kept].masked_fill(source[:, :kept] == length, -1)
    else:
        # Dropped tokens (-1) sort first; the tail holds the kept ones in order.
        source = torch.where(keep, slot, torch.full_like(slot, -1)).sort(dim=1).values
        source = source[:, length - kept :]
    return Compaction(source=source, mask=source >= 0)


def is_right_padded(token_mask: Tensor) -> bool:
    """True if some sample of ``token_mask (B, L)`` ends with padding and none starts with it."""
    return bool((~token_mask[:, -1]).any() & token_mask[:, 0].all()) if token_mask.numel() else False


def last_real(token_mask: Tensor) -> Tensor:
    """``(B,)`` long: the slot of each sample's last real token in ``token_mask (B, L)``."""
    length = token_mask.shape[1]
    return length - 1 - token_mask.flip(1).to(torch.uint8).argmax(dim=1)


def scatter_candidates(candidates: Tensor, slots: Tensor, length: int) -> Tensor:
    """Spread a per-candidate bool over the sequence.

    Args:
        candidates: ``(B, N)`` bool, e.g. a `Selection`'s mask.
        slots: ``(B, N)`` long, each candidate's slot in the sequence, -1 for padding.
        length: L.

    Returns:
        ``(B, L)`` bool, True where a True candidate sits.
    """
    out = torch.zeros(slots.shape[0], length + 1, dtype=torch.bool, device=slots.device)
    # Padding candidates go to the spare last column, which is dropped.
    index = torch.where(slots >= 0, slots, torch.full_like(slots, length))
    out.scatter_(1, index, candidates & (slots >= 0))
    return out[:, :length]
