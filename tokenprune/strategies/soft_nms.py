"""AdaptPrune's adaptive Soft-NMS (paper section 4.3, Algorithm 1) and its decay terms.

Greedy: repeat ``budget`` times: keep the highest-scoring token not yet kept (first
index on ties); multiply the score of every token of the same region within Euclidean
distance ``radius`` of it (itself and kept tokens included) by ``1 - prod(D_terms)``.
A term that reaches other frames (``temporal``) adds the kept token's cell in the frames
of its video up to ``frames`` away to that window.

On CPU tensors, with a radius and the built-in decay terms, a C kernel
(`tokenprune.strategies.soft_nms_cpu`) computes the selection with lazy suppression;
otherwise the torch steps below run. They are batched over samples, never build an
N x N matrix (a window of at most ``W ~ pi * radius^2`` tokens is looked up per step),
have no host sync per kept token, and are compiled once with dynamic shapes.
"""

from __future__ import annotations

import difflib
import functools
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from tokenprune.compile import maybe_compiled
from tokenprune.cues import Cues
from tokenprune.errors import SpecError
from tokenprune.finite import check_finite
from tokenprune.layout import Layout
from tokenprune.selection import Selection
from tokenprune.stage_checks import CheckedDecay, is_trusted
from tokenprune.strategies import soft_nms_cpu
from tokenprune.strategies.base import Decay, DecayContext, Selector
from tokenprune.strategies.grid import (
    CellGrid,
    cell_grid,
    disc_offsets,
    frame_neighbors,
    frame_offsets,
    lookup,
)

__all__ = ["SimilarityDecay", "SoftNMS", "SpatialDecay", "TemporalDecay", "key_inv_norm"]


#: Largest decay sigma: ``2 * sigma**2`` must stay a finite float (1e150 is no decay at all).
MAX_SIGMA = 1e150


def _check_sigma(arg: str, sigma: object, maximum: float = math.inf) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (0 < sigma <= maximum and math.isfinite(sigma)):
        bound = "" if maximum == math.inf else f" <= {maximum:g}"
        raise SpecError(f"{arg}: expected a positive finite number{bound}, got {sigma!r}")


@dataclass(frozen=True, repr=False)
class SpatialDecay(Decay):
    """soft_nms decay of spatial distance, paper eq. (1): ``exp(-d^2 / (2 sigma^2))``, d in cells."""

    sigma: float = 1.5
    name = "spatial"

    def __post_init__(self) -> None:
        _check_sigma("spatial sigma", self.sigma, MAX_SIGMA)

    def __call__(self, ctx: DecayContext) -> Tensor:
        return torch.exp(-ctx.distance2 / (2.0 * self.sigma**2))


@dataclass(frozen=True, repr=False)
class SimilarityDecay(Decay):
    """soft_nms decay of key similarity, paper eq. (2): ``exp(-(1 - cos(key_i, key_j))^2 / (2 sigma^2))``."""

    sigma: float = 0.05
    name = "similarity"
    requires = frozenset({"keys"})

    def __post_init__(self) -> None:
        _check_sigma("similarity sigma", self.sigma, MAX_SIGMA)

    def __call__(self, ctx: DecayContext) -> Tensor:
        keys, inv = ctx.keys, ctx.key_inv_norm
        b, w = ctx.candidates.shape
        kept_key = torch.gather(keys, 1, ctx.kept.view(b, 1, 1).expand(b, 1, keys.shape[-1]))
        cand_key = torch.gather(keys, 1, ctx.candidates.unsqueeze(-1).expand(b, w, keys.shape[-1]))
        dot = (cand_key.to(ctx.dtype) * kept_key.to(ctx.dtype)).sum(-1)
        cos = dot * torch.gather(inv, 1, ctx.candidates) * torch.gather(inv, 1, ctx.kept.view(b, 1))
        return torch.exp(-((1.0 - cos) ** 2) / (2.0 * self.sigma**2))


