"""Compose strategies into a `Pruner` and build pruners from names and spec strings."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import Tensor

from tokenprune.cues import Cues
from tokenprune.errors import CueError, SpecError
from tokenprune.finite import check_finite
from tokenprune.registry import Recipe, get_registry
from tokenprune.selection import Keep, Selection, resolve_keep
from tokenprune.spec import StageSpec, parse_spec
from tokenprune.stage_checks import check_scores, check_selection, is_trusted
from tokenprune.strategies.base import Score, Selector, Stage, Transform

__all__ = ["Pruner", "pruner"]


class Pruner:
    """``score | transform | ... | selector``: a plain callable ``pruner(cues) -> Selection``.

    Args:
        score: produces ``(B, N)`` scores from `Cues`.
        transforms: applied to the scores in order.
        selector: turns scores into a `Selection` of ``keep`` tokens per sample.
        keep: a fraction in (0, 1] of each sample's valid candidates (floored, at least
            1), or a count; required unless the selector ignores it (``vtw``).
        name: the recipe name, if built from one (for display only).
    """

    def __init__(
        self,
        score: Score,
        transforms: Sequence[Transform] = (),
        selector: Selector | None = None,
        keep: Keep | None = None,
        name: str | None = None,
    ) -> None:
        _check_stage("score", score, Score)
        for i, t in enumerate(transforms):
            _check_stage(f"transforms[{i}]", t, Transform)
        _check_stage("selector", selector, Selector)
        if selector.uses_budget and keep is None:
            raise SpecError(
                f"keep: selector '{selector.name}' needs keep= (a fraction in (0, 1] or a "
                "count >= 1), got None"
            )
        if keep is not None:  # validate early, even where the selector ignores it
            resolve_keep(keep, torch.zeros(0, dtype=torch.long))
        self.score = score
        self.transforms = tuple(transforms)
        self.selector = selector
        self.keep = keep
        self.name = name

    @property
    def stages(self) -> tuple[Stage, ...]:
        return (self.score, *self.transforms, self.selector)

    @property
    def requires(self) -> frozenset[str]:
        """Names of the cues this pruner reads (the engine captures exactly these)."""
        out: frozenset[str] = frozenset()
        for stage in self.stages:
            out |= stage.all_requires()
        return out

    @property
    def spec(self) -> str:
        """The spec string that rebuilds this pruner (with ``keep=``)."""
        return " | ".join(repr(s) for s in self.stages)

    def __repr__(self) -> str:
        label = f"{self.name}: " if self.name else ""
        return f"Pruner({label}{self.spec!r}, keep={self.keep!r})"

    def with_keep(self, keep: Keep | None) -> Pruner:
        """The same stages with another ``keep``."""
        return Pruner(self.score, self.transforms, self.selector, keep=keep, name=self.name)

    def __call__(self, cues: Cues) -> Selection:
        """Select tokens for each sample of ``cues``.

        Returns:
            `Selection` with ``indices (B, K)``, ``mask (B, N)`` and ``scores (B, N)``.
        """
        if not isinstance(cues, Cues):
            raise CueError(f"cues: expected tokenprune.Cues, got {type(cues).__name__}")
        missing = sorted(self.requires - cues.available())
        if missing:
            needers = [s.name for s in self.stages if set(missing) & s.all_requires()]
            raise CueError(
                f"{missing[0]}: pruner {self.spec!r} needs cue(s) {', '.join(missing)} "
                f"(for {', '.join(needers)}) but Cues has only "
                f"{', '.join(sorted(cues.available())) or 'none'}"
            )
        # A cue only the selector reads, and checks itself as it reads it, is not read twice.
        read_before = self.score.all_requires().union(*(t.all_requires() for t in self.transforms))
        by_selector = self.selector.self_checked(cues) - read_before
        checked = []
        for name in sorted(self.requires - by_selector):
            value = cues.get(name)
            if value.dim() >= 2 and value.shape[1] == cues.num_tokens:
                check_finite(name, value, cues.layout.valid)
                checked.append(value)
        return self._run(cues, self.budget(cues.layout.num_valid()), tuple(checked), by_selector)

    def budget(self, num_valid: Tensor) -> Tensor:
        """``(B,)`` long: tokens to keep per sample of ``num_valid (B,)`` candidates (zeros
        for a selector that ignores the budget)."""
        if not self.selector.uses_budget:
            return torch.zeros_like(num_valid)
        return resolve_keep(self.keep, num_valid)

    def select(self, cues: Cues, budget: Tensor) -> Selection:
        """The engine's trusted path: ``budget (B,)`` given (the engine sizes every stage
        of a schedule from the ORIGINAL visual-token counts) and no checks of the cues or
        of tokenprune's own stages, so the call adds no host sync beyond the stages' own;
        a third-party stage's output is still checked (`tokenprune.stage_checks`)."""
        return self._run(cues, budget, None)

    def _run(
        self, cues: Cues, budget: Tensor, checked: tuple[Tensor, ...] | None, by_selector: frozenset[str] = frozenset()
    ) -> Selection:
        """The stages in order; ``checked``: the cue tensors the public call checked
        (None: the engine's trusted call); ``by_selector``: the cues the selector checks."""
        valid = cues.layout.valid
        scores = self.score(cues)
        _check_scores("score", self.score, scores, cues, checked)
        scores = _as_compute(scores)
        for t in self.transforms:
            scores = t(scores, cues)
            _check_scores("transform", t, scores, cues, checked)
        scores = torch.where(valid, scores, float("-inf"))
        if by_selector:
            selection = self.selector.checked_call(scores, cues, budget, by_selector)
        else:
            selection = self.selector(scores, cues, budget)
        check_selection(self.selector, selection, valid, budget if self.selector.uses_budget else None)
        return selection


