"""Apply a `Selection`'s merges (VisionZip's contextual tokens) to the sequence it prunes.

Pure tensor math: the engine calls it at a prune point, before the kept tokens are
gathered, so a merged token enters the next layers (and their KV cache) at its target's
slot and position.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["merge_into_kept"]


def merge_into_kept(hidden: Tensor, merge_into: Tensor, merge_weight: Tensor, slots: Tensor) -> Tensor:
    """``hidden`` with each kept candidate's slot replaced by its merged value.

    Args:
        hidden: ``(B, L, H)`` the sequence at the prune point.
        merge_into: ``(B, N)`` long, the kept candidate absorbing each candidate (itself
            for a kept one, -1 for a dropped one), as in `Selection.merge_into`.
        merge_weight: ``(B, N)`` float weight of each candidate in its group's sum.
        slots: ``(B, N)`` long, each candidate's index in ``hidden`` (-1: padding).

    Returns:
        ``(B, L, H)``: kept candidate t's slot holds ``sum(w_j * hidden[slot_j])`` over the
        candidates j merged into t (a kept candidate alone in its group: ``1.0 * x``, the
        same bits); every other slot is unchanged.
    """
    b, n = merge_into.shape
    h = hidden.shape[-1]
    member = (merge_into >= 0) & (slots >= 0)
    values = hidden.gather(1, slots.clamp(min=0).unsqueeze(-1).expand(b, n, h))
    weighted = values * merge_weight.to(hidden.dtype).unsqueeze(-1)
    weighted = weighted.masked_fill(~member.unsqueeze(-1), 0)
    sums = torch.zeros_like(values).scatter_add(1, merge_into.clamp(min=0).unsqueeze(-1).expand(b, n, h), weighted)
    kept = member & (merge_into == torch.arange(n, device=merge_into.device))
    target_slots = torch.where(kept, slots, torch.full_like(slots, hidden.shape[1]))
    # Write the kept candidates' sums back; other candidates go to a scratch slot past the end.
    padded = torch.cat([hidden, hidden.new_zeros(b, 1, h)], dim=1)
    padded = padded.scatter(1, target_slots.unsqueeze(-1).expand(b, n, h), sums)
    return padded[:, :-1]
