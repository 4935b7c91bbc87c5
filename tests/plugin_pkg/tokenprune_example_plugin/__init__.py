"""An example third-party tokenprune plugin.

After ``pip install``, ``power`` works in spec strings
(``"attention | power(exponent=2) | top_k"``) and ``sharp_fastv`` is a recipe.
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


@tokenprune.hookimpl
def tokenprune_strategies():
    # The class is the entry: name, kind (a Transform) and description come from it.
    return [
        Power,
        tokenprune.Recipe(
            "sharp_fastv", "attention | power(exponent=2.0) | top_k", "FastV on squared attention"
        ),
    ]