def _as_compute(scores: Tensor) -> Tensor:
    # Scores and decay arithmetic run in float32 at least (float64 stays float64).
    if scores.dtype in (torch.float32, torch.float64):
        return scores
    return scores.to(torch.promote_types(scores.dtype, torch.float32))


def _check_stage(arg: str, stage: object, kind: type) -> None:
    if not isinstance(stage, kind):
        raise SpecError(f"{arg}: expected a tokenprune {kind.__name__}, got {stage!r}")


def _check_scores(kind: str, stage: Stage, scores: Tensor, cues: Cues, checked: tuple[Tensor, ...] | None) -> None:
    trusted = is_trusted(stage)
    if trusted and checked is None:
        return  # tokenprune's own stage inside the engine: right by construction
    expected = (cues.batch_size, cues.num_tokens)
    if not trusted:
        check_scores(kind, stage, scores, expected, cues.layout.valid)
        return
    if tuple(scores.shape) != expected:
        raise CueError(f"scores from '{stage.name}': expected shape {expected}, got {tuple(scores.shape)}")
    if not any(scores is cue for cue in checked):  # a cue handed on as it is was checked already
        check_finite(f"scores from '{stage.name}'", scores, cues.layout.valid)


# --------------------------------------------------------------------------- building
def pruner(
    spec: str | Pruner | Sequence[Stage],
    keep: Keep | None = None,
    **overrides: object,
) -> Pruner:
    """Build a `Pruner`.

    Args:
        spec: a recipe name (``"adaptprune"``), a spec string
            (``"attention | gaussian | soft_nms(radius=5, spatial=1.5, similarity=0.05)"``),
            a `Pruner`, or a sequence of stage objects ``[score, *transforms, selector]``.
        keep: kept fraction in (0, 1] or count; required unless the selector ignores it.
        **overrides: keyword arguments for the stage that accepts them, e.g.
            ``pruner("adaptprune", keep=0.1, radius=3)``. Each must match exactly one stage.

    Returns:
        A callable ``Pruner`` (``pruner(cues) -> Selection``).
    """
    if isinstance(spec, Pruner):
        if overrides:
            raise SpecError(f"overrides: not supported for a Pruner object, got {sorted(overrides)}")
        return spec.with_keep(keep if keep is not None else spec.keep)
    if isinstance(spec, str):
        return _from_string(spec, keep, overrides)
    if isinstance(spec, Sequence) and len(spec) >= 2:
        if overrides:
            raise SpecError(f"overrides: not supported for stage objects, got {sorted(overrides)}")
        return Pruner(spec[0], spec[1:-1], spec[-1], keep=keep)
    raise SpecError(
        "spec: expected a recipe name, a spec string, a Pruner or a sequence "
        f"[score, *transforms, selector], got {spec!r}"
    )


