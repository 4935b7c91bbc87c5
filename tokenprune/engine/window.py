"""Sliding-window attention in shortened layers.

A Mistral-style language model (``config.sliding_window`` set, no ``layer_types``) lets
each query see only keys fewer than ``sliding_window`` sequence indices back. A layer
that holds the kept tokens only must measure that distance between the tokens'
ORIGINAL indices, not between their slots in the shortened sequence (slots are closer
together). `window_mask_function` says so to transformers' mask builders as an
``and_mask_function``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["sliding_window_of", "slot_indices", "window_mask_function"]


def sliding_window_of(config: Any) -> int | None:
    """The window every decoder layer applies, or None (full attention, or per-layer
    ``layer_types``, which the engine checks on its own)."""
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "layer_types", None):
        return None
    return int(window)


def slot_indices(prompt: Tensor, prompt_length: int, total: int) -> Tensor:
    """``(B, total)`` long: the original sequence index of every slot of a shortened layer.

    Args:
        prompt: ``(B, L')`` long, the ``input_ids`` index of each prompt slot the layer
            holds (-1 for padding slots, whose keys the padding mask hides anyway).
        prompt_length: L, the prompt length of ``input_ids``.
        total: slots of the layer's sequence so far (prompt slots + generated tokens).
    """
    b, short = prompt.shape
    generated = torch.arange(prompt_length, prompt_length + total - short, device=prompt.device)
    return torch.cat([prompt.clamp(min=0), generated.expand(b, -1)], dim=1)


def window_mask_function(index: Tensor, window: int) -> Callable:
    """``and_mask_function``: query slot q may see key slot k iff
    ``index[b, q] - index[b, k] < window`` (``index (B, KV)`` from `slot_indices`)."""

    def inner(batch_idx: Tensor, head_idx: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return index[batch_idx, q_idx] - index[batch_idx, kv_idx] < window

    return inner
