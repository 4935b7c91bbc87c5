"""dart fast path == the paper's pivot-then-deduplicate procedure, written plainly."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tokenprune
from tokenprune import Cues, Layout, SpecError

from .draw import keep_values, layouts
from .reference import ref_budget


def ref_dart(scores: list[float], features: list[torch.Tensor], valid: list[bool], k: int, pivots: int) -> list[int]:
    """DART, one sample, float64. Pivots: the P = min(pivots, k) highest scores (first
    index on ties). Then for each pivot in that order, share = (k - P) // P tokens (one
    more for the first (k - P) % P pivots): the not-yet-kept valid tokens with the lowest
    cosine similarity to the pivot, lower index first on ties."""

    def cosine(i, j):
        xi, xj = features[i], features[j]
        return float(xi @ xj) / (math.sqrt(float(xi @ xi)) * math.sqrt(float(xj @ xj)))

    candidates = [i for i, v in enumerate(valid) if v]
    count = min(pivots, k)
    pivot_list = sorted(candidates, key=lambda i: (-scores[i], i))[:count]
    kept = list(pivot_list)
    rest = k - count
    for p, pivot in enumerate(pivot_list):
        take = rest // count + (1 if p < rest % count else 0)
        open_tokens = [i for i in candidates if i not in kept]
        kept += sorted(open_tokens, key=lambda i: (cosine(pivot, i), i))[:take]
    return sorted(kept)


@given(data=st.data())
def test_matches_the_pivot_procedure_float64(data):
    layout = data.draw(layouts(max_side=6))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    hidden = torch.randn(layout.batch_size, layout.num_tokens, 5, generator=g, dtype=torch.float64)
    keys = torch.randn(layout.batch_size, layout.num_tokens, 4, generator=g, dtype=torch.float64)
    keep = data.draw(keep_values(layout))
    pivots = data.draw(st.integers(1, 6))
    selection = tokenprune.pruner(f"key_norm | dart(pivots={pivots})", keep=keep)(Cues(layout, keys=keys, hidden=hidden))
    for b in range(layout.batch_size):
        valid = layout.valid[b].tolist()
        norms = keys[b].abs().sum(-1).tolist()
        expected = ref_dart(norms, list(hidden[b]), valid, ref_budget(keep, sum(valid)), pivots)
        assert [i for i in selection.indices[b].tolist() if i >= 0] == expected


def test_recipe_and_bad_pivots():
    assert tokenprune.pruner("dart", keep=0.1).spec == "key_norm | dart(pivots=8)"
    with pytest.raises(SpecError, match="dart pivots: expected an int >= 1, got 0"):
        tokenprune.pruner("key_norm | dart(pivots=0)", keep=0.1)


def test_duplicates_of_a_pivot_are_dropped():
    # Token 0 is the pivot (largest key); tokens 1-3 copy it, 4-5 differ: keep 3 -> 0, 4, 5.
    keys = torch.tensor([[[9.0], [1.0], [1.0], [1.0], [1.0], [1.0]]])
    hidden = torch.tensor([[[1.0, 0.0]] * 4 + [[0.0, 1.0], [-1.0, 0.2]]])
    selection = tokenprune.pruner("key_norm | dart(pivots=1)", keep=3)(Cues(Layout.grid(2, 3), keys=keys, hidden=hidden))
    assert selection.indices.tolist() == [[0, 4, 5]]
