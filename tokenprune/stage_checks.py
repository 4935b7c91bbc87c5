"""Checks of what a third-party stage returns, made once at each hand-off of a pruner.

tokenprune's own stages are trusted (their outputs are right by construction and
tested); a stage whose class lives outside the ``tokenprune`` package (a plugin's, or
one a user wrote) has its output checked before the next stage or the engine reads it,
and a wrong output raises `PluginError` naming the stage and where it comes from.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokenprune.errors import PluginError
from tokenprune.selection import Selection
from tokenprune.strategies.base import Decay, DecayContext, Stage

__all__ = ["CheckedDecay", "check_scores", "check_selection", "is_trusted"]


def is_trusted(stage: Stage) -> bool:
    """True for tokenprune's own stages (their outputs are not re-checked)."""
    module = type(stage).__module__
    return module == "tokenprune" or module.startswith("tokenprune.")


def _origin(kind: str, stage: Stage) -> str:
    from tokenprune.registry import get_registry

    registry = get_registry()
    if registry.has(kind, stage.name):
        plugin = registry.get(kind, stage.name).plugin
        if plugin:
            return f"plugin '{plugin}'"
    return f"class {type(stage).__module__}.{type(stage).__qualname__}"


def _error(kind: str, stage: Stage, message: str) -> PluginError:
    return PluginError(f"{kind} '{stage.name}' ({_origin(kind, stage)}): {message}")


def check_scores(kind: str, stage: Stage, scores: object, shape: tuple[int, int], valid: Tensor) -> None:
    """Raise unless a score / transform returned a floating ``(B, N)`` tensor on the
    cues' device, finite at the ``valid (B, N)`` candidates."""
    device = valid.device
    if not isinstance(scores, Tensor):
        raise _error(kind, stage, f"expected a (B, N) = {shape} float tensor of scores, got {type(scores).__name__}")
    if tuple(scores.shape) != shape:
        raise _error(kind, stage, f"expected scores of shape {shape}, got {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise _error(kind, stage, f"expected floating-point scores, got {scores.dtype}")
    if scores.device != device:
        raise _error(kind, stage, f"expected scores on {device} (the cues' device), got {scores.device}")
    bad = ~torch.isfinite(scores) & valid
    if bool(bad.any()):
        sample, token = (int(i) for i in bad.nonzero()[0])
        raise _error(kind, stage, f"expected finite scores, got {float(scores[sample, token])} at sample {sample}, token {token}")


def check_selection(stage: Stage, selection: object, valid: Tensor, budget: Tensor | None) -> None:
    """Raise unless an untrusted selector returned a `Selection` of ``valid (B, N)``'s
    shape that keeps no padding and at most ``budget (B,)`` tokens per sample (None:
    the selector ignores ``keep``), with ``indices`` matching ``mask``."""
    if is_trusted(stage):
        return
    b, n = valid.shape
    if not isinstance(selection, Selection):
        raise _error("selector", stage, f"expected a tokenprune.Selection, got {type(selection).__name__}")
    mask, indices, scores = selection.mask, selection.indices, selection.scores
    for arg, value, dtype in (("mask", mask, "bool"), ("indices", indices, "int64")):
        if not isinstance(value, Tensor) or str(value.dtype).removeprefix("torch.") != dtype:
            got = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise _error("selector", stage, f"Selection.{arg}: expected a {dtype} tensor, got {got}")
    if tuple(mask.shape) != (b, n) or mask.device != valid.device:
        raise _error(
            "selector", stage,
            f"Selection.mask: expected shape {(b, n)} on {valid.device}, got {tuple(mask.shape)} on {mask.device}",
        )
    if not isinstance(scores, Tensor) or tuple(scores.shape) != (b, n):
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise _error("selector", stage, f"Selection.scores: expected shape {(b, n)}, got {got}")
    padding = mask & ~valid
    if bool(padding.any()):
        sample, token = (int(i) for i in padding.nonzero()[0])
        raise _error(
            "selector", stage,
            f"expected only valid candidates kept, got padding token {token} of sample {sample}",
        )
    counts = mask.sum(dim=1)
    if budget is not None and bool((counts > budget).any()):
        sample = int((counts > budget).nonzero()[0, 0])
        raise _error(
            "selector", stage,
            f"expected at most the budget of {int(budget[sample])} kept tokens (from keep), got "
            f"{int(counts[sample])} in sample {sample}",
        )
    expected = Selection.from_mask(mask, scores).indices
    if tuple(indices.shape) != tuple(expected.shape) or not bool((indices == expected).all()):
        raise _error(
            "selector", stage,
            "Selection.indices: expected the True positions of mask, ascending, -1 padded "
            "(build it with Selection.from_mask), got other indices",
        )


class CheckedDecay(Decay):
    """An untrusted decay term whose ``(B, W)`` factors are checked at every call:
    floating, finite and in [0, 1] at window tokens."""

    def __init__(self, inner: Decay) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]

    def params(self) -> dict[str, object]:
        return self.inner.params()

    def all_requires(self) -> frozenset[str]:
        return self.inner.all_requires()

    def __call__(self, ctx: DecayContext) -> Tensor:
        factor = self.inner(ctx)
        shape = tuple(ctx.candidates.shape)
        if not isinstance(factor, Tensor) or tuple(factor.shape) != shape or not factor.is_floating_point():
            got = (
                f"{tuple(factor.shape)} {factor.dtype}" if isinstance(factor, Tensor) else type(factor).__name__
            )
            raise _error("decay", self.inner, f"expected a (B, W) = {shape} float tensor of factors, got {got}")
        inside = factor[ctx.in_window]
        bad = ~((inside >= 0) & (inside <= 1))  # NaN fails both comparisons
        if bool(bad.any()):
            raise _error(
                "decay", self.inner,
                f"expected factors in [0, 1] (soft_nms multiplies scores by 1 - product of factors), "
                f"got {float(inside[bad][0]):.4g}",
            )
        return factor
