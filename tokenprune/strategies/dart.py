"""DART (Wen et al., 2025): keep pivot tokens, then the tokens least duplicated with them.

The ``pivots`` highest-scoring tokens are pivots (with the ``key_norm`` score: the L1
norm of each token's key, the paper's default). The rest of the budget is split evenly
over the pivots, in pivot order (best first; the first ``(k - P) mod P`` pivots take one
more token): each pivot keeps, among the tokens not kept yet, those with the lowest
cosine similarity of their ``hidden`` states to its own (first index on ties), so tokens
that duplicate a pivot are the ones dropped. Batched: one ``(B, N)`` cosine row and one
sort per pivot, no N x N matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenprune.cues import Cues
from tokenprune.errors import SpecError
from tokenprune.selection import Selection
from tokenprune.strategies.base import Score, Selector
from tokenprune.strategies.cosine import features
from tokenprune.strategies.ranking import rank_order

__all__ = ["Dart", "KeyNorm"]


@dataclass(frozen=True, repr=False)
class KeyNorm(Score):
    """L1 norm of each candidate's key (DART's pivot criterion)."""

    name = "key_norm"
    requires = frozenset({"keys"})

    def __call__(self, cues: Cues) -> Tensor:
        keys = cues.require("keys", self.name)
        return torch.linalg.vector_norm(keys, ord=1, dim=-1, dtype=torch.promote_types(keys.dtype, torch.float32))


@dataclass(frozen=True, repr=False)
class Dart(Selector):
    """DART: the top ``pivots`` scores, then per pivot the tokens least similar to it.

    Similarity is the cosine of the ``hidden`` cue. With fewer than ``pivots`` tokens
    to keep, the top-k scores are kept. Reported scores: the input scores.
    """

    pivots: int = 8
    name = "dart"
    requires = frozenset({"hidden"})

    def __post_init__(self) -> None:
        if isinstance(self.pivots, bool) or not isinstance(self.pivots, int) or self.pivots < 1:
            raise SpecError(f"dart pivots: expected an int >= 1, got {self.pivots!r}")

    def __call__(self, scores: Tensor, cues: Cues, budget: Tensor) -> Selection:
        hidden = cues.require("hidden", self.name)
        valid = cues.layout.valid
        b, n = scores.shape
        feats = features(hidden, torch.promote_types(hidden.dtype, torch.float32))
        pivots = torch.minimum(budget, torch.full_like(budget, self.pivots))  # (B,)
        ranking = rank_order(scores)
        closed = ~valid
        rank = torch.arange(n, device=scores.device).expand(b, n)
        is_pivot = torch.zeros_like(valid).scatter(1, ranking, rank < pivots.unsqueeze(1))
        closed = closed | is_pivot
        rest = budget - pivots
        share = torch.div(rest, pivots.clamp(min=1), rounding_mode="floor")
        extra = rest - share * pivots
        kept = is_pivot
        for p in range(min(self.pivots, n)):
            # Pivot p of each sample (a sample with fewer pivots takes 0 tokens for it).
            take = torch.where(p < pivots, share + (p < extra).long(), torch.zeros_like(share))
            cosine = feats.cosine_to(ranking[:, p])
            order = rank_order(-cosine.masked_fill(closed, float("inf")))
            chosen = torch.zeros_like(valid).scatter(1, order, rank < take.unsqueeze(1))
            kept = kept | chosen
            closed = closed | chosen
        return Selection.from_mask(kept, scores)
