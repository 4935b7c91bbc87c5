"""Values derived from a `Layout`, remembered per layout object and per layout content.

A pruner called again on one layout (a batch pruned with several pruners, a benchmark, a
picture) reads its per-layout values (the Gaussian correction, the C kernel's inputs)
instead of rebuilding them from a few dozen small tensor ops at every call. The engine
builds a new layout at every prefill, of the same geometry when the prompts have the same
shape: a layout of CPU tensors also finds the values of an earlier layout whose tensors
hold the same bits (compared exactly, not by a digest), among the last `MAX_GEOMETRIES`.

A value remembered on a layout object is used only while every tensor of the layout is
the same object at the same version (torch's in-place version counter, the one autograd
checks): an in-place write such as ``layout.valid[0, 3] = False`` looks the layout up
again by its new content. Writes that bypass the version counter (through
``tensor.data`` or a NumPy view) are not seen on the object; layouts of inference tensors
(made under ``torch.inference_mode``, which keeps no version counter) are looked up by
content at every call. A value shared by content is a copy (every tensor in it cloned),
so that a later write to the layout it was computed from cannot reach it.
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import fields
from typing import TypeVar

import torch
from torch import Tensor

from tokenprune.layout import Layout

__all__ = ["MAX_GEOMETRIES", "layout_memo"]

T = TypeVar("T")

_tensors = operator.attrgetter(*(f.name for f in fields(Layout)))

#: Layout contents (geometries) whose values are kept for layouts of the same content,
#: least recently used dropped first; 0 shares nothing (benchmarks time the difference).
#: A LLaVA-1.5 geometry at B = 8 keeps about 0.2 MB.
MAX_GEOMETRIES = 8

_shared: OrderedDict[tuple, dict[Hashable, object]] = OrderedDict()
_shared_lock = threading.Lock()


class _Entry:
    """The remembered values of one layout and the tensors and versions they came from."""

    __slots__ = ("shared", "tensors", "values", "versions")

    def __init__(self, tensors: tuple[Tensor | None, ...], versions: tuple[int, ...] | None) -> None:
        self.tensors = tensors  # held, so that an identity check cannot meet a recycled id
        self.versions = versions
        content = _content(tensors) if MAX_GEOMETRIES > 0 else None
        self.shared = content is not None
        self.values: dict[Hashable, object] = {} if content is None else _values_of(content)


#: The attribute of a `Layout` that holds its `_Entry`: it lives and dies with the layout,
#: with no weak-reference bookkeeping for the many layouts used once (one per prefill).
SLOT = "_tokenprune_memo"


def _versions(tensors: tuple[Tensor | None, ...]) -> tuple[int, ...] | None:
    """The version of each tensor (-1 for None), or None if one keeps no version counter."""
    try:
        return tuple([-1 if t is None else t._version for t in tensors])
    except RuntimeError:  # an inference tensor
        return None


class _Bits:
    """The bytes of a tensor as a dict key: equal only to the very same bytes, hashed from
    the first 64 (hashing every byte of a B = 8 layout cost more than the lookup saves)."""

    __slots__ = ("data", "hash")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.hash = hash(data[:64])

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Bits) and self.data == other.data


def _content(tensors: tuple[Tensor | None, ...]) -> tuple | None:
    """An exact key of the tensors' contents: dtype, shape and the bits of every element
    in row-major order (so NaN matches NaN, and 0.0 does not match -0.0); None when a
    tensor is not on the CPU (reading it would wait for its device) or NumPy cannot show
    its dtype."""
    key: list[tuple | None] = []
    for t in tensors:
        if t is None:
            key.append(None)
            continue
        if not t.is_cpu:
            return None
        bits = t.view(torch.int16) if t.dtype == torch.bfloat16 else t  # NumPy has no bfloat16
        try:
            array = (bits.detach() if bits.requires_grad else bits).numpy()
        except (TypeError, RuntimeError):  # a dtype NumPy lacks (float8, ...): not shared
            return None
        key.append((t.dtype, t.shape, _Bits(array.tobytes())))
    return tuple(key)


def _values_of(content: tuple) -> dict[Hashable, object]:
    """The values shared by every layout of ``content``, the most recent `MAX_GEOMETRIES`."""
    with _shared_lock:
        values = _shared.get(content)
        if values is None:
            values = _shared[content] = {}
            while len(_shared) > MAX_GEOMETRIES:
                _shared.popitem(last=False)
        else:
            _shared.move_to_end(content)
        return values


def _copied(value: T) -> T:
    """``value`` with every tensor in it (itself, or the items of a tuple) cloned."""
    if isinstance(value, Tensor):
        return value.clone()  # type: ignore[return-value]
    if isinstance(value, tuple):
        return tuple(_copied(v) for v in value)  # type: ignore[return-value]
    return value


def layout_memo(layout: Layout, key: Hashable, compute: Callable[[], T]) -> T:
    """``compute()``, remembered under ``key`` for ``layout`` and for later layouts of the
    same content (see the module docstring). ``key`` names what is computed and every
    argument besides the layout that it depends on; ``compute`` reads nothing but the
    layout's tensors and those arguments and returns a tensor or a tuple of tensors; the
    caller must not modify the value."""
    tensors = _tensors(layout)
    versions = _versions(tensors)
    entry = vars(layout).get(SLOT) if versions is not None else None
    if entry is None or entry.versions != versions or not all(map(operator.is_, entry.tensors, tensors)):
        entry = _Entry(tensors, versions)
        if versions is not None:
            vars(layout)[SLOT] = entry  # not a field: Layout is frozen, its fields stay as they are
    values = entry.values
    if key not in values:
        values[key] = _copied(compute()) if entry.shared else compute()
    return values[key]  # type: ignore[return-value]
