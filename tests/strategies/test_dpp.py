"""dpp fast path (Cholesky updates) == greedy MAP by determinants, written plainly."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tokenprune
from tokenprune import CueError, Cues, Layout

from .draw import Given, layouts

DIM = 16


def ref_greedy_map(quality: list[float], features: list[torch.Tensor], valid: list[bool], k: int) -> list[int]:
    """Greedy MAP of the DPP with kernel L_ij = q_i cos(x_i, x_j) q_j, one sample, float64:
    k times, add the token j (first index on ties) that maximises det(L[S + j, S + j])."""

    def kernel(i, j):
        xi, xj = features[i], features[j]
        cos = float(xi @ xj) / (math.sqrt(float(xi @ xi)) * math.sqrt(float(xj @ xj)))
        return quality[i] * cos * quality[j]

    selected: list[int] = []
    for _ in range(k):
        best, best_det = None, -math.inf
        for j in (i for i, v in enumerate(valid) if v and i not in selected):
            subset = [*selected, j]
            matrix = torch.tensor([[kernel(a, c) for c in subset] for a in subset], dtype=torch.float64)
            det = float(torch.linalg.det(matrix))
            if det > best_det:
                best, best_det = j, det
        selected.append(best)
    return sorted(selected)


def _select(layout, quality, hidden, keep):
    pruner = tokenprune.Pruner(Given(quality), (), tokenprune.pruner("uniform | dpp", keep=1).selector, keep=keep)
    return pruner(Cues(layout, hidden=hidden))


@given(data=st.data())
def test_matches_greedy_map_by_determinants_float64(data):
    layout = data.draw(layouts(max_side=4))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    hidden = torch.randn(layout.batch_size, layout.num_tokens, DIM, generator=g, dtype=torch.float64)
    quality = torch.rand(layout.batch_size, layout.num_tokens, generator=g, dtype=torch.float64) + 0.1
    smallest = int(layout.num_valid().min())
    # At most DIM tokens: the kernel has rank <= DIM, so every step has a positive gain.
    keep = data.draw(st.integers(1, min(smallest, DIM, 8)))
    selection = _select(layout, quality, hidden, keep)
    for b in range(layout.batch_size):
        valid = layout.valid[b].tolist()
        expected = ref_greedy_map(quality[b].tolist(), list(hidden[b]), valid, keep)
        assert [i for i in selection.indices[b].tolist() if i >= 0] == expected


def test_an_exhausted_kernel_keeps_the_rest_by_quality():
    # Rank-2 features: two steps exhaust the kernel (every later gain is rounding noise),
    # so after the two DPP picks the rest go by quality, highest first.
    layout = Layout.stack([Layout.grid(4, 4), Layout.grid(3, 4)])
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 16, 2, generator=g, dtype=torch.float64)
    quality = torch.rand(2, 16, generator=g, dtype=torch.float64) + 0.1
    selection = _select(layout, quality, hidden, 10)
    for b, n in ((0, 16), (1, 12)):
        q = quality[b, :n].tolist()
        first = max(range(n), key=lambda i: (q[i], -i))
        unit = torch.nn.functional.normalize(hidden[b, :n], dim=-1)
        gains = [q[j] ** 2 * (1 - float(unit[j] @ unit[first]) ** 2) for j in range(n)]
        second = max((j for j in range(n) if j != first), key=lambda j: (gains[j], -j))
        rest = sorted((i for i in range(n) if i not in (first, second)), key=lambda i: (-q[i], i))[:8]
        assert selection.indices[b].tolist() == sorted([first, second, *rest])


def test_batch_equals_singles():
    layout = Layout.stack([Layout.grid(6, 6), Layout.grid(4, 5)])
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 36, 32, generator=g)
    quality = torch.rand(2, 36, generator=g)
    batch = _select(layout, quality, hidden, 0.25)
    for b in range(2):
        single = _select(layout[b], quality[b : b + 1], hidden[b : b + 1], 0.25)
        assert torch.equal(batch.indices[b, : single.indices.shape[1]], single.indices[0])


def test_negative_quality_is_refused():
    cues = Cues(Layout.grid(2, 2), hidden=torch.randn(1, 4, 3))
    with pytest.raises(CueError, match="scores: dpp .* needs them >= 0"):
        tokenprune.Pruner(Given(torch.tensor([[0.1, -0.2, 0.3, 0.4]])), (), tokenprune.pruner("uniform | dpp", keep=1).selector, keep=2)(cues)
