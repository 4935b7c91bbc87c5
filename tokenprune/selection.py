"""The result of a pruner: which candidate tokens each sample keeps."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from tokenprune._batch_index import sample_slice
from tokenprune.errors import SpecError

__all__ = ["Keep", "Selection", "resolve_keep"]

#: A kept fraction of the valid candidates in (0, 1], or a count >= 1.
Keep = float | int


@dataclass(frozen=True, eq=False)
class Selection:
    """Kept tokens of B samples.

    Attributes:
        indices: ``(B, K)`` long, kept candidate indices ascending within each row;
            -1 pads rows of samples that keep fewer than K.
        mask: ``(B, N)`` bool, True for kept candidates.
        scores: ``(B, N)`` float, the final scores the selector ranked by (after every
            transform and, for ``soft_nms``, after suppression).
        merge_into: ``(B, N)`` long or None. None: kept tokens pass unchanged. Else the
            kept candidate that absorbs each candidate (a kept one names itself; -1: not
            merged, dropped): kept token t becomes ``sum(merge_weight[j] * x[j])`` over
            the candidates j with ``merge_into[j] == t``, at t's position.
        merge_weight: ``(B, N)`` float weights of that sum, or None.
    """

    indices: Tensor
    mask: Tensor
    scores: Tensor
    merge_into: Tensor | None = None
    merge_weight: Tensor | None = None

    @property
    def counts(self) -> Tensor:
        """``(B,)`` long: number of kept tokens per sample."""
        return self.mask.sum(dim=1)

    def __getitem__(self, index: int | slice) -> Selection:
        index = sample_slice(index, self.mask.shape[0])
        if self.merge_into is None:
            return Selection(self.indices[index], self.mask[index], self.scores[index])
        return Selection(
            self.indices[index], self.mask[index], self.scores[index], self.merge_into[index], self.merge_weight[index]
        )

    @classmethod
    def from_mask(cls, mask: Tensor, scores: Tensor) -> Selection:
        """Build from ``mask (B, N)`` bool; indices are its True positions, ascending."""
        b, n = mask.shape
        k = int(mask.sum(dim=1).max()) if b and n else 0
        position = torch.arange(n, device=mask.device).expand(b, n)
        ordered = torch.where(mask, position, torch.full_like(position, n)).sort(dim=1).values[:, :k]
        indices = torch.where(ordered == n, torch.full_like(ordered, -1), ordered)
        return cls(indices=indices, mask=mask, scores=scores)

    @classmethod
    def from_ranking(cls, order: Tensor, budget: Tensor, scores: Tensor) -> Selection:
        """Keep the first ``budget[b]`` tokens of ``order[b]``.

        Args:
            order: ``(B, N)`` long, candidate indices from most to least preferred.
            budget: ``(B,)`` long, tokens to keep per sample.
            scores: ``(B, N)`` float, the scores to report.
        """
        b, n = order.shape
        rank = torch.arange(n, device=order.device).expand(b, n)
        take = rank < budget.unsqueeze(1)
        mask = torch.zeros(b, n, dtype=torch.bool, device=order.device).scatter(1, order, take)
        return cls.from_mask(mask, scores)


def resolve_keep(keep: Keep, num_valid: Tensor) -> Tensor:
    """Tokens to keep per sample.

    A float in (0, 1] keeps ``floor(n * keep)`` of a sample's n valid candidates (as the
    AdaptPrune code does: 576 * 0.1 -> 57), at least 1 where n >= 1; an int keeps that
    many. Samples with no valid candidate keep 0.

    Args:
        keep: the fraction or count.
        num_valid: ``(B,)`` long, valid candidates per sample.

    Returns:
        ``(B,)`` long budget, on ``num_valid``'s device.
    """
    if isinstance(keep, bool) or not isinstance(keep, numbers.Real):
        raise SpecError(f"keep: expected a float in (0, 1] or an int >= 1, got {keep!r}")
    counts = num_valid.tolist()
    if isinstance(keep, numbers.Integral):
        keep = int(keep)
        if keep < 1:
            raise SpecError(f"keep: expected an int >= 1 (a token count), got {keep}")
        too_few = [(i, c) for i, c in enumerate(counts) if 0 < c < keep]
        if too_few:
            i, c = too_few[0]
            raise SpecError(
                f"keep: expected at most the number of valid candidates, got keep={keep} "
                f"but sample {i} has only N={c}"
            )
        budget = [keep if c > 0 else 0 for c in counts]
    else:
        keep = float(keep)
        if not (math.isfinite(keep) and 0.0 < keep <= 1.0):
            raise SpecError(f"keep: expected a fraction in (0, 1], got {keep}")
        budget = [max(1, math.floor(c * keep)) if c > 0 else 0 for c in counts]
    return torch.tensor(budget, dtype=torch.long, device=num_valid.device)
