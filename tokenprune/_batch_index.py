"""Indexing a batch by sample: the one rule `Layout`, `Cues` and `Selection` share."""

from __future__ import annotations

__all__ = ["sample_slice"]


def sample_slice(index: int | slice, batch_size: int) -> slice:
    """The slice that selects ``index`` of a batch of ``batch_size``, keeping the batch dim.

    An int selects one sample (negative counts from the end) and must be in range, as
    for a list; a slice passes through.
    """
    if isinstance(index, slice):
        return index
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"index: expected an int or a slice, got {type(index).__name__}")
    if not -batch_size <= index < batch_size:
        raise IndexError(f"index: expected a sample in [-{batch_size}, {batch_size}), got {index}")
    index %= batch_size
    return slice(index, index + 1)
