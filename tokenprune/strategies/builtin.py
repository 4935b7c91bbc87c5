"""Built-in strategies and recipes, registered through the same hook as plugins."""

from __future__ import annotations

import difflib

from tokenprune.errors import SpecError
from tokenprune.hookspecs import hookimpl
from tokenprune.registry import Recipe, Strategy, get_registry
from tokenprune.strategies.scores import (
    AttentionScore,
    FitPruneScore,
    LastScore,
    NormScore,
    RandomScore,
)
from tokenprune.strategies.selectors import Drop, GridMax, GridRandom, Skip, TopK
from tokenprune.strategies.soft_nms import SimilarityDecay, SoftNMS, SpatialDecay
from tokenprune.strategies.transforms import AvgPool, Gaussian

_DEFAULT_DECAYS = {"spatial": 1.5, "similarity": 0.05}


def soft_nms(radius: float | None = 5.0, **decays: object) -> SoftNMS:
    """Build `SoftNMS` with decay terms given by name.

    Each keyword names a registered decay: a number is its first argument
    (``spatial=1.5``), a dict its keyword arguments, True its defaults, None or False
    leaves it out. Unnamed defaults: ``spatial=1.5, similarity=0.05`` (the authors').
    """
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
    return SoftNMS(radius=radius, decays=tuple(terms))


soft_nms.accepts_decays = True  # type: ignore[attr-defined]

_SCORE = "score"
_TRANSFORM = "transform"
_SELECTOR = "selector"
_DECAY = "decay"

STRATEGIES = [
    Strategy("attention", _SCORE, AttentionScore, "attention of the last prompt token, mean over heads (FastV)"),
    Strategy("random", _SCORE, RandomScore, "uniform random scores from cues.generator"),
    Strategy("last", _SCORE, LastScore, "sequence index: prefers the last tokens"),
    Strategy("norm", _SCORE, NormScore, "L2 norm of each token's hidden state"),
    Strategy("fitprune", _SCORE, FitPruneScore, "single-layer FitPrune: text-to-image times image self attention"),
    Strategy("gaussian", _TRANSFORM, Gaussian, "multiply by a centred Gaussian per region (AdaptPrune correction)"),
    Strategy("avg_pool", _TRANSFORM, AvgPool, "size x size stride-1 average of scores per region"),
    Strategy("top_k", _SELECTOR, TopK, "keep the highest scores"),
    Strategy("soft_nms", _SELECTOR, soft_nms, "AdaptPrune's greedy Soft-NMS with spatial and key-similarity decay"),
    Strategy("skip", _SELECTOR, Skip, "every other token of the top 2k"),
    Strategy("grid_max", _SELECTOR, GridMax, "best token per 3x3 block, then top k"),
    Strategy("grid_random", _SELECTOR, GridRandom, "one random token per 3x3 block, then top k"),
    Strategy("vtw", _SELECTOR, Drop, "keep no visual token (VTW)"),
    Strategy("spatial", _DECAY, SpatialDecay, "soft_nms decay exp(-d^2 / 2 sigma^2) of spatial distance"),
    Strategy("similarity", _DECAY, SimilarityDecay, "soft_nms decay exp(-(1 - cos)^2 / 2 sigma^2) of key cosine"),
]

RECIPES = [
    Recipe("fastv", "attention | top_k", "FastV: top-k attention (Table 4 (a))"),
    Recipe(
        "adaptprune",
        "attention | gaussian | soft_nms(radius=5.0, spatial=1.5, similarity=0.05)",
        "AdaptPrune: Gaussian correction + Soft-NMS with spatial and similarity decay (Table 4 (d))",
    ),
    Recipe("adaptprune_correction", "attention | gaussian | top_k", "AdaptPrune ablation: correction only (Table 4 (b))"),
    Recipe(
        "adaptprune_spatial",
        "attention | gaussian | soft_nms(radius=5.0, spatial=1.5, similarity=None)",
        "AdaptPrune ablation: correction + spatial decay (Table 4 (c))",
    ),
    Recipe("fitprune", "fitprune | top_k", "Table 5 (a): single-layer FitPrune"),
    Recipe("skip", "attention | skip", "Table 5 (b): every other token of the top 20% at keep 10%"),
    Recipe("random", "random | top_k", "Table 5 (c): uniformly random tokens"),
    Recipe("grid_random", "attention | grid_random", "Table 5 (d): random token per 3x3 block, then top-k attention"),
    Recipe("grid_max", "attention | grid_max", "Table 5 (e): best token per 3x3 block, then top-k"),
    Recipe("avg_pool", "attention | avg_pool | top_k", "Table 5 (f): 3x3 average-pooled attention, then top-k"),
    Recipe("last", "last | top_k", "Table 5 (g): the last tokens of the image sequence"),
    Recipe("vtw", "attention | vtw", "VTW: drop every visual token from the pruning layer on"),
]


@hookimpl
def tokenprune_strategies() -> list[Strategy | Recipe]:
    return [*STRATEGIES, *RECIPES]