@dataclass(frozen=True, repr=False)
class TemporalDecay(Decay):
    """``exp(-df^2 / (2 sigma^2))`` for the kept token's cell ``|df| <= frames`` frames
    away in its video, 1 inside its own frame: a static video does not keep the same
    patch in every frame. Layouts without ``region_frames`` are unaffected."""

    sigma: float = 1.0
    frames: int = 1
    name = "temporal"

    def __post_init__(self) -> None:
        _check_sigma("temporal sigma", self.sigma)
        if isinstance(self.frames, bool) or not isinstance(self.frames, int) or self.frames < 1:
            raise SpecError(f"temporal frames: expected an int >= 1, got {self.frames!r}")

    def frame_reach(self) -> int:
        return self.frames

    def __call__(self, ctx: DecayContext) -> Tensor:
        if ctx.frame_distance is None:
            return torch.ones_like(ctx.distance2)
        return torch.exp(-(ctx.frame_distance**2) / (2.0 * self.sigma**2))


def key_inv_norm(keys: Tensor, dtype: torch.dtype, chunk: int = 2048) -> Tensor:
    """``(B, N)`` 1 / max(||key||, 1e-12) in ``dtype``, computed in chunks of N so that no
    full-size upcast copy of ``keys (B, N, D)`` is made."""
    wide = torch.promote_types(keys.dtype, dtype)  # float64 keys with float32 scores
    parts = [
        torch.linalg.vector_norm(keys[:, i : i + chunk], dim=-1, dtype=wide).to(dtype)
        for i in range(0, keys.shape[1], chunk)
    ]
    norm = torch.cat(parts, dim=1) if parts else keys.new_zeros(keys.shape[:2], dtype=dtype)
    return 1.0 / norm.clamp(min=1e-12)


def _suppress(scores: Tensor, candidates: Tensor, in_window: Tensor, ctx: DecayContext, decays) -> Tensor:
    factor = torch.ones_like(scores[:, :1]).expand_as(candidates)
    for decay in decays:
        factor = factor * decay(ctx)
    factor = torch.where(in_window, 1.0 - factor, torch.ones_like(factor))
    # Out-of-window entries point at index 0 with factor 1: a product leaves it unchanged.
    return scores.scatter_reduce(1, candidates, factor, reduce="prod", include_self=True)


