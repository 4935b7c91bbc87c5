"""LLaVA-NeXT: the adapter's layout equals the model's own ``pack_image_features``."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import LLAVA_NEXT_PINPOINTS, make_batch, num_image_tiles
from transformers.image_processing_utils import select_best_resolution

from tokenprune import adapters

from .expect import assert_sample
from .scatter import NEWLINE, landed_codes

sides = st.integers(8, 2500)
sizes = st.tuples(sides, sides)


@st.composite
def near_pinpoint(draw) -> tuple[int, int]:
    """An image of roughly a pinpoint's shape, so every pinpoint gets chosen."""
    h, w = draw(st.sampled_from(LLAVA_NEXT_PINPOINTS))
    scale = draw(st.floats(0.2, 2.0))
    return max(1, round(h * scale) + draw(st.integers(-9, 9))), max(1, round(w * scale))


images = st.one_of(sizes, near_pinpoint())
batches = st.lists(st.lists(images, max_size=2), min_size=1, max_size=3)


def truth(model, sample_images, codes, first_tile):
    """The true (regions, rows, cols, images) of one sample from the landed codes."""
    tiles = [num_image_tiles(model, s) for s in sample_images]
    starts = torch.tensor([first_tile + sum(tiles[:j]) for j in range(len(tiles))])
    newline = codes[:, 0] == NEWLINE
    row_of_tower = codes[:, 0].long() - 1
    image = (torch.searchsorted(starts, row_of_tower, right=True) - 1).clamp(min=0)
    patch = row_of_tower - starts[image]
    token = codes[:, 1].long() - 1  # CLS dropped
    rows, cols = token // 24, token % 24
    for j, size in enumerate(sample_images):
        width_tiles = select_best_resolution(size, model.config.image_grid_pinpoints)[1] // 336
        high = (image == j) & (patch >= 1) & ~newline
        tile = patch - 1
        rows = torch.where(high, tile // width_tiles * 24 + rows, rows)
        cols = torch.where(high, tile % width_tiles * 24 + cols, cols)
        if high.any():
            # unpad crops rows or columns from both sides: count from the first kept one.
            rows = torch.where(high, rows - rows[high].min(), rows)
            cols = torch.where(high, cols - cols[high].min(), cols)
    regions = torch.where(newline, -1, 2 * image + (patch >= 1).long())
    return regions, rows, cols, image, sum(tiles)


def check_against_model(model, sample_images) -> None:
    batch = make_batch(model, sample_images)
    layout = adapters.layout(model, **batch.inputs)
    if not any(sample_images):
        assert layout.num_tokens == 0
        return
    first = 0
    for b, codes in enumerate(landed_codes(model, batch.inputs, [0, 1, 2])):
        regions, rows, cols, image, used = truth(model, sample_images[b], codes, first)
        assert_sample(layout, b, regions, rows, cols, image)
        first += used


@given(batches)
def test_layout_matches_model_packing(llava_next, sample_images):
    check_against_model(llava_next, sample_images)


def test_every_pinpoint_and_extremes(llava_next):
    extremes = [(8, 2500), (2500, 8), (1, 1), (336, 336), (500, 700)]
    for p in LLAVA_NEXT_PINPOINTS:  # an image of a pinpoint's size gets that pinpoint
        assert list(select_best_resolution(tuple(p), LLAVA_NEXT_PINPOINTS)) == p
    check_against_model(llava_next, [[tuple(p)] for p in LLAVA_NEXT_PINPOINTS] + [extremes])


def test_500x700_gives_2242_tokens(llava_next):
    batch = make_batch(llava_next, [[(500, 700)]])
    layout = adapters.layout(llava_next, **batch.inputs)
    assert layout.num_tokens == 576 + 34 * 49 == 2242
    assert layout.region_shapes.tolist() == [[[24, 24], [34, 48]]]
    assert int((layout.regions == -1).sum()) == 34
    assert layout.region_images.tolist() == [[0, 0]]


def test_image_sizes_as_list_equals_tensor(llava_next):
    batch = make_batch(llava_next, [[(500, 700), (900, 300)]])
    as_tensor = adapters.layout(llava_next, **batch.inputs)
    as_list = adapters.layout(llava_next, **{**batch.inputs, "image_sizes": [(500, 700), (900, 300)]})
    assert torch.equal(as_tensor.regions, as_list.regions)
    assert torch.equal(as_tensor.coords.nan_to_num(-1), as_list.coords.nan_to_num(-1))
