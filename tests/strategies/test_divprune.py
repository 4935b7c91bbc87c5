"""divprune fast path == the paper's greedy max-min diversity algorithm, written plainly."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import tokenprune
from tokenprune import Cues, Layout

from .draw import keep_values, layouts
from .reference import ref_budget


def ref_divprune(features: list[torch.Tensor], valid: list[bool], k: int) -> list[int]:
    """DivPrune, one sample, float64: d(i, j) = 1 - cos(x_i, x_j). The first token is
    the one whose nearest other token is farthest; then, k - 1 times, the token whose
    nearest selected token is farthest. First index on ties."""

    def distance(i, j):
        # d is symmetric: compute each pair once, so d(i, j) == d(j, i) to the bit.
        xi, xj = features[min(i, j)], features[max(i, j)]
        return 1.0 - float(xi @ xj) / (math.sqrt(float(xi @ xi)) * math.sqrt(float(xj @ xj)))

    candidates = [i for i, v in enumerate(valid) if v]
    selected: list[int] = []
    for _ in range(k):
        best, best_value = None, -math.inf
        for i in candidates:
            if i in selected:
                continue
            others = selected if selected else [j for j in candidates if j != i]
            value = min((distance(i, j) for j in others), default=math.inf)
            if value > best_value:
                best, best_value = i, value
        selected.append(best)
    return sorted(selected)


def _features(layout: Layout, seed: int, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(layout.batch_size, layout.num_tokens, dim, generator=g, dtype=torch.float64)


@given(data=st.data())
def test_matches_the_greedy_algorithm_float64(data):
    layout = data.draw(layouts(max_side=6))
    hidden = _features(layout, data.draw(st.integers(0, 2**31 - 1)), 5)
    keep = data.draw(keep_values(layout))
    selection = tokenprune.pruner("uniform | divprune", keep=keep)(Cues(layout, hidden=hidden))
    for b in range(layout.batch_size):
        valid = layout.valid[b].tolist()
        expected = ref_divprune(list(hidden[b]), valid, ref_budget(keep, sum(valid)))
        assert [i for i in selection.indices[b].tolist() if i >= 0] == expected


def test_batch_equals_singles_and_blocks_do_not_matter(monkeypatch):
    from tokenprune.strategies import cosine

    layout = Layout.stack([Layout.grid(7, 9), Layout.grid(5, 5)])
    hidden = torch.randn(2, 63, 16, generator=torch.Generator().manual_seed(3))
    pruner = tokenprune.pruner("divprune", keep=0.2)
    batch = pruner(Cues(layout, hidden=hidden))
    for b in range(2):
        single = pruner(Cues(layout[b], hidden=hidden[b : b + 1]))
        n = single.indices.shape[1]
        assert torch.equal(batch.indices[b, :n], single.indices[0])
    monkeypatch.setattr(cosine, "_BLOCK_ENTRIES", 7)  # blocks of one row
    assert torch.equal(pruner(Cues(layout, hidden=hidden)).indices, batch.indices)


def test_duplicates_are_not_kept_twice():
    # Four copies of two directions: two kept tokens must be one of each.
    hidden = torch.tensor([[[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4])
    selection = tokenprune.pruner("divprune", keep=2)(Cues(Layout.grid(2, 4), hidden=hidden))
    kept = selection.indices[0].tolist()
    assert len(set(kept)) == 2 and kept[0] < 4 <= kept[1]


def test_half_precision_hidden_states_are_compared_in_float32():
    hidden = torch.randn(1, 36, 8, generator=torch.Generator().manual_seed(0))
    layout = Layout.grid(6, 6)
    full = tokenprune.pruner("divprune", keep=6)(Cues(layout, hidden=hidden))
    half = tokenprune.pruner("divprune", keep=6)(Cues(layout, hidden=hidden.to(torch.bfloat16)))
    assert full.scores.dtype == half.scores.dtype == torch.float32
    assert half.indices.shape == (1, 6)
