"""An example third-party tokenprune plugin.

After ``pip install``, ``power`` works in spec strings
(``"attention | power(exponent=2) | top_k"``), ``sharp_fastv`` is a recipe, and the
engine captures a new cue, ``values`` (the value vectors of the point layer), which the
new score ``value_norm`` reads (``"value_norm | top_k"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import tokenprune


@dataclass(frozen=True, repr=False)
class Power(tokenprune.Transform):
    """Raise non-negative scores to ``exponent`` (example plugin).

    An exponent above 1 sharpens the scores, below 1 flattens them.
    """

    exponent: float = 2.0
    name = "power"

    def __post_init__(self) -> None:
        if not self.exponent > 0:
            raise tokenprune.SpecError(f"power exponent: expected > 0, got {self.exponent!r}")

    def __call__(self, scores, cues):
        return scores.clamp(min=0) ** self.exponent


class Values(tokenprune.CueSource):
    """The point layer's value projection of its raw input (no norm), heads concatenated:
    ``(B, N, D)``. At ``layer="input"`` there is no layer yet, so the cue is refused."""

    names = ("values",)
    description = "point layer's v_proj of its raw input (B, N, D) (example plugin)"

    def check(self, point, adapter):
        if point == "input" or getattr(adapter.attention(point), "v_proj", None) is None:
            raise tokenprune.CueError(
                f"values: needs a decoder layer with v_proj, got point {point!r}"
            )

    def capture(self, capture):
        projection = capture.adapter.attention(capture.point).v_proj
        return {"values": projection(capture.per_candidate(capture.hidden))}


@dataclass(frozen=True, repr=False)
class ValueNorm(tokenprune.Score):
    """The L2 norm of each candidate's value vector."""

    name = "value_norm"
    requires = frozenset({"values"})

    def __call__(self, cues):
        return cues.require("values", by=self.name).float().norm(dim=-1)


@tokenprune.hookimpl
def tokenprune_strategies():
    # The class is the entry: name, kind (a Transform) and description come from it.
    return [
        Power,
        ValueNorm,
        tokenprune.Recipe(
            "sharp_fastv", "attention | power(exponent=2.0) | top_k", "FastV on squared attention"
        ),
    ]


@tokenprune.hookimpl
def tokenprune_cues():
    return [Values]
