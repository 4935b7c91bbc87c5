"""The engine's pure tensor pieces against plain references: compaction and the
attention cues computed from queries and keys."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from tokenprune.capture.attention_math import last_query_attention, mean_query_attention
from tokenprune.engine.compact import compaction, scatter_candidates

masks = st.integers(1, 4).flatmap(
    lambda b: st.integers(1, 12).flatmap(
        lambda n: st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=b, max_size=b)
    )
)


@given(masks)
def test_compaction_right_aligns_kept_tokens_in_order(rows):
    keep = torch.tensor(rows)
    plan = compaction(keep)
    assert plan.length == int(keep.sum(1).max())
    for b, row in enumerate(rows):
        kept = [i for i, k in enumerate(row) if k]
        pad = plan.length - len(kept)
        assert plan.source[b].tolist() == [-1] * pad + kept
        assert plan.mask[b].tolist() == [False] * pad + [True] * len(kept)
    x = torch.randn(1, keep.shape[1], 3)
    gathered = plan.gather(x)
    assert gathered.shape == (keep.shape[0], plan.length, 3)
    slots = plan.mask
    assert torch.equal(gathered[slots], x[0][plan.source[slots]])
    positions = plan.positions(torch.arange(keep.shape[1])[None] + 10)
    assert torch.equal(positions[slots], plan.source[slots] + 10)
    assert (positions[~slots] == 1).all()


@given(masks, st.data())
def test_scatter_candidates_marks_their_positions(rows, data):
    visual = torch.tensor(rows)
    b, length = visual.shape
    n = max(int(visual.sum(1).max()), 1)
    positions = torch.full((b, n), -1)
    chosen = torch.zeros(b, n, dtype=torch.bool)
    for i, row in enumerate(rows):
        where = [j for j, v in enumerate(row) if v]
        positions[i, : len(where)] = torch.tensor(where, dtype=torch.long)
        chosen[i] = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    out = scatter_candidates(chosen, positions, length)
    for i in range(b):
        expected = {int(p) for p, c in zip(positions[i], chosen[i]) if p >= 0 and c}
        assert set(out[i].nonzero().flatten().tolist()) == expected


def full_attention(query, key, mask2d, scaling):
    """Eager reference: ``(B, H, L, L)`` causal, padded softmax with repeated kv heads."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    scores = query @ key.transpose(-1, -2) * scaling
    length = key.shape[2]
    allowed = torch.ones(length, length).tril().bool()[None, None] & mask2d[:, None, None, :]
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return scores.softmax(-1)


@given(
    st.integers(1, 3),
    st.integers(2, 300),
    st.sampled_from([(4, 4), (4, 2), (6, 1)]),
    st.integers(0, 5),
)
def test_attention_cues_equal_the_full_matrix(batch, length, heads, seed):
    torch.manual_seed(seed)
    hq, hkv = heads
    query, key = torch.randn(batch, hq, length, 8), torch.randn(batch, hkv, length, 8)
    pad = torch.randint(0, length, (batch,))
    mask2d = torch.arange(length)[None] >= pad[:, None]  # left padding, last token real
    weights = full_attention(query, key, mask2d, 0.3)
    last = last_query_attention(query, key, mask2d, 0.3)
    torch.testing.assert_close(last, weights[:, :, -1].mean(1), atol=1e-6, rtol=0)
    assert (last[~mask2d] == 0).all()
    rows = torch.rand(2, batch, length) * mask2d
    rows = rows / rows.sum(-1, keepdim=True)
    expected = torch.einsum("kbq,bhql->kbl", rows, weights) / hq
    got = mean_query_attention(query, key, mask2d, rows, 0.3)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
