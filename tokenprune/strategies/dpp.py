"""CDPruner's selection (Zhang et al., 2025): greedy MAP inference of a conditional DPP.

The kernel is ``L = diag(q) S diag(q)``: ``S`` the cosine similarity of the token
features, ``q`` the scores (CDPruner's instruction relevance). Greedy MAP inference in
the fast Cholesky-update form (Chen et al., NeurIPS 2018): with ``d_i^2 = L_ii``,
repeat: keep ``j = argmax d^2`` among the tokens not kept (first index on ties);
``e = (L_j - c_j^T C) / d_j``; append ``e`` to ``C``; ``d^2 -= e^2``. Gains at or below
100 machine epsilons of the largest initial gain count as exhausted (more tokens kept
than the features' rank): once no token has more, the rest are kept by quality
(highest first), contributing ``e = 0``.

Batched, no N x N kernel: each step computes the row ``L_j`` from the features
with one matrix-vector product, and ``C`` holds ``(B, k, N)``, the k rows the method
itself needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenprune.cues import Cues
from tokenprune.errors import CueError
from tokenprune.selection import Selection
from tokenprune.strategies.base import Selector
from tokenprune.strategies.cosine import Features, features
from tokenprune.strategies.greedy import kept_mask, run_greedy

__all__ = ["DPP"]

#: A gain at or below this many machine epsilons of the largest initial gain is rounding
#: noise: the kernel is exhausted (more tokens kept than the features' rank).
_EXHAUSTED = 100


def _dpp_step(
    i: int, state: tuple[Tensor, Tensor], rows: Tensor, floor: Tensor, quality: Tensor, x: Tensor, inv_norm: Tensor
) -> tuple:
    """Greedy MAP step ``i``.

    Args:
        state: ``d2 (B, N)`` remaining marginal gains and ``closed (B, N)`` bool (kept or
            padding).
        rows: ``(B, T, N)`` the Cholesky rows; row ``i`` is written in place (a sample past
            its budget writes rows nobody reads).
        floor: ``(B, 1)`` gains at or below it count as exhausted (rounding noise).
        quality: ``(B, N)`` the kernel's quality term q.
        x, inv_norm: the token `Features`.
    """
    d2, closed = state
    b = rows.shape[0]
    live = (d2 > floor) & ~closed
    by_gain = d2.masked_fill(~live, float("-inf")).argmax(dim=1)
    # An exhausted kernel (every gain at the floor) gives no more information: the rest
    # go by quality, so the choice never depends on rounding noise.
    by_quality = quality.masked_fill(closed, float("-inf")).argmax(dim=1)
    kept = torch.where(live.any(dim=1), by_gain, by_quality)
    closed = closed.scatter(1, kept.unsqueeze(1), True)
    q_kept = torch.gather(quality, 1, kept.unsqueeze(1))
    kernel_row = q_kept * Features(x, inv_norm).cosine_to(kept) * quality  # L[j, :]
    c_kept = torch.gather(rows[:, :i], 2, kept.view(b, 1, 1).expand(b, i, 1))  # (B, i, 1)
    projected = torch.bmm(c_kept.transpose(1, 2), rows[:, :i]).squeeze(1)  # c_j^T C
    gain = torch.gather(d2, 1, kept.unsqueeze(1))
    e = torch.where(gain > floor, (kernel_row - projected) / gain.clamp(min=1e-300).sqrt(), torch.zeros_like(kernel_row))
    rows[:, i] = e
    return (d2 - e * e, closed), kept


@dataclass(frozen=True, repr=False)
class DPP(Selector):
    """CDPruner's conditional DPP: greedy MAP of ``diag(q) S diag(q)``, q = the scores.

    ``S`` is the cosine similarity of the ``hidden`` cue (at ``layer="input"``, the
    projected visual embeddings, as in the authors' code); the scores are the quality
    term (CDPruner's instruction relevance) and must be >= 0. Reported scores: the
    input scores.
    """

    name = "dpp"
    requires = frozenset({"hidden"})

    def __call__(self, scores: Tensor, cues: Cues, budget: Tensor) -> Selection:
        hidden = cues.require("hidden", self.name)
        valid = cues.layout.valid
        if bool((scores[valid] < 0).any()):
            raise CueError(
                "scores: dpp uses the scores as the kernel's quality term and needs them >= 0, "
                f"got min {float(scores[valid].min()):.4g}"
            )
        dtype = torch.promote_types(hidden.dtype, scores.dtype)
        feats = features(hidden, dtype)
        quality = torch.where(valid, scores.to(dtype), torch.zeros((), dtype=dtype, device=scores.device))
        # L_ii = q_i^2 cos(x_i, x_i): q_i^2, or 0 for a zero feature vector.
        d2 = torch.where(feats.inv_norm < 1e12, quality * quality, torch.zeros_like(quality))
        b, n = quality.shape
        steps = int(budget.max()) if budget.numel() else 0
        rows = quality.new_zeros(b, steps, n)
        floor = _EXHAUSTED * torch.finfo(dtype).eps * d2.amax(dim=1, keepdim=True)
        order, _ = run_greedy(_dpp_step, (d2, ~valid), budget, rows, floor, quality, feats.x, feats.inv_norm)
        return Selection.from_mask(kept_mask(order, budget, n), scores)
