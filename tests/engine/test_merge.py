"""merge_into_kept: a kept slot holds the weighted sum of its group, nothing else moves."""

from __future__ import annotations

import torch

from tokenprune.engine.merge import merge_into_kept


def test_groups_are_summed_at_their_target_slot():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    # Sample 0: candidates at slots 1..5; candidate 1 is kept alone, 3 absorbs 0 and 4, 2 is dropped.
    # Sample 1: candidates at slots 2..4 and one padding candidate; 0 absorbs 1 and 2.
    slots = torch.tensor([[1, 2, 3, 4, 5], [2, 3, 4, -1, -1]])
    into = torch.tensor([[3, 1, -1, 3, 3], [0, 0, 0, -1, -1]])
    weight = torch.tensor([[0.5, 1.0, 0.0, 1.0, 0.5], [1 / 3, 1 / 3, 1 / 3, 0.0, 0.0]], dtype=torch.float64)
    out = merge_into_kept(hidden, into, weight, slots)
    expected = hidden.clone()
    expected[0, 4] = hidden[0, 4] + 0.5 * hidden[0, 1] + 0.5 * hidden[0, 5]
    expected[1, 2] = (hidden[1, 2] + hidden[1, 3] + hidden[1, 4]) / 3
    torch.testing.assert_close(out, expected, rtol=1e-15, atol=1e-15)
    assert torch.equal(out[0, 2], hidden[0, 2])  # kept alone with weight 1: the same bits
