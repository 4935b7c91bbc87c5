"""VisionZip (Yang et al., CVPR 2025): dominant tokens plus merged contextual tokens.

Of k kept tokens, ``round(k * contextual)`` are contextual (10 of 64 by default, the
paper's 54 + 10) and the rest dominant:

1. dominant: the top scores (with ``cls_attention``: the vision tower's CLS attention);
2. the other valid tokens, in sequence order, are the remainder R (M tokens); every
   ``max(1, M // c)``-th of them, from the first, is a target (the first c);
3. each other token of R merges into the target whose ``keys`` are most similar to its
   own (cosine, first target on ties); a target becomes ``x_t + mean(x_assigned)`` (the
   authors' code; ``merge="mean"``: the mean of the group, target included) and stays
   at its own position.

Batched: one ``(B, N, c)`` cosine block against the targets, no N x N matrix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from tokenprune.cues import Cues
from tokenprune.errors import SpecError
from tokenprune.selection import Selection
from tokenprune.strategies.base import Selector
from tokenprune.strategies.cosine import features
from tokenprune.strategies.ranking import rank_order

__all__ = ["VisionZip", "contextual_count"]

_MERGES = ("code", "mean")


def contextual_count(budget: Tensor, contextual: float) -> Tensor:
    """``(B,)`` long: ``round(budget * contextual)`` contextual tokens (halves round up)."""
    return torch.floor(budget.double() * contextual + 0.5).long()


@dataclass(frozen=True, repr=False)
class VisionZip(Selector):
    """VisionZip: dominant top scores plus contextual tokens that merge the rest by key similarity.

    ``contextual`` is the contextual share of the kept tokens (10/64 = 0.15625, the
    paper's 54 + 10 split); ``merge`` is ``"code"`` (a contextual token is its target
    plus the mean of the tokens merged into it, as the authors' code computes it) or
    ``"mean"`` (the mean of the whole group). Reads the ``keys`` cue for similarity.
    Reported scores: the input scores.
    """

    contextual: float = 0.15625
    merge: str = "code"
    name = "visionzip"
    requires = frozenset({"keys"})

    def __post_init__(self) -> None:
        share = self.contextual
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share < 1.0:
            raise SpecError(f"visionzip contextual: expected a fraction in [0, 1), got {share!r}")
        if self.merge not in _MERGES:
            raise SpecError(f"visionzip merge: expected one of {', '.join(map(repr, _MERGES))}, got {self.merge!r}")

    def __call__(self, scores: Tensor, cues: Cues, budget: Tensor) -> Selection:
        keys = cues.require("keys", self.name)
        valid = cues.layout.valid
        b, n = scores.shape
        device = scores.device
        rank = torch.arange(n, device=device).expand(b, n)
        contextual = contextual_count(budget, self.contextual)
        dominant = torch.zeros_like(valid).scatter(1, rank_order(scores), rank < (budget - contextual).unsqueeze(1))
        rest = valid & ~dominant
        place = torch.cumsum(rest.long(), dim=1) - 1  # index within the remainder
        size = rest.sum(dim=1)
        step = torch.div(size, contextual.clamp(min=1), rounding_mode="floor").clamp(min=1)
        target = rest & (place % step.unsqueeze(1) == 0) & (place // step.unsqueeze(1) < contextual.unsqueeze(1))
        kept = dominant | target
        selection = Selection.from_mask(kept, scores)
        width = int(contextual.max()) if contextual.numel() else 0
        if width == 0:
            return selection
        # Targets of each sample in sequence order, (B, C), -1 padded.
        slots = torch.where(target, rank, n).sort(dim=1).values[:, :width]
        present = slots < n
        slots = slots.clamp(max=n - 1)
        feats = features(keys, torch.promote_types(keys.dtype, torch.float32))
        target_keys = torch.gather(feats.x, 1, slots.unsqueeze(-1).expand(b, width, feats.x.shape[-1]))
        cosine = torch.bmm(feats.x, target_keys.transpose(1, 2))
        cosine = cosine * feats.inv_norm.unsqueeze(2) * torch.gather(feats.inv_norm, 1, slots).unsqueeze(1)
        best = cosine.masked_fill(~present.unsqueeze(1), float("-inf")).argmax(dim=2)  # (B, N)
        # A sample without contextual tokens drops its remainder (its argmax over no
        # target would name a padded slot).
        assigned = rest & ~target & (contextual > 0).unsqueeze(1)
        into = torch.where(assigned, torch.gather(slots, 1, best), torch.where(kept, rank, -1))
        count = torch.zeros(b, n, dtype=scores.dtype, device=device).scatter_add(
            1, into.clamp(min=0), assigned.to(scores.dtype)
        )
        count_of_group = torch.gather(count, 1, into.clamp(min=0))
        if self.merge == "code":
            weight = torch.where(assigned, 1.0 / count_of_group.clamp(min=1), kept.to(scores.dtype))
        else:
            weight = torch.where(assigned | target, 1.0 / (count_of_group + 1), kept.to(scores.dtype))
        weight = torch.where(into >= 0, weight, torch.zeros_like(weight))
        return dataclasses.replace(selection, merge_into=into, merge_weight=weight)
