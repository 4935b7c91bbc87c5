"""top_k, skip, grid_max, grid_random, vtw and the scores/transforms against references."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

import tokenprune
from tokenprune import Cues, Layout
from tokenprune.strategies.scores import LastScore
from tokenprune.strategies.selectors import Drop, GridMax, GridRandom, Skip, TopK
from tokenprune.strategies.transforms import AvgPool, Gaussian

from .draw import Given, keep_values, layouts, scores_for
from .reference import (
    ref_avg_pool,
    ref_budget,
    ref_gaussian,
    ref_grid,
    ref_skip,
    ref_top_k,
    tokens_of,
)


def _select(selector, layout, scores, keep, transforms=(), generator=None):
    return tokenprune.Pruner(Given(scores), transforms, selector, keep=keep)(Cues(layout, generator=generator))


def _rows(selection):
    return [[i for i in row if i >= 0] for row in selection.indices.tolist()]


def _shapes(layout, b):
    return [tuple(s) for s in layout.region_shapes[b].tolist()]


@given(data=st.data())
def test_top_k_matches_reference(data):
    layout = data.draw(layouts())
    scores = data.draw(scores_for(layout, ties=data.draw(st.booleans())))
    keep = data.draw(keep_values(layout))
    got = _rows(_select(TopK(), layout, scores, keep))
    for b in range(layout.batch_size):
        k = ref_budget(keep, int(layout.valid[b].sum()))
        assert got[b] == ref_top_k(scores[b].tolist(), tokens_of(layout, b), k)


@given(data=st.data())
def test_skip_matches_reference(data):
    layout = data.draw(layouts())
    scores = data.draw(scores_for(layout, ties=data.draw(st.booleans())))
    keep = data.draw(keep_values(layout))
    stride = data.draw(st.integers(1, 3))
    got = _rows(_select(Skip(stride), layout, scores, keep))
    for b in range(layout.batch_size):
        k = ref_budget(keep, int(layout.valid[b].sum()))
        assert got[b] == ref_skip(scores[b].tolist(), tokens_of(layout, b), k, stride)


def test_skip_keeps_every_other_of_the_top_20_percent():
    layout = Layout.grid(24, 24)
    scores = torch.arange(576, 0, -1, dtype=torch.float64).unsqueeze(0)  # rank r = index r
    got = _select(Skip(), layout, scores, 0.1).indices[0].tolist()
    assert got == list(range(0, 114, 2))  # 57 of the top 115 (20%), every other


@given(data=st.data())
def test_grid_max_matches_reference(data):
    layout = data.draw(layouts())
    scores = data.draw(scores_for(layout, ties=data.draw(st.booleans())))
    keep = data.draw(keep_values(layout))
    cell = data.draw(st.integers(1, 4))
    got = _rows(_select(GridMax(cell), layout, scores, keep))
    for b in range(layout.batch_size):
        k = ref_budget(keep, int(layout.valid[b].sum()))
        s = scores[b].tolist()
        assert got[b] == ref_grid(s, s, tokens_of(layout, b), k, cell)


@given(data=st.data())
def test_grid_random_matches_reference_with_the_same_draws(data):
    layout = data.draw(layouts())
    scores = data.draw(scores_for(layout))
    keep = data.draw(keep_values(layout))
    seed = data.draw(st.integers(0, 1000))
    got = _rows(_select(GridRandom(), layout, scores, keep, generator=torch.Generator().manual_seed(seed)))
    draws = torch.rand(scores.shape, generator=torch.Generator().manual_seed(seed), dtype=scores.dtype)
    for b in range(layout.batch_size):
        k = ref_budget(keep, int(layout.valid[b].sum()))
        assert got[b] == ref_grid(scores[b].tolist(), draws[b].tolist(), tokens_of(layout, b), k)


def test_grid_max_keeps_one_token_per_block_when_budget_allows():
    layout = Layout.grid(24, 24)
    scores = torch.rand(1, 576, generator=torch.Generator().manual_seed(1))
    kept = _select(GridMax(), layout, scores, 57).indices[0]
    blocks = (kept // 24 // 3) * 8 + (kept % 24) // 3
    assert blocks.unique().numel() == 57


@given(data=st.data())
def test_gaussian_matches_reference(data):
    layout = data.draw(layouts())
    sigma = data.draw(st.sampled_from([None, 12.0, 2.5]))
    ones = torch.ones(layout.batch_size, layout.num_tokens, dtype=torch.float64)
    got = Gaussian(sigma)(ones, Cues(layout))
    for b in range(layout.batch_size):
        expected = ref_gaussian(tokens_of(layout, b), _shapes(layout, b), sigma)
        valid = layout.valid[b]
        torch.testing.assert_close(got[b][valid], torch.tensor(expected, dtype=torch.float64)[valid])


def test_gaussian_reproduces_the_authors_grid():
    """sigma 12 on linspace(-12, 12, 24), divided by its max: centre 1, edge middles
    0.607, corners 0.369 (DESIGN.md)."""
    g = Gaussian()(torch.ones(1, 576), Cues(Layout.grid(24, 24)))[0].view(24, 24)
    lin = torch.linspace(-12, 12, 24)
    authors = torch.exp(-(lin[:, None] ** 2 + lin[None, :] ** 2) / (2 * 12**2))
    torch.testing.assert_close(g, authors / authors.max())
    assert float(g[11, 11]) == 1.0
    assert abs(float(g[0, 0]) - 0.369) < 1e-3 and abs(float(g[11, 0]) - 0.607) < 1e-3


@given(data=st.data())
def test_avg_pool_matches_reference(data):
    layout = data.draw(layouts())
    scores = data.draw(scores_for(layout))
    size = data.draw(st.sampled_from([1, 3, 5, 41]))  # 41: wider than any drawn region (capped)
    got = AvgPool(size)(scores, Cues(layout))
    for b in range(layout.batch_size):
        expected = ref_avg_pool(scores[b].tolist(), tokens_of(layout, b), size)
        valid = layout.valid[b]
        torch.testing.assert_close(got[b][valid], torch.tensor(expected, dtype=torch.float64)[valid])


def test_avg_pool_wider_than_every_region_is_the_region_mean():
    # size=10001 would look up 10^8 offsets per token; capped at the longest region side
    # it is the mean of each token's whole region, computed in a blink.
    layout = Layout.regions_of([(24, 24), (5, 9)], batch=2)
    scores = torch.rand(2, layout.num_tokens, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pooled = AvgPool(10001)(scores, Cues(layout))
    for region in (0, 1):
        inside = layout.regions == region
        expected = (scores * inside).sum(1, keepdim=True) / inside.sum(1, keepdim=True)
        torch.testing.assert_close(pooled[inside], expected.expand_as(scores)[inside])


def test_avg_pool_on_an_empty_batch():
    layout = Layout.grid(4, 4, batch=2)[0:0]
    selection = tokenprune.pruner("avg_pool", keep=3)(Cues(layout, attention=torch.rand(0, 16)))
    assert selection.mask.shape == (0, 16)


@given(data=st.data())
def test_last_keeps_the_tail_whatever_the_attention(data):
    layout = data.draw(layouts())
    keep = data.draw(keep_values(layout))
    attention = data.draw(scores_for(layout))
    perm = torch.randperm(layout.num_tokens, generator=torch.Generator().manual_seed(0))
    pruner = tokenprune.pruner("last", keep=keep)
    a = pruner(Cues(layout, attention=attention))
    b = pruner(Cues(layout, attention=attention[:, perm]))
    assert torch.equal(a.indices, b.indices)
    for i in range(layout.batch_size):
        n = int(layout.valid[i].sum())
        k = ref_budget(keep, n)
        assert [j for j in a.indices[i].tolist() if j >= 0] == list(range(n - k, n))


@given(seed=st.integers(0, 2**20), data=st.data())
def test_random_is_seeded_and_ignores_scores(seed, data):
    layout = data.draw(layouts())
    keep = data.draw(keep_values(layout))
    pruner = tokenprune.pruner("random", keep=keep)

    def run(attention):
        return pruner(Cues(layout, attention=attention, generator=torch.Generator().manual_seed(seed))).indices

    first = run(torch.rand(layout.batch_size, layout.num_tokens))
    assert torch.equal(first, run(torch.rand(layout.batch_size, layout.num_tokens)))
    for b in range(layout.batch_size):
        kept = first[b][first[b] >= 0]
        assert kept.numel() == ref_budget(keep, int(layout.valid[b].sum()))
        assert bool(layout.valid[b, kept].all())


def test_random_differs_across_seeds():
    layout = Layout.grid(24, 24)
    pruner = tokenprune.pruner("random", keep=0.1)
    picks = {
        tuple(pruner(Cues(layout, generator=torch.Generator().manual_seed(s))).indices[0].tolist()) for s in range(4)
    }
    assert len(picks) == 4


def test_vtw_keeps_nothing_and_needs_no_keep():
    layout = Layout.grid(4, 4, batch=2)
    selection = tokenprune.pruner("vtw")(Cues(layout, attention=torch.rand(2, 16)))
    assert selection.indices.shape == (2, 0)
    assert not bool(selection.mask.any())
    assert isinstance(tokenprune.pruner("attention | vtw").selector, Drop)


def test_last_score_is_the_index():
    layout = Layout.grid(2, 3)
    assert LastScore()(Cues(layout)).tolist() == [[0, 1, 2, 3, 4, 5]]


def test_fitprune_multiplies_text_and_self_attention():
    layout = Layout.grid(4, 4)
    text = torch.rand(1, 16)
    image = torch.rand(1, 16)
    selection = tokenprune.pruner("fitprune", keep=4)(Cues(layout, text_attention=text, self_attention=image))
    expected = (text * image)[0].topk(4).indices.sort().values
    assert selection.indices[0].tolist() == expected.tolist()


def test_norm_scores_hidden_states():
    layout = Layout.grid(3, 3)
    hidden = torch.randn(1, 9, 5)
    selection = tokenprune.pruner("norm | top_k", keep=3)(Cues(layout, hidden=hidden))
    assert selection.indices[0].tolist() == hidden[0].norm(dim=-1).topk(3).indices.sort().values.tolist()
