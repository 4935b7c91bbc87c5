"""soft_nms fast path == Algorithm 1 reference; invariants; compile behaviour."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenprune
from tokenprune import Cues, Layout
from tokenprune.compile import compile_mode
from tokenprune.strategies import soft_nms_cpu

from .draw import layouts, select, selector_inputs, soft_nms_selector
from .reference import assert_matches_ref_soft_nms, ref_budget


def _run_soft_nms(layout, scores, keys, keep, radius, sigma_d, sigma_s):
    return select(layout, scores, keys, keep, soft_nms_selector(radius, sigma_d, sigma_s))


def _check_against_reference(layout, scores, keys, keep, radius, sigma_d, sigma_s):
    selection = _run_soft_nms(layout, scores, keys, keep, radius, sigma_d, sigma_s)
    assert_matches_ref_soft_nms(selection, layout, scores, keys, keep, radius, sigma_d, sigma_s)


@given(data=st.data())
def test_matches_algorithm_1_float64(data):
    layout, scores, keys, keep = data.draw(selector_inputs())
    radius = data.draw(st.sampled_from([5.0, 1.5, 2.0, None]))
    sigma_d = data.draw(st.sampled_from([1.5, 0.7, None]))
    sigma_s = data.draw(st.sampled_from([0.05, 0.5, None]))
    with compile_mode(False):
        _check_against_reference(layout, scores, keys, keep, radius, sigma_d, sigma_s)


@given(data=st.data())
def test_ties_take_the_first_index(data):
    layout, scores, keys, keep = data.draw(selector_inputs(layouts(max_batch=2), ties=True))
    with compile_mode(False):
        _check_against_reference(layout, scores, keys, keep, 5.0, 1.5, 0.05)


@settings(max_examples=6)
@given(data=st.data())
def test_compiled_matches_reference(data):
    layout, scores, keys, keep = data.draw(selector_inputs(layouts(max_batch=2), dim=4))
    with compile_mode(True):
        _check_against_reference(layout, scores, keys, keep, 5.0, 1.5, 0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_scores_run_in_float32(dtype):
    layout = Layout.grid(12, 12, batch=2)
    g = torch.Generator().manual_seed(0)
    attention = torch.rand(2, 144, generator=g).to(dtype)
    keys = torch.randn(2, 144, 16, generator=g).to(dtype)
    selection = tokenprune.pruner("adaptprune", keep=0.1)(Cues(layout, attention=attention, keys=keys))
    assert selection.scores.dtype == torch.float32
    assert selection.indices.shape == (2, 14)


@given(data=st.data())
def test_invariants(data):
    layout, scores, keys, keep = data.draw(selector_inputs(dtype=torch.float32))
    with compile_mode(False):
        selection = _run_soft_nms(layout, scores, keys, keep, 5.0, 1.5, 0.05)
    for b in range(layout.batch_size):
        k = ref_budget(keep, int(layout.valid[b].sum()))
        row = selection.indices[b]
        kept = row[row >= 0]
        assert kept.numel() == k == int(selection.mask[b].sum())
        assert torch.equal(kept, kept.sort().values) and kept.unique().numel() == k
        assert bool(layout.valid[b, kept].all())
        assert bool((row[k:] == -1).all())
        # Suppression never crosses regions: tokens of regions with no kept token keep their score.
        kept_regions = set(layout.regions[b, kept].tolist())
        untouched = layout.valid[b] & ~torch.isin(layout.regions[b], torch.tensor(sorted(kept_regions - {-1}) or [-2]))
        assert torch.equal(selection.scores[b][untouched], scores[b][untouched])


def test_separators_take_no_decay():
    layout = Layout.regions_of([(3, 3)], separators=True)
    scores = torch.linspace(1.0, 0.5, layout.num_tokens, dtype=torch.float64).unsqueeze(0)
    keys = torch.ones(1, layout.num_tokens, 2, dtype=torch.float64)
    with compile_mode(False):
        selection = _run_soft_nms(layout, scores, keys, 2, 5.0, 1.5, 0.05)
    separators = layout.regions[0] == -1
    assert torch.equal(selection.scores[0][separators], scores[0][separators])


def test_authors_grid_example():
    """Kept token's own score becomes 0; a neighbour at d = 1 with the same key keeps
    1 - exp(-1 / 4.5) of its score; beyond the radius nothing changes."""
    layout = Layout.grid(24, 24)
    scores = torch.full((1, 576), 0.5, dtype=torch.float64)
    scores[0, 12 * 24 + 12] = 1.0
    keys = torch.ones(1, 576, 3, dtype=torch.float64)
    with compile_mode(False):
        selection = _run_soft_nms(layout, scores, keys, 1, 5.0, 1.5, 0.05)
    s = selection.scores[0].view(24, 24)
    assert selection.indices.tolist() == [[12 * 24 + 12]]
    assert float(s[12, 12]) == 0.0
    assert float(s[12, 13]) == pytest.approx(0.5 * (1 - torch.exp(torch.tensor(-1 / 4.5)).item()))
    assert float(s[12, 18]) == 0.5  # d = 6 > radius 5
    assert float(s[15, 16]) == pytest.approx(0.5 * (1 - torch.exp(torch.tensor(-25 / 4.5)).item()))


def test_second_n_does_not_recompile_more_than_once():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    pruner = tokenprune.pruner("adaptprune", keep=0.1)

    def run(h, w, b):
        layout = Layout.grid(h, w, batch=b)
        pruner(Cues(layout, attention=torch.rand(b, h * w), keys=torch.randn(b, h * w, 8)))
        return counters["stats"]["unique_graphs"]

    with compile_mode(True), soft_nms_cpu.native_mode(False):  # the torch steps' graphs
        first = run(10, 10, 2)
        run(12, 9, 2)
        second = run(20, 15, 3)
        third = run(7, 30, 5)
    assert first >= 1
    assert second - first <= 1
    assert third == second


def test_a_radius_beyond_every_region_is_the_whole_region(eager_selectors):
    # radius=1e6 would be a 10^12-cell disc; capped at the largest region's diagonal it
    # selects exactly what radius=None (the whole region as window) selects.
    layout = Layout.regions_of([(24, 24), (5, 9)], batch=2)
    g = torch.Generator().manual_seed(0)
    cues = Cues(layout, attention=torch.rand(2, layout.num_tokens, generator=g),
                keys=torch.randn(2, layout.num_tokens, 8, generator=g))
    huge = tokenprune.pruner("adaptprune", keep=40, radius=1e6)(cues).indices
    whole = tokenprune.pruner("adaptprune", keep=40, radius=None)(cues).indices
    assert torch.equal(huge, whole)
