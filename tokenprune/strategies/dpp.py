"""CDPruner's selection (Zhang et al., 2025): greedy MAP inference of a conditional DPP.

The kernel is ``L = diag(q) S diag(q)``: ``S`` the cosine similarity of the token
features, ``q`` the scores (CDPruner's instruction relevance). Greedy MAP inference in
the fast Cholesky-update form (Chen et al., NeurIPS 2018): with ``d_i^2 = L_ii``,
repeat: keep ``j = argmax d^2`` among the tokens not kept (first index on ties);
``e = (L_j - c_j^T C) / d_j``; append ``e`` to ``C``; ``d^2 -= e^2``. A token whose
``d^2`` is no longer positive (the kernel is exhausted) contributes ``e = 0``.

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


def _dpp_step(state: tuple[Tensor, Tensor, Tensor, Tensor], quality: Tensor, x: Tensor, inv_norm: Tensor) -> tuple:
    """One greedy MAP step.

    Args:
        state: ``d2 (B, N)`` remaining marginal gains, ``closed (B, N)`` bool (kept or
            padding), ``rows (B, T, N)`` the Cholesky rows so far, ``count (B,)`` long
            rows written.
        quality: ``(B, N)`` the kernel's quality term q.
        x, inv_norm: the token `Features`.
    """
    d2, closed, rows, count = state
    b, t, n = rows.shape
    kept = d2.masked_fill(closed, float("-inf")).argmax(dim=1)
    closed = closed.scatter(1, kept.unsqueeze(1), True)
    q_kept = torch.gather(quality, 1, kept.unsqueeze(1))
    kernel_row = q_kept * Features(x, inv_norm).cosine_to(kept) * quality  # L[j, :]
    c_kept = torch.gather(rows, 2, kept.view(b, 1, 1).expand(b, t, 1))  # (B, T, 1)
    projected = torch.bmm(c_kept.transpose(1, 2), rows).squeeze(1)  # c_j^T C
    gain = torch.gather(d2, 1, kept.unsqueeze(1)).clamp(min=0)
    e = torch.where(gain > 0, (kernel_row - projected) / gain.sqrt().clamp(min=1e-300), torch.zeros_like(kernel_row))
    # Samples past their budget keep writing (their state is discarded): stay in range.
    slot = count.clamp(max=max(t - 1, 0)).view(b, 1, 1).expand(b, 1, n)
    rows = rows.scatter(1, slot, e.unsqueeze(1))
    return (d2 - e * e, closed, rows, count + 1), kept



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
        count = torch.zeros(b, dtype=torch.long, device=scores.device)
        order, _ = run_greedy(_dpp_step, (d2, ~valid, rows, count), budget, quality, feats.x, feats.inv_norm)
        return Selection.from_mask(kept_mask(order, budget, n), scores)
