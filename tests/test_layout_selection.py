"""Layout constructors and Selection / keep semantics."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import tokenprune
from tokenprune import Cues, Layout, Selection
from tokenprune.selection import resolve_keep


def test_grid_is_row_major():
    layout = Layout.grid(2, 3)
    assert layout.coords[0].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert layout.region_shapes.tolist() == [[[2, 3]]]
    assert bool(layout.valid.all()) and layout.regions.unique().tolist() == [0]


def test_regions_with_separators():
    layout = Layout.regions_of([(1, 2), (2, 2)], separators=True)
    assert layout.regions[0].tolist() == [0, 0, -1, 1, 1, -1, 1, 1, -1]
    assert bool(torch.isnan(layout.coords[0, 2]).all())
    assert layout.placed.sum().item() == 6


def test_stack_pads_tokens_and_regions():
    a, b = Layout.grid(2, 2), Layout.regions_of([(3, 3), (1, 1)])
    stacked = Layout.stack([a, b])
    assert (stacked.batch_size, stacked.num_tokens, stacked.num_regions) == (2, 10, 2)
    assert stacked.num_valid().tolist() == [4, 10]
    assert stacked.region_shapes[0].tolist() == [[2, 2], [0, 0]]
    assert torch.equal(stacked[1].coords, b.coords)
    assert torch.equal(stacked[0].regions[:, :4], a.regions)


def test_empty_layout():
    layout = Layout.empty(batch=2)
    assert layout.num_tokens == 0 and layout.num_valid().tolist() == [0, 0]


@given(n=st.integers(1, 20000), keep=st.floats(1e-4, 1.0))
def test_fraction_floors_like_the_authors(n, keep):
    (k,) = resolve_keep(keep, torch.tensor([n])).tolist()
    assert k == max(1, math.floor(n * keep))


def test_576_at_ten_percent_is_57():
    assert resolve_keep(0.1, torch.tensor([576, 2880, 0])).tolist() == [57, 288, 0]


def test_from_ranking_sorts_and_pads():
    order = torch.tensor([[3, 1, 0, 2], [2, 0, 1, 3]])
    selection = Selection.from_ranking(order, torch.tensor([2, 1]), torch.zeros(2, 4))
    assert selection.indices.tolist() == [[1, 3], [2, -1]]
    assert selection.mask.tolist() == [[False, True, False, True], [False, False, True, False]]
    assert selection.counts.tolist() == [2, 1]


def test_negative_index_selects_from_the_end():
    layout = Layout.stack([Layout.grid(2, 2), Layout.grid(1, 3)])
    assert layout[-1].num_valid().tolist() == [3]
    assert layout[-2].num_valid().tolist() == [4]
    assert layout[1:].batch_size == 1


def test_tokens_without_any_region_are_a_valid_layout_every_recipe_handles():
    # R = 0: only unplaced tokens (say, a model whose adapter knows no geometry).
    layout = Layout(
        coords=torch.full((2, 5, 2), math.nan),
        regions=torch.full((2, 5), -1),
        region_shapes=torch.zeros(2, 0, 2, dtype=torch.long),
        valid=torch.ones(2, 5, dtype=torch.bool),
    )
    g = torch.Generator().manual_seed(0)
    cues = Cues(
        layout,
        attention=torch.rand(2, 5, generator=g),
        keys=torch.randn(2, 5, 4, generator=g),
        hidden=torch.randn(2, 5, 4, generator=g),
        text_attention=torch.rand(2, 5, generator=g),
        self_attention=torch.rand(2, 5, generator=g),
        generator=g,
        extra={
            "cls_attention": torch.rand(2, 5, generator=g),
            "rater_attention": torch.rand(2, 5, generator=g),
            "text_embeddings": torch.randn(2, 3, 4, generator=g),
            "text_mask": torch.ones(2, 3, dtype=torch.bool),
        },
    )
    recipes = [name.split(":", 1)[1] for name in tokenprune.available() if name.startswith("recipe:")]
    assert "adaptprune" in recipes and "grid_max" in recipes
    for name in recipes:
        selection = tokenprune.pruner(name, keep=2)(cues)
        expected = 0 if name == "vtw" else 2
        assert selection.counts.tolist() == [expected, expected], name
    # No place means no spatial cue: the spatial recipes fall back to the attention order.
    fastv = tokenprune.pruner("fastv", keep=2)(cues).indices
    assert torch.equal(tokenprune.pruner("adaptprune", keep=2)(cues).indices, fastv)


def test_clone_copies_every_tensor_and_keeps_absent_ones_absent():
    layout = Layout.regions_of([(2, 3), (1, 2)], separators=True)
    copy = layout.clone()
    for name in ("coords", "regions", "region_shapes", "valid", "region_boxes", "region_images", "region_frames"):
        original, cloned = getattr(layout, name), getattr(copy, name)
        if original is None:
            assert cloned is None
            continue
        assert cloned.data_ptr() != original.data_ptr()
        assert torch.equal(cloned.nan_to_num(-7), original.nan_to_num(-7)) and cloned.dtype == original.dtype
    copy.valid[0, 0] = False  # a write to the copy leaves the original
    assert bool(layout.valid[0, 0])