def _window_step(
    scores: Tensor,
    taken: Tensor,
    grid: CellGrid,
    offsets: Tensor,
    distance2: Tensor,
    keys: Tensor | None,
    inv_norm: Tensor | None,
    decays: tuple[Decay, ...],
    across: Tensor | None = None,
    frame_distance: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One greedy step with a precomputed window.

    Args:
        scores: ``(B, N)`` compute dtype, -inf on padding.
        taken: ``(B, N)`` bool, tokens kept so far.
        grid: the layout's `CellGrid`, to look the window up.
        offsets: ``(W, 2)`` long window offsets; distance2 ``(W,)`` their squared length.
        across: ``(B, N, F)`` long, each token's cell in other frames (`frame_neighbors`),
            or None; frame_distance ``(W + F,)`` 0 for the spatial window, then ``|df|``.

    Returns:
        new scores, new taken, and the ``(B,)`` index kept at this step.
    """
    b = scores.shape[0]
    kept = scores.masked_fill(taken, float("-inf")).argmax(dim=1)
    taken = taken.scatter(1, kept.unsqueeze(1), True)
    cand = lookup(grid, kept.view(b, 1), offsets).squeeze(1)
    if across is not None:
        far = torch.gather(across, 1, kept.view(b, 1, 1).expand(b, 1, across.shape[2])).squeeze(1)
        cand = torch.cat([cand, far], dim=1)
        distance2 = torch.cat([distance2, distance2.new_zeros(far.shape[1])])
        frame_distance = frame_distance.expand_as(cand)
    in_window = cand >= 0
    cand = cand.clamp(min=0)
    ctx = DecayContext(
        kept, cand, in_window, distance2.expand_as(in_window), keys, inv_norm, scores.dtype, frame_distance
    )
    return _suppress(scores, cand, in_window, ctx, decays), taken, kept


def _dense_step(
    scores: Tensor,
    taken: Tensor,
    coords: Tensor,
    regions: Tensor,
    keys: Tensor | None,
    inv_norm: Tensor | None,
    decays: tuple[Decay, ...],
    across: Tensor | None = None,
    frame_distance: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One greedy step without a radius: the window is the kept token's whole region.

    ``coords (B, N, 2)`` (NaN-free, compute dtype) and ``regions (B, N)`` long with -1
    for tokens that have no place or are padding; ``across`` and ``frame_distance`` as in
    `_window_step` (the other frames' cells join the window).
    """
    b, n = scores.shape
    kept = scores.masked_fill(taken, float("-inf")).argmax(dim=1)
    taken = taken.scatter(1, kept.unsqueeze(1), True)
    kept_region = torch.gather(regions, 1, kept.unsqueeze(1))
    in_window = (regions == kept_region) & (kept_region >= 0)
    kept_pos = torch.gather(coords, 1, kept.view(b, 1, 1).expand(b, 1, 2))
    distance2 = ((coords - kept_pos) ** 2).sum(-1)
    cand = torch.arange(n, device=scores.device).expand(b, n)
    if across is not None:
        far = torch.gather(across, 1, kept.view(b, 1, 1).expand(b, 1, across.shape[2])).squeeze(1)
        in_window = torch.cat([in_window, far >= 0], dim=1)
        cand = torch.cat([cand, far.clamp(min=0)], dim=1)
        distance2 = torch.cat([distance2, distance2.new_zeros(b, far.shape[1])], dim=1)
        frame_distance = frame_distance.expand_as(cand)
    ctx = DecayContext(kept, cand, in_window, distance2, keys, inv_norm, scores.dtype, frame_distance)
    return _suppress(scores, cand, in_window, ctx, decays), taken, kept


#: Greedy steps per compiled call: amortises the call overhead without tying the graph to K.
UNROLL = 8


def _unrolled(step):
    """``UNROLL`` calls of ``step``; a sample whose ``remaining (B,)`` budget is used up
    keeps its scores, so its final scores are those after exactly ``budget`` steps."""

    def steps(scores: Tensor, taken: Tensor, remaining: Tensor, *args) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        kept = []
        for _ in range(UNROLL):
            new_scores, taken, index = step(scores, taken, *args)
            scores = torch.where((remaining > 0).unsqueeze(1), new_scores, scores)
            remaining = remaining - 1
            kept.append(index)
        return scores, taken, remaining, torch.stack(kept, dim=1)

    steps.__name__ = f"unrolled_{step.__name__}"
    return steps


_window_steps = maybe_compiled(_unrolled(_window_step), cpu_threads=1)
_dense_steps = maybe_compiled(_unrolled(_dense_step), cpu_threads=1)


def _useful_radius(radius: float, largest: tuple[int, int] | None) -> float:
    """``radius``, capped where a larger disc adds no offset that stays inside a region.

    ``largest`` is the (height, width) of the largest region (None: no region). Every
    in-region offset has length at most that diagonal, so the cap changes no result; it
    keeps ``radius=1e6`` from building a 10^12-cell disc.
    """
    if largest is None:
        return min(radius, 1.0)
    diagonal = math.hypot(*largest)
    return radius if radius <= diagonal else diagonal


def _build_soft_nms(cls: type[SoftNMS], radius: float | None = 5.0, **decays: object) -> SoftNMS:
    """Build `SoftNMS` with decay terms given by name.

    Each keyword names a registered decay: a number is its first argument
    (``spatial=1.5``), a dict its keyword arguments, True its defaults, None or False
    leaves it out. Unnamed defaults: ``spatial=1.5, similarity=0.05`` (the authors').
    """
    from tokenprune.registry import get_registry  # the registry imports the stage classes

    registry = get_registry()
    terms = []
    for name, value in {**_DEFAULT_DECAYS, **decays}.items():
        if not registry.has("decay", name):
            options = ["radius", *registry.names("decay")]
            close = difflib.get_close_matches(name, options, n=2)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise SpecError(
                f"soft_nms {name}: unknown argument; {hint}soft_nms accepts radius and the "
                f"registered decays ({', '.join(registry.names('decay'))})"
            )
        entry = registry.get("decay", name)
        if value is None or value is False:
            continue
        if value is True:
            terms.append(entry.factory())
        elif isinstance(value, dict):
            terms.append(entry.factory(**value))
        elif isinstance(value, (int, float)):
            terms.append(entry.factory(value))
        else:
            raise SpecError(f"soft_nms {name}: expected a number, a dict, True or None, got {value!r}")
    return cls(radius=radius, decays=tuple(terms))


_build_soft_nms.accepts_decays = True  # type: ignore[attr-defined]
_DEFAULT_DECAYS = {"spatial": 1.5, "similarity": 0.05}


@functools.lru_cache(maxsize=64)
def _window(radius: float, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(W, 2)`` long offsets of the disc of ``radius`` on ``device`` and ``(W,)`` their
    squared lengths in ``dtype``; cached, as every call with the same radius needs them."""
    offsets = disc_offsets(radius)
    return offsets.to(device), (offsets**2).sum(-1).to(device=device, dtype=dtype)


def _host_facts(scores: Tensor, layout: Layout, budget: Tensor) -> tuple[int, bool, tuple[int, int] | None]:
    """Greedy steps to run (the largest budget), whether a valid score is negative, and the
    largest region's (height, width), in ONE device-to-host read."""
    b = budget.shape[0]
    steps = budget.max() if b else budget.new_zeros(())
    negative = (scores < 0) & layout.valid
    shapes = layout.region_shapes.flatten(0, 1)
    largest = shapes.max(0).values if shapes.shape[0] else shapes.new_zeros(2)
    facts = torch.cat([steps.view(1), negative.any().long().view(1), largest.to(steps.dtype)]).tolist()
    return facts[0], bool(facts[1]), (facts[2], facts[3]) if shapes.shape[0] else None


@dataclass(frozen=True, repr=False)
class SoftNMS(Selector):
    """AdaptPrune's greedy Soft-NMS with spatial and key-similarity decay.

    ``radius`` in cells (None: whole region); ``decays`` multiply into the suppression
    factor (none at all: hard NMS inside the window).
    """

    radius: float | None = 5.0
    decays: tuple[Decay, ...] = field(default_factory=lambda: (SpatialDecay(1.5), SimilarityDecay(0.05)))
    #: Its first call compiles: soft_nms_cpu's C kernel on CPU tensors (built once), else
    #: the greedy steps through torch.compile (again for a new shape).
    compiles: ClassVar[bool] = True
    name = "soft_nms"
    build = classmethod(_build_soft_nms)

    def __post_init__(self) -> None:
        if self.radius is not None:
            _check_sigma("soft_nms radius", self.radius)
        for d in self.decays:
            if not isinstance(d, Decay):
                raise SpecError(f"soft_nms decays: expected tokenprune Decay terms, got {d!r}")

    @functools.cached_property
    def _checked_decays(self) -> tuple[Decay, ...]:
        # A plugin's factors are checked as they are made (built once: dynamo guards on them).
        return tuple(d if is_trusted(d) else CheckedDecay(d) for d in self.decays)

    @functools.cached_property
    def _needs_keys(self) -> bool:
        return "keys" in self.all_requires()

    @functools.cached_property
    def _native_sigmas(self) -> tuple[float | None, float | None] | None:
        """(spatial, similarity) sigmas where the decays are at most one of each of the
        two built-in terms (what the CPU kernel computes), else None."""
        kinds = [type(d) for d in self.decays]
        if self.radius is None or any(k not in (SpatialDecay, SimilarityDecay) for k in kinds):
            return None
        if len(set(kinds)) != len(kinds):
            return None
        sigma = {type(d): d.sigma for d in self.decays}
        return sigma.get(SpatialDecay), sigma.get(SimilarityDecay)

    def all_requires(self) -> frozenset[str]:
        out = self.requires
        for d in self.decays:
            out |= d.all_requires()
        return out

    def params(self) -> dict[str, object]:
        out: dict[str, object] = {"radius": self.radius}
        present = {d.name for d in self.decays}
        for default in ("spatial", "similarity"):
            if default not in present:
                out[default] = None
        for d in self.decays:
            p = d.params()
            out[d.name] = next(iter(p.values())) if len(p) == 1 else (p or True)
        return out

    def self_checked(self, cues: Cues) -> frozenset[str]:
        # The C kernel reads every key for the similarity decay: it checks them in that pass.
        return frozenset({"keys"}) if self._needs_keys else frozenset()

    def checked_call(self, scores: Tensor, cues: Cues, budget: Tensor, names: frozenset[str]) -> Selection:
        return self._select(scores, cues, budget, check_keys="keys" in names)

    def __call__(self, scores: Tensor, cues: Cues, budget: Tensor) -> Selection:
        return self._select(scores, cues, budget, check_keys=False)

    def _select(self, scores: Tensor, cues: Cues, budget: Tensor, check_keys: bool) -> Selection:
        layout = cues.layout
        dtype = scores.dtype
        keys = inv = None
        if self._needs_keys:
            keys = cues.require("keys", self.name)
        sigmas = self._native_sigmas
        if sigmas is not None and soft_nms_cpu.applies(scores, keys):
            # Keys are needed here only by the similarity decay, which the kernel reads them for.
            done = soft_nms_cpu.run(scores, layout, budget, keys, self.radius, *sigmas, check_keys=check_keys)
            if done is not None:
                indices, mask, final = done
                return Selection(indices=indices, mask=mask, scores=final)
        if check_keys:  # the torch steps: no kernel, or it gave way before reading the keys
            check_finite("keys", keys, layout.valid)
        if keys is not None:
            inv = key_inv_norm(keys, dtype)
        steps, negative, largest = _host_facts(scores, layout, budget)
        if negative:
            raise soft_nms_cpu.negative_score_error(scores, layout.valid)
        grid = cell_grid(layout) if self.radius is not None else None
        across = frame_distance = None
        reach = max((d.frame_reach() for d in self.decays), default=0)
        if reach and layout.region_frames is not None:
            across = frame_neighbors(layout, grid if grid is not None else cell_grid(layout), reach)
            frame_distance = frame_offsets(reach).abs().to(device=scores.device, dtype=dtype)
        if self.radius is not None:
            offsets, distance2 = _window(_useful_radius(self.radius, largest), scores.device, dtype)
            if across is not None:
                frame_distance = torch.cat([distance2.new_zeros(offsets.shape[0]), frame_distance])
            run = _window_steps
            args = (grid, offsets, distance2, keys, inv, self._checked_decays, across, frame_distance)
        else:
            coords = torch.nan_to_num(layout.coords).to(dtype)
            regions = torch.where(layout.placed, layout.regions, -1)
            if across is not None:
                frame_distance = torch.cat([coords.new_zeros(layout.num_tokens), frame_distance])
            run, args = _dense_steps, (coords, regions, keys, inv, self._checked_decays, across, frame_distance)
        taken = torch.zeros_like(layout.valid)
        remaining = budget.clone()
        kept = []
        for _ in range(0, steps, UNROLL):
            scores, taken, remaining, index = run(scores, taken, remaining, *args)
            kept.append(index)
        order = torch.cat(kept, dim=1) if kept else budget.new_zeros(budget.shape[0], 0)
        take = torch.arange(order.shape[1], device=scores.device).unsqueeze(0) < budget.unsqueeze(1)
        # Steps past a sample's budget may repeat an index; counting keeps the mask exact.
        hits = torch.zeros(order.shape[0], layout.num_tokens, dtype=torch.long, device=scores.device)
        mask = hits.scatter_add(1, order, take.long()) > 0
        return Selection.from_mask(mask, scores)
