"""Normalise ``prune()``'s ``pruner`` / ``keep`` / ``layer`` arguments into a schedule: one
`Stage` per prune point, in the order the model reaches them."""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokenprune.adapters.base import Point
from tokenprune.errors import SpecError
from tokenprune.pruner import Pruner
from tokenprune.pruner import pruner as build_pruner
from tokenprune.selection import Keep

__all__ = ["POSITIONS", "Stage", "schedule"]

#: ``positions=`` values: kept tokens keep their position ids, or are renumbered.
POSITIONS = ("original", "compact")


@dataclass(frozen=True)
class Stage:
    """One prune point of a schedule.

    Attributes:
        point: ``"input"`` (the visual embeddings before decoder layer 0) or the first
            decoder layer that sees only this stage's survivors.
        pruner: the `Pruner`; its ``keep`` is a fraction of the sample's ORIGINAL visual
            tokens (or a count), whichever stage it runs at.
    """

    point: Point
    pruner: Pruner

    @property
    def order(self) -> int:
        """Where the model reaches the point: ``"input"`` first, then layers ascending."""
        return -1 if self.point == "input" else int(self.point)


def _resolve(spec: Any, keep: Keep | None, arg: str) -> Pruner:
    if isinstance(spec, Pruner):
        return spec if keep is None else spec.with_keep(keep)
    if isinstance(spec, str):
        return build_pruner(spec, keep=keep)
    raise SpecError(f"{arg}: expected a recipe name, spec string or tokenprune.Pruner, got {spec!r}")


def _point(value: Any, num_layers: int) -> Point:
    if isinstance(value, str) and value == "input":
        return "input"
    if (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and 0 <= int(value) < num_layers
    ):
        return int(value)
    raise SpecError(
        f"layer: expected 'input' or an int in [0, {num_layers - 1}] (the first of the "
        f"model's {num_layers} decoder layers to see only the kept tokens), got {value!r}"
    )


def schedule(
    pruner: Any, keep: Keep | None, layer: Any, num_layers: int
) -> tuple[Stage, ...]:
    """The stages of ``prune(model, pruner, keep, layer)``.

    ``layer`` is one point (``"input"`` or an int) with ``pruner`` / ``keep``, or a dict
    ``{point: value}`` of several, where ``value`` is ``(pruner, keep)``, a pruner (with
    ``keep=``), or a keep (with ``pruner=``).

    Raises:
        SpecError: a bad point, pruner or keep, no stage, or keeps that grow from one
            stage to the next (a later stage sees only the survivors of earlier ones).
    """
    if isinstance(layer, Mapping):
        if not layer:
            raise SpecError("layer: expected at least one prune point, got an empty dict")
        stages = []
        for point, value in layer.items():
            where = f"layer[{point!r}]"
            if isinstance(value, tuple):
                if len(value) != 2:
                    raise SpecError(f"{where}: expected (pruner, keep), got {value!r}")
                found = _resolve(value[0], value[1], where)
            elif isinstance(value, (str, Pruner)):
                found = _resolve(value, keep, where)
            elif isinstance(value, numbers.Real) and not isinstance(value, bool):
                if pruner is None:
                    raise SpecError(f"{where}: a keep of {value!r} needs pruner= for the stage")
                found = _resolve(pruner, value, where)
            else:
                raise SpecError(
                    f"{where}: expected (pruner, keep), a pruner or a keep, got {value!r}"
                )
            stages.append(Stage(_point(point, num_layers), found))
        stages.sort(key=lambda s: s.order)
    else:
        if pruner is None:
            raise SpecError("pruner: expected a recipe name, spec string or Pruner, got None")
        stages = [Stage(_point(layer, num_layers), _resolve(pruner, keep, "pruner"))]
    for before, after in itertools.pairwise(stages):
        a, b = before.pruner.keep, after.pruner.keep
        if (
            a is not None
            and b is not None
            and isinstance(a, numbers.Integral) == isinstance(b, numbers.Integral)
            and b > a
        ):
            raise SpecError(
                f"layer: expected each stage to keep at most what the stage before kept "
                f"(keeps are of the original visual tokens), got keep={a!r} at {before.point!r} "
                f"then keep={b!r} at {after.point!r}"
            )
    return tuple(stages)
