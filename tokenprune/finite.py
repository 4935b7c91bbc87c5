"""The public call's check of a cue tensor: no NaN/inf at a valid token and, for
``(B, N, D)`` cues, every vector's L2 norm finite (cosines of an overflowing norm are NaN).

`check_finite` is what ``pruner(cues)`` runs on every cue it reads; a selector that reads
a cue in full anyway may check it itself instead (`Selector.self_checked`), with the same
errors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tokenprune.errors import CueError

__all__ = ["check_finite", "norm_limit", "surely_finite"]


def check_finite(name: str, value: Tensor, valid: Tensor) -> None:
    """Raise if ``value`` (``(B, N)`` or ``(B, N, D)``) has a NaN/inf at a valid token, or,
    for ``(B, N, D)`` cues, a vector whose L2 norm overflows (cosines would be NaN)."""
    if surely_finite(value):
        return
    overflow = None
    if value.dim() == 3:
        # One fast pass: the norm is NaN/inf whenever an entry is, or when it overflows.
        norm = torch.linalg.vector_norm(value, dim=-1, dtype=torch.promote_types(value.dtype, torch.float32))
        overflow = ~torch.isfinite(norm) & valid
        if not bool(overflow.any()):
            return
        value = value.abs().amax(dim=-1)
    bad = ~torch.isfinite(value) & valid
    if bool(bad.any()):
        b, n = (int(i) for i in bad.nonzero()[0])
        raise CueError(f"{name}: expected finite values, got NaN/inf (first at sample {b}, token {n})")
    if overflow is not None:
        b, n = (int(i) for i in overflow.nonzero()[0])
        raise CueError(
            f"{name}: expected vectors whose L2 norm fits in {norm.dtype}, got one that overflows "
            f"(first at sample {b}, token {n}, largest entry {float(value[b, n]):.3g}); rescale the cue"
        )


def surely_finite(value: Tensor) -> bool:
    """True when one read of ``value`` shows every entry finite and, for ``(B, N, D)``,
    every vector's L2 norm sure to fit its float type (``D * max|entry|^2`` at most half
    its largest value); False leaves the verdict to the exact per-token check, which also
    forgives padding. ``aminmax`` propagates NaN and shows +-inf, without a temporary
    of ``value``'s size."""
    if value.numel() == 0:
        return True
    if value.is_complex():  # no aminmax: the exact check decides
        return False
    low, high = torch.stack(torch.aminmax(value)).tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        return False
    if value.dim() != 3:
        return True
    return max(-low, high) <= math.sqrt(norm_limit(value.dtype) / value.shape[-1])


def norm_limit(dtype: torch.dtype) -> float:
    """Half the largest value of the type `check_finite` computes L2 norms of ``dtype``
    vectors in: a sum of squares at most this fits in any summation order."""
    return torch.finfo(torch.promote_types(dtype, torch.float32)).max / 2
