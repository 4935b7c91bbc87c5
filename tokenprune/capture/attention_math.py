"""Attention cues computed from one layer's post-RoPE queries and keys.

Pure tensor math, shared by every attention backend: the engine hands these functions
the ``query`` and ``key`` that transformers passes to its attention function, so the
cues match what the layer attended to without asking the backend for its weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["last_query_attention", "mean_query_attention"]

#: Queries per block in `mean_query_attention`: bounds the (B, H, C, L) score block.
_BLOCK = 128


def _grouped(query: Tensor, key: Tensor) -> Tensor:
    """``query (B, Hq, Q, d)`` viewed as ``(B, Hkv, Hq / Hkv, Q, d)`` for grouped-query keys."""
    b, hq, q, d = query.shape
    hkv = key.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads: expected a multiple of the {hkv} key heads, got {hq}")
    return query.reshape(b, hkv, hq // hkv, q, d)


def _probabilities(query: Tensor, key: Tensor, allowed: Tensor, scaling: float) -> Tensor:
    """Post-softmax attention in float32.

    Args:
        query: ``(B, Hq, Q, d)``; key: ``(B, Hkv, L, d)``.
        allowed: ``(B, Q, L)`` bool, keys each query may see.

    Returns:
        ``(B, Hq, Q, L)`` float32.
    """
    q = _grouped(query.float(), key)
    scores = torch.einsum("bhgqd,bhkd->bhgqk", q, key.float()) * scaling
    # finfo.min, not -inf: a query that sees nothing (padding) gets a finite, unused row.
    scores = scores.masked_fill(~allowed[:, None, None], torch.finfo(torch.float32).min)
    probabilities = scores.softmax(dim=-1)
    return probabilities.flatten(1, 2)


def last_query_attention(
    query: Tensor, key: Tensor, key_mask: Tensor, scaling: float, last: Tensor | None = None
) -> Tensor:
    """Attention of each sample's last real query to every key, mean over heads (FastV's cue).

    Args:
        query: ``(B, Hq, Q, d)`` post-RoPE queries; only row ``last[b]`` of sample b is used
            (``Q - 1`` for every sample when ``last`` is None).
        key: ``(B, Hkv, L, d)`` post-RoPE keys (grouped-query heads are shared).
        key_mask: ``(B, L)`` bool, False for padding keys.
        scaling: the softmax scale the layer uses.
        last: ``(B,)`` long, the query row of each sample (its last real token; a
            right-padded sample's is not ``Q - 1``).

    Returns:
        ``(B, L)`` float32, post-softmax, zero on padding keys and on keys after ``last``.
    """
    if last is None:
        rows = query[:, :, -1:]
        allowed = key_mask[:, None, :]
    else:
        index = last.view(-1, 1, 1, 1).expand(-1, query.shape[1], 1, query.shape[3])
        rows = query.gather(2, index)
        # Causal from the query's own row (in a prefill, query i sits at key i).
        causal = torch.arange(key.shape[2], device=key.device)[None] <= last[:, None]
        allowed = (key_mask & causal)[:, None, :]
    return _probabilities(rows, key, allowed, scaling).mean(dim=1)[:, 0]


def mean_query_attention(
    query: Tensor, key: Tensor, key_mask: Tensor, weights: Tensor, scaling: float
) -> Tensor:
    """Weighted mean over queries (and mean over heads) of causal attention to every key.

    Computed in blocks of queries, skipping blocks whose queries all have weight 0, so
    FitPrune's cues cost one pass over the rows they average.

    Args:
        query: ``(B, Hq, L, d)`` post-RoPE queries of the whole prompt.
        key: ``(B, Hkv, L, d)`` post-RoPE keys of the same positions.
        key_mask: ``(B, L)`` bool, False for padding.
        weights: ``(k, B, L)`` float, k sets of query weights (each row sums to 1, or is
            all zero for a sample without such queries).
        scaling: the softmax scale the layer uses.

    Returns:
        ``(k, B, L)`` float32: for each set, sum over queries i of ``weights[i]`` times
        the head-averaged attention of query i to each key (causal and padding masked).
    """
    length = key.shape[2]
    weights = weights.float()
    out = torch.zeros(weights.shape[0], key.shape[0], length, device=key.device)
    positions = torch.arange(length, device=key.device)
    for start in range(0, length, _BLOCK):
        stop = min(start + _BLOCK, length)
        block_weights = weights[:, :, start:stop]  # (k, B, C)
        if not bool(block_weights.any()):
            continue
        causal = positions[None, :] <= positions[start:stop, None]  # (C, L)
        allowed = causal[None] & key_mask[:, None, :]
        attention = _probabilities(query[:, :, start:stop], key, allowed, scaling).mean(dim=1)
        out += torch.einsum("kbc,bcl->kbl", block_weights, attention)
    return out
