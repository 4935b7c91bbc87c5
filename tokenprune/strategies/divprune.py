"""DivPrune (Alvar et al., CVPR 2025): the greedy max-min diversity selection.

With the cosine distance ``d(i, j) = 1 - cos(x_i, x_j)`` of the token features, the
first kept token is the one whose nearest other token is farthest; each next one is the
token whose nearest kept token is farthest (first index on ties). Batched; no N x N
matrix: the first step's nearest-neighbour distances are computed in row blocks, and
each step updates a ``(B, N)`` distance-to-the-kept-set with one matrix-vector product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenprune.cues import Cues
from tokenprune.selection import Selection
from tokenprune.strategies.base import Selector
from tokenprune.strategies.cosine import Features, features, nearest_other_distance
from tokenprune.strategies.greedy import kept_mask, run_greedy

__all__ = ["DivPrune", "first_pick"]


def first_pick(nearest: Tensor, partner: Tensor, valid: Tensor) -> Tensor:
    """``(B,)`` long: the valid token whose nearest other token is farthest.

    Two mutual nearest neighbours share that distance, so the maximum is always a tie
    of such a pair: the lower index wins (computed from the pair, not from two float
    values that may differ in the last bit).

    Args:
        nearest: ``(B, N)`` distance to the nearest other valid token; partner: its index.
        valid: ``(B, N)`` bool.
    """
    best = nearest.masked_fill(~valid, float("-inf")).argmax(dim=1, keepdim=True)
    other = torch.gather(partner, 1, best)
    mutual = (torch.gather(partner, 1, other) == best) & torch.isfinite(torch.gather(nearest, 1, best))
    return torch.where(mutual, torch.minimum(best, other), best).squeeze(1)


def _divprune_step(i: int, state: tuple[Tensor, Tensor], x: Tensor, inv_norm: Tensor) -> tuple:
    """One greedy step after the first (``i`` unused).

    Args:
        state: ``to_kept (B, N)`` distance of each token to its nearest kept token and
            ``closed (B, N)`` bool, tokens kept or padding.
        x, inv_norm: the token `Features`.
    """
    to_kept, closed = state
    kept = to_kept.masked_fill(closed, float("-inf")).argmax(dim=1)
    closed = closed.scatter(1, kept.unsqueeze(1), True)
    distance = 1.0 - Features(x, inv_norm).cosine_to(kept)
    return (torch.minimum(to_kept, distance), closed), kept



@dataclass(frozen=True, repr=False)
class DivPrune(Selector):
    """DivPrune: keep the most diverse tokens (greedy max-min cosine distance of ``hidden``).

    Reads the ``hidden`` cue (at ``layer="input"``, the projected visual embeddings, as the
    authors' code does) and ignores the scores. Reported scores: each token's cosine
    distance to its nearest kept token.
    """

    name = "divprune"
    requires = frozenset({"hidden"})

    def __call__(self, scores: Tensor, cues: Cues, budget: Tensor) -> Selection:
        hidden = cues.require("hidden", self.name)
        feats = features(hidden, torch.promote_types(hidden.dtype, torch.float32))
        valid = cues.layout.valid
        nearest, partner = nearest_other_distance(feats, valid)
        first = first_pick(nearest, partner, valid)
        to_kept = 1.0 - feats.cosine_to(first)
        closed = (~valid).scatter(1, first.unsqueeze(1), True)
        rest, (to_kept, _) = run_greedy(_divprune_step, (to_kept, closed), (budget - 1).clamp(min=0), feats.x, feats.inv_norm)
        order = torch.cat([first.unsqueeze(1), rest], dim=1)
        mask = kept_mask(order, budget, cues.num_tokens)
        return Selection.from_mask(mask, to_kept.masked_fill(~valid, float("-inf")))
