"""Multi-stage schedules for ``tokenprune.prune(model, layer=...)``.

``pyramid`` is PyramidDrop's (Xing et al., 2024): the language model is split into
``stages`` equal parts and each part after the first keeps ``ratio`` times the visual
tokens of the one before, ranked by the recipe ``pdrop`` (FastV's ranking: the last prompt
token's attention, top-k).

    >>> from tokenprune.schedules import pyramid, sparsevlm
    >>> pyramid(32)
    {8: ('pdrop', 0.5), 16: ('pdrop', 0.25), 24: ('pdrop', 0.125)}

``sparsevlm`` is SparseVLM's LLaVA-1.5 setting (Zhang et al., 2025, as the authors' code
sets it): three stages at decoder layers 2, 6 and 15, each keeping a fixed count of the
576 visual tokens, ranked by the recipe ``sparsevlm`` (the text raters' attention).

    >>> sparsevlm(192)
    {2: ('sparsevlm', 300), 6: ('sparsevlm', 200), 15: ('sparsevlm', 110)}
"""

from __future__ import annotations

import math
import numbers

from tokenprune.errors import SpecError

__all__ = ["SPARSEVLM_TOKENS", "pyramid", "sparsevlm"]

#: SparseVLM's kept visual tokens at decoder layers 2, 6 and 15 of LLaVA-1.5 (576 tokens)
#: for each average budget the paper reports (the authors' code, version 1.0).
SPARSEVLM_TOKENS: dict[int, tuple[int, int, int]] = {
    192: (300, 200, 110),
    128: (303, 110, 36),
    96: (238, 48, 26),
    64: (66, 30, 17),
}
SPARSEVLM_LAYERS = (2, 6, 15)


def pyramid(
    num_layers: int, stages: int = 4, ratio: float = 0.5, pruner: str = "pdrop"
) -> dict[int, tuple[str, float]]:
    """PyramidDrop's geometric schedule: ``{layer: (pruner, keep)}`` for ``prune(layer=...)``.

    Stage s (1 .. stages-1) starts at decoder layer ``s * num_layers // stages`` and keeps
    ``ratio ** s`` of the ORIGINAL visual tokens (floored per sample, as every keep).
    The defaults are the paper's LLaVA setting: 4 stages, ratio 0.5 (for LLaVA-1.5's 32
    layers: layers 8, 16, 24 keep 288, 144, 72 of 576).

    Args:
        num_layers: decoder layers of the language model.
        stages: parts of the model, >= 2 (the first keeps every token).
        ratio: kept share of each stage relative to the one before, in (0, 1].
        pruner: the recipe or spec string each stage ranks with (``pdrop``:
            ``attention | top_k``).
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, numbers.Integral) or num_layers < 2:
        raise SpecError(f"num_layers: expected an int >= 2, got {num_layers!r}")
    if isinstance(stages, bool) or not isinstance(stages, numbers.Integral) or not 2 <= stages <= num_layers:
        raise SpecError(f"stages: expected an int in [2, {num_layers}] (num_layers), got {stages!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not (0 < ratio <= 1 and math.isfinite(ratio)):
        raise SpecError(f"ratio: expected a fraction in (0, 1], got {ratio!r}")
    return {s * int(num_layers) // int(stages): (pruner, float(ratio) ** s) for s in range(1, int(stages))}


def sparsevlm(budget: int = 192, pruner: str = "sparsevlm") -> dict[int, tuple[str, int]]:
    """SparseVLM's schedule for LLaVA-1.5: ``{layer: (pruner, count)}`` for
    ``prune(layer=...)``, counts of the 576 visual tokens kept at layers 2, 6 and 15
    (`SPARSEVLM_TOKENS`). Written for LLaVA-1.5-7B's 576 tokens and 32 layers; on another
    model, write the dict yourself.

    Args:
        budget: the average kept-token budget it is named by: 192, 128, 96 or 64.
        pruner: the recipe or spec string each stage ranks with (``sparsevlm``:
            ``rater_attention | top_k``).
    """
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget not in SPARSEVLM_TOKENS:
        raise SpecError(f"budget: expected one of {sorted(SPARSEVLM_TOKENS)}, got {budget!r}")
    return dict(zip(SPARSEVLM_LAYERS, ((pruner, count) for count in SPARSEVLM_TOKENS[budget])))
