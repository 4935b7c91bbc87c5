"""Indexing a batch by sample: the one rule `Layout`, `Cues` and `Selection` share."""

from __future__ import annotations

from tokenprune._values import is_int

__all__ = ["sample_slice"]


def sample_slice(index: int | slice, batch_size: int) -> slice:
    """The slice that selects ``index`` of a batch of ``batch_size``, keeping the batch dim.

    An int (Python, NumPy or a 0-d integer tensor) selects one sample (negative counts from the end) and must be in range, as
    for a list; a slice passes through.
    """
    if isinstance(index, slice):
        return index
    if not is_int(index):
        raise TypeError(f"index: expected an int or a slice, got {type(index).__name__}")
    index = int(index)
    if not -batch_size <= index < batch_size:
        raise IndexError(f"index: expected a sample in [-{batch_size}, {batch_size}), got {index}")
    index %= batch_size
    return slice(index, index + 1)
