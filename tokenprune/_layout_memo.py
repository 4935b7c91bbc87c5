"""Values derived from a `Layout`, remembered per layout object while its tensors stay the same.

A pruner called again on one layout (a batch pruned with several pruners, a benchmark, a
picture) reads its per-layout values (the Gaussian correction, the C kernel's inputs)
instead of rebuilding them from a few dozen small tensor ops at every call. A remembered
value is used only while every tensor of the layout is the same object at the same
version (torch's in-place version counter, the one autograd checks): an in-place write
such as ``layout.valid[0, 3] = False`` recomputes it. Writes that bypass the version
counter (through ``tensor.data`` or a NumPy view) are not seen; layouts of inference
tensors (made under ``torch.inference_mode``, which keeps no version counter) are never
remembered. The engine builds a new layout at every prefill, so there the values are
computed once per prefill as before; remembering costs a few attribute reads per call.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable
from dataclasses import fields
from typing import TypeVar

from torch import Tensor

from tokenprune.layout import Layout

__all__ = ["layout_memo"]

T = TypeVar("T")

_tensors = operator.attrgetter(*(f.name for f in fields(Layout)))


class _Entry:
    """The remembered values of one layout and the tensors and versions they came from."""

    __slots__ = ("tensors", "values", "versions")

    def __init__(self, tensors: tuple[Tensor | None, ...], versions: tuple[int, ...]) -> None:
        self.tensors = tensors  # held, so that an identity check cannot meet a recycled id
        self.versions = versions
        self.values: dict[Hashable, object] = {}


#: The attribute of a `Layout` that holds its `_Entry`: it lives and dies with the layout,
#: with no weak-reference bookkeeping for the many layouts used once (one per prefill).
SLOT = "_tokenprune_memo"


def _versions(tensors: tuple[Tensor | None, ...]) -> tuple[int, ...] | None:
    """The version of each tensor (-1 for None), or None if one keeps no version counter."""
    try:
        return tuple([-1 if t is None else t._version for t in tensors])
    except RuntimeError:  # an inference tensor
        return None


def layout_memo(layout: Layout, key: Hashable, compute: Callable[[], T]) -> T:
    """``compute()``, remembered for ``layout`` under ``key`` while the layout's tensors
    are unchanged (see the module docstring). ``key`` names what is computed and every
    argument besides the layout that it depends on; the caller must not modify the value."""
    tensors = _tensors(layout)
    versions = _versions(tensors)
    if versions is None:
        return compute()
    entry = vars(layout).get(SLOT)
    if entry is None or entry.versions != versions or not all(map(operator.is_, entry.tensors, tensors)):
        entry = _Entry(tensors, versions)
        vars(layout)[SLOT] = entry  # not a field: Layout is frozen, its fields stay as they are
    if key not in entry.values:
        entry.values[key] = compute()
    return entry.values[key]  # type: ignore[return-value]