def _from_string(spec: str, keep: Keep | None, overrides: dict[str, object]) -> Pruner:
    registry = get_registry()
    stages = parse_spec(spec)
    name = None
    if len(stages) == 1:
        recipe = registry.get("recipe", stages[0].name)
        assert isinstance(recipe, Recipe)
        name = recipe.name
        recipe_stages = parse_spec(recipe.spec)
        twice = sorted(stages[0].kwargs.keys() & overrides.keys())
        if twice:
            raise SpecError(
                f"{twice[0]}: expected once, got it both in the spec {spec!r} and as a keyword argument"
            )
        stages = _apply_overrides(recipe_stages, {**stages[0].kwargs, **overrides}, registry)
    elif overrides:
        stages = _apply_overrides(stages, overrides, registry)
    if len(stages) < 2:
        raise SpecError(f"spec: expected a recipe name or 'score | ... | selector', got {spec!r}")
    kinds = _stage_kinds(len(stages))
    built = [_build_stage(kind, s, registry) for kind, s in zip(kinds, stages)]
    return Pruner(built[0], built[1:-1], built[-1], keep=keep, name=name)


def _stage_kinds(n: int) -> list[str]:
    return ["score"] + ["transform"] * (n - 2) + ["selector"]


def _accepts(kind: str, stage: StageSpec, key: str, registry) -> bool:
    entry = registry.get(kind, stage.name)
    params = inspect.signature(entry.factory).parameters
    named = {n for n, p in params.items() if p.kind is not p.VAR_KEYWORD}
    if key in named:
        return True
    if getattr(entry.factory, "accepts_decays", False):
        return registry.has("decay", key)
    return any(p.kind is p.VAR_KEYWORD for p in params.values())


def _apply_overrides(stages: list[StageSpec], overrides: dict, registry) -> list[StageSpec]:
    out = [StageSpec(s.name, dict(s.kwargs)) for s in stages]
    kinds = _stage_kinds(len(stages))
    for key, value in overrides.items():
        targets = [i for i, (k, s) in enumerate(zip(kinds, out)) if _accepts(k, s, key, registry)]
        if len(targets) != 1:
            names = [s.name for s in out]
            where = "none" if not targets else ", ".join(out[i].name for i in targets)
            raise SpecError(
                f"{key}: expected exactly one stage of {' | '.join(names)} to accept it, got {where}"
            )
        out[targets[0]].kwargs[key] = value
    return out


def _build_stage(kind: str, stage: StageSpec, registry) -> Stage:
    if not registry.has(kind, stage.name):
        for other in ("score", "transform", "selector", "recipe"):
            if other != kind and registry.has(other, stage.name):
                raise SpecError(
                    f"spec: {stage.name!r} is a {other}, but this position needs a {kind} "
                    "(spec strings are 'score | transform | ... | selector')"
                )
    entry = registry.get(kind, stage.name)
    try:
        return entry.factory(**stage.kwargs)
    except TypeError as exc:
        params = list(inspect.signature(entry.factory).parameters)
        raise SpecError(
            f"{stage.name}: bad arguments {stage.kwargs} ({exc}); it accepts {', '.join(params) or 'none'}"
        ) from None
