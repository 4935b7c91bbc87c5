"""Built-in strategies and recipes, registered through the same hook as plugins.

Every named stage class of the modules below registers itself (name, kind and
description come from the class); a new strategy module is one more entry here.
"""

from __future__ import annotations

from tokenprune.hookspecs import hookimpl
from tokenprune.registry import Recipe, stages_in
from tokenprune.strategies import (
    dart,
    divprune,
    dpp,
    guided,
    scores,
    selectors,
    soft_nms,
    transforms,
    visionzip,
)

MODULES = (scores, guided, transforms, selectors, soft_nms, divprune, dpp, dart, visionzip)

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
    Recipe(
        "adaptprune_video",
        "attention | gaussian | soft_nms(radius=5.0, spatial=1.5, similarity=0.05, temporal=1.0)",
        "AdaptPrune with temporal decay: suppression also reaches the same cell in the neighbouring video frames",
    ),
    Recipe("fitprune", "fitprune | top_k", "Table 5 (a): single-layer FitPrune"),
    Recipe("skip", "attention | skip", "Table 5 (b): every other token of the top 20% at keep 10%"),
    Recipe("random", "random | top_k", "Table 5 (c): uniformly random tokens"),
    Recipe("grid_random", "attention | grid_random", "Table 5 (d): random token per 3x3 block, then top-k attention"),
    Recipe("grid_max", "attention | grid_max", "Table 5 (e): best token per 3x3 block, then top-k"),
    Recipe("avg_pool", "attention | avg_pool | top_k", "Table 5 (f): 3x3 average-pooled attention, then top-k"),
    Recipe("last", "last | top_k", "Table 5 (g): the last tokens of the image sequence"),
    Recipe("vtw", "attention | vtw", "VTW: drop every visual token from the pruning layer on"),
    Recipe("divprune", "uniform | divprune", "DivPrune: the most diverse tokens (max-min cosine distance)"),
    Recipe("dart", "key_norm | dart(pivots=8)", "DART: pivots by key L1 norm, then the tokens least duplicated with them"),
    Recipe("cdpruner", "relevance | dpp", "CDPruner: conditional DPP of feature similarity and instruction relevance"),
    Recipe(
        "visionzip",
        "vision_attention | visionzip",
        "VisionZip: dominant tokens by the vision tower's CLS attention plus merged contextual tokens",
    ),
    Recipe(
        "pdrop",
        "attention | top_k",
        "PyramidDrop's ranking at each stage of tokenprune.schedules.pyramid(num_layers)",
    ),
    Recipe("sparsevlm", "rater_attention | top_k", "SparseVLM: top-k attention of the text raters (relevant text tokens)"),
]


@hookimpl
def tokenprune_strategies() -> list:
    return [*stages_in(*MODULES), *RECIPES]
