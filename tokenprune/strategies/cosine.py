"""Cosine similarity between token features without an N x N matrix.

Shared by the diversity selectors (``divprune``, ``dpp``, ``dart``): each greedy step
needs the cosine of one token to all others, ``(B, N)``, which is one batched
matrix-vector product over the features and their inverse norms.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Features", "features", "nearest_other_distance"]

#: Entries of one ``(B, C, N)`` block of `nearest_other_distance` (8 MB in float32).
_BLOCK_ENTRIES = 2 << 20


class Features:
    """Token features in the compute dtype with their inverse L2 norms.

    Attributes:
        x: ``(B, N, D)`` features (the input itself when it has the compute dtype; a
            single converted copy otherwise).
        inv_norm: ``(B, N)`` ``1 / max(||x||, 1e-12)``: a zero vector has cosine 0 with
            every token, itself included.
    """

    def __init__(self, x: Tensor, inv_norm: Tensor) -> None:
        self.x = x
        self.inv_norm = inv_norm

    def cosine_to(self, index: Tensor) -> Tensor:
        """``(B, N)`` cosine of every token to token ``index[b]`` (``(B,)`` long)."""
        b, _, d = self.x.shape
        one = torch.gather(self.x, 1, index.view(b, 1, 1).expand(b, 1, d))  # (B, 1, D)
        dot = torch.bmm(self.x, one.transpose(1, 2)).squeeze(2)
        return dot * self.inv_norm * torch.gather(self.inv_norm, 1, index.view(b, 1))


def features(x: Tensor, dtype: torch.dtype) -> Features:
    """`Features` of ``x (B, N, D)`` in ``dtype`` (float32 or float64)."""
    x = x.to(dtype)
    norm = torch.linalg.vector_norm(x, dim=-1)
    return Features(x, 1.0 / norm.clamp(min=1e-12))


def nearest_other_distance(feats: Features, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Each token's nearest other valid token, computed in row blocks of at most ``2^21``
    entries.

    Args:
        feats: `Features` of the tokens.
        valid: ``(B, N)`` bool, False for padding (never a neighbour).

    Returns:
        ``(B, N)`` cosine distance ``1 - cos`` to it (+inf where there is none) and
        ``(B, N)`` long, its index (first on ties).
    """
    x, inv = feats.x, feats.inv_norm
    b, n, _ = x.shape
    rows = max(1, _BLOCK_ENTRIES // max(1, b * n))
    columns = torch.arange(n, device=x.device)
    distances, indices = [], []
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        cos = torch.bmm(x[:, start:stop], x.transpose(1, 2))
        cos = cos * inv[:, start:stop, None] * inv[:, None, :]
        itself = columns[start:stop, None] == columns[None, :]  # (C, N)
        excluded = itself[None] | ~valid[:, None, :]
        distance = (1.0 - cos).masked_fill(excluded, float("inf"))
        nearest = distance.min(dim=2)
        distances.append(nearest.values)
        indices.append(nearest.indices)
    if not distances:
        return x.new_zeros(b, 0), torch.zeros(b, 0, dtype=torch.long, device=x.device)
    return torch.cat(distances, dim=1), torch.cat(indices, dim=1)
