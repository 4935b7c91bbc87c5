"""Recognising argument values, shared by the input checks."""

from __future__ import annotations

import operator

import torch
from torch import Tensor

__all__ = ["is_int"]


def is_int(value: object) -> bool:
    """True for Python, NumPy and 0-d integer tensor integers; False for bools, floats
    and everything else (so ``2.5`` and ``True`` are not taken for counts)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, Tensor):
        return value.dim() == 0 and not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool
    try:
        operator.index(value)
    except TypeError:
        return False
    return True
