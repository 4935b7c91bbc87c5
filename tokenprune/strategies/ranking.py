"""Ordering tokens by (tier, score) with the first-index rule on ties."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rank_order"]


def rank_order(scores: Tensor, tier: Tensor | None = None) -> Tensor:
    """Token indices from most to least preferred.

    Args:
        scores: ``(B, N)``, higher first; equal scores keep index order.
        tier: optional ``(B, N)`` long, lower tiers come first (ties broken by score).

    Returns:
        ``(B, N)`` long permutation per row.
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    if tier is None:
        return order
    by_tier = torch.sort(torch.gather(tier, 1, order), dim=1, stable=True).indices
    return torch.gather(order, 1, by_tier)
