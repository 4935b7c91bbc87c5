"""Base classes of the three stages of a pruner (score, transform, selector) and of
the decay terms of ``soft_nms``. Strategies are pure functions of tensors."""

from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

if TYPE_CHECKING:
    from tokenprune.cues import Cues
    from tokenprune.selection import Selection

__all__ = ["Decay", "DecayContext", "Score", "Selector", "Stage", "Transform"]


def _first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring on one line ("" without one)."""
    text = inspect.cleandoc(doc or "")
    return " ".join(text.split("\n\n", 1)[0].replace("``", "").split())


class Stage:
    """Common behaviour: a registered ``name``, the cues it ``requires``, and a repr that
    is a valid spec string (``gaussian(sigma=12.0)``).

    A stage class is its own registry entry: ``name`` is what spec strings call it,
    ``kind`` comes from the base class it subclasses (`Score`, `Transform`, `Selector`,
    `Decay`) and ``description`` is the first paragraph of its docstring unless the
    class sets one. A plugin returns the class from its ``tokenprune_strategies`` hook;
    spec arguments are the constructor's, or those of a classmethod ``build`` where
    they differ (``soft_nms`` takes its decay terms by name).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "description" not in vars(cls):
            cls.description = _first_paragraph(cls.__doc__)

    def params(self) -> dict[str, object]:
        """Keyword arguments that rebuild this stage from its registered factory."""
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return {}

    def all_requires(self) -> frozenset[str]:
        """Cues this stage needs, its parts included."""
        return self.requires

    def __repr__(self) -> str:
        params = self.params()
        if not params:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")"


class Score(Stage):
    """Cues -> ``(B, N)`` scores (higher = more worth keeping)."""

    kind = "score"

    def __call__(self, cues: Cues) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class Transform(Stage):
    """``(B, N)`` scores -> ``(B, N)`` scores, with the cues (e.g. the layout) at hand."""

    kind = "transform"

    def __call__(self, scores: Tensor, cues: Cues) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class Selector(Stage):
    """``(B, N)`` scores + cues + ``(B,)`` budget -> `Selection`.

    ``uses_budget = False`` marks selectors that ignore ``keep`` (e.g. ``vtw``).
    """

    kind = "selector"

    uses_budget: ClassVar[bool] = True

    def __call__(self, scores: Tensor, cues: Cues, budget: Tensor) -> Selection:  # pragma: no cover
        raise NotImplementedError

    def self_checked(self, cues: Cues) -> frozenset[str]:
        """Cues that `checked_call` checks as it reads them, with the errors of
        `tokenprune.finite.check_finite`, so that ``pruner(cues)`` does not read them once
        more beforehand (a selector that reads a cue in full anyway). Default: none."""
        return frozenset()

    def checked_call(self, scores: Tensor, cues: Cues, budget: Tensor, names: frozenset[str]) -> Selection:
        """``self(scores, cues, budget)`` that also refuses a NaN/inf or overflowing cue
        among ``names`` (a subset of `self_checked`) as `check_finite` does."""
        return self(scores, cues, budget)


@dataclasses.dataclass(frozen=True)
class DecayContext:
    """What a decay term sees at one step of ``soft_nms``, for B samples and W window
    candidates around each sample's newly kept token.

    Attributes:
        kept: ``(B,)`` long, the token kept at this step.
        candidates: ``(B, W)`` long, window tokens (clamped to a valid index where
            ``in_window`` is False; their factors are ignored).
        in_window: ``(B, W)`` bool.
        distance2: ``(B, W)`` squared spatial distance in cells to the kept token (0 for
            the same cell in another frame).
        keys: ``(B, N, D)`` the key cue, or None.
        key_inv_norm: ``(B, N)`` 1 / ||key|| in the compute dtype, or None.
        dtype: the compute dtype (float32, or float64 for float64 scores).
        frame_distance: ``(B, W)`` frames between a candidate and the kept token: 0 in the
            kept token's own region, ``|df|`` for the same cell ``df`` frames away (present
            only when a term reaches other frames, see `Decay.frame_reach`), else None.
    """

    kept: Tensor
    candidates: Tensor
    in_window: Tensor
    distance2: Tensor
    keys: Tensor | None
    key_inv_norm: Tensor | None
    dtype: object
    frame_distance: Tensor | None = None


class Decay(Stage):
    """One factor of ``soft_nms``'s suppression: ``(B, W)`` values in [0, 1]. The factors
    of all terms multiply into D and a window token's score becomes ``s * (1 - D)``."""

    kind = "decay"

    def frame_reach(self) -> int:
        """How many frames away this term reaches: the window of ``soft_nms`` then also
        holds the kept token's cell in the frames of its video up to that many frames
        away (see ``Layout.region_frames``). 0: the kept token's own region only."""
        return 0

    def __call__(self, ctx: DecayContext) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError
