"""InternVL: layout vs the model's pixel shuffle, canvas vs the processor's tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import make_batch, num_image_tiles
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
    GotOcr2ImageProcessorPil,
    get_optimal_tiled_canvas,
)

from tokenprune import LayoutError, adapters
from tokenprune.adapters.internvl import canvas

from .expect import assert_sample
from .scatter import CODE, landed_codes

sides = st.integers(8, 3000)
sizes = st.tuples(sides, sides)
batches = st.lists(st.lists(sizes, max_size=2), min_size=1, max_size=3)
limits = st.integers(1, 12).flatmap(lambda low: st.tuples(st.just(low), st.integers(low, 16)))

VISION_WIDTH = 32  # tiny_internvl's vision hidden size: pixel shuffle stacks 4 such blocks
SHUFFLED = [block * VISION_WIDTH + c for block in range(4) for c in range(CODE)]


def truth(model, sample_images, codes, first_tile, min_patches, max_patches):
    """(regions, rows, cols, images, tiles used) of one sample from the landed codes."""
    blocks = codes.reshape(-1, 4, CODE)
    tower_tile = blocks[:, :, 0].long() - 1
    assert (tower_tile == tower_tile[:, :1]).all(), "a token mixes tiles"
    patch = blocks[:, :, 1].long() - 1  # CLS dropped
    prow, pcol = patch // 32, patch % 32
    top, left = prow.min(dim=1).values, pcol.min(dim=1).values
    # Each token is one whole 2x2 block of patches.
    assert (top % 2 == 0).all() and (left % 2 == 0).all()
    assert ((prow - top[:, None]) <= 1).all() and ((pcol - left[:, None]) <= 1).all()
    assert (patch.sort(dim=1).values.diff(dim=1) > 0).all()
    tiles = [num_image_tiles(model, s, min_patches, max_patches) for s in sample_images]
    starts = torch.tensor([sum(tiles[:j]) for j in range(len(tiles))])
    region = tower_tile[:, 0] - first_tile
    image = torch.searchsorted(starts, region, right=True) - 1
    return region, top // 2, left // 2, image, sum(tiles)


def check_against_model(model, sample_images, min_patches=1, max_patches=12, sized=True):
    batch = make_batch(model, sample_images, min_patches=min_patches, max_patches=max_patches)
    inputs = batch.layout_inputs if sized else batch.inputs
    layout = adapters.layout(model, **inputs)
    if not any(sample_images):
        assert layout.num_tokens == 0
        return layout
    first = 0
    for b, codes in enumerate(landed_codes(model, batch.inputs, SHUFFLED)):
        regions, rows, cols, image, used = truth(
            model, sample_images[b], codes, first, min_patches, max_patches
        )
        assert_sample(layout, b, regions, rows, cols, image)
        first += used
    return layout


@given(batches, st.booleans())
def test_layout_matches_model_pixel_shuffle(internvl, sample_images, sized):
    check_against_model(internvl, sample_images, sized=sized)


@given(st.lists(sizes, min_size=1, max_size=2), limits)
def test_tiling_limits(internvl, images, limit):
    check_against_model(internvl, [images], *limit)


@given(sizes, limits)
def test_canvas_equals_the_processors(size, limit):
    cols, rows = get_optimal_tiled_canvas(size, (448, 448), *limit)
    assert canvas(size, (448, 448), *limit) == (rows, cols)


def test_canvas_examples():
    assert canvas((500, 700), (448, 448), 1, 12) == (3, 4)
    assert canvas((448, 448), (448, 448), 1, 12) == (1, 1)
    # Six tiles, two orientations: the processor drops which one; the size tells.
    assert canvas((600, 900), (448, 448), 6, 6) == (2, 3)
    assert canvas((900, 600), (448, 448), 6, 6) == (3, 2)


def _gradient(height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 image: red = row fraction, green = column fraction."""
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    return np.stack([y, x, np.zeros_like(x)], axis=-1).round().astype(np.uint8)


@given(st.tuples(st.integers(40, 1400), st.integers(40, 1400)), limits)
def test_boxes_are_where_the_processor_cut_the_tiles(internvl, size, limit):
    processor = GotOcr2ImageProcessorPil(
        size={"height": 448, "width": 448}, do_normalize=False, do_rescale=False
    )
    out = processor(
        _gradient(*size), crop_to_patches=True, min_patches=limit[0], max_patches=limit[1],
        return_tensors="pt",
    )
    tiles = out["pixel_values"]  # (T, 3, 448, 448)
    batch = make_batch(internvl, [[size]], min_patches=limit[0], max_patches=limit[1])
    inputs = {**batch.layout_inputs, "pixel_values": tiles}
    layout = adapters.layout(internvl, **inputs)
    assert layout.num_regions == tiles.shape[0]
    boxes = layout.region_boxes[0]
    centre = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], -1)
    seen = tiles[:, :2].float().mean(dim=(2, 3)) / 255  # each tile's mean (row, col) fraction
    assert torch.allclose(seen, centre, atol=0.02), (seen, centre)


def test_without_sizes_each_run_is_an_image(internvl):
    layout = check_against_model(internvl, [[(500, 700), (100, 100)]], sized=False)
    assert layout.region_shapes.tolist() == [[[16, 16]] * 14]
    assert layout.region_images.tolist() == [[0] * 13 + [1]]
    boxes = layout.region_boxes[0]
    assert torch.isnan(boxes[:12]).all()  # where a tile sits needs the image size
    assert boxes[12:].tolist() == [[0.0, 0.0, 1.0, 1.0]] * 2  # thumbnail, lone tile


def test_sizes_give_tile_boxes(internvl):
    layout = check_against_model(internvl, [[(900, 600)]], 6, 6)
    expected = [[r / 3, c / 2, (r + 1) / 3, (c + 1) / 2] for r in range(3) for c in range(2)]
    assert torch.allclose(layout.region_boxes[0, :6], torch.tensor(expected))
    assert layout.region_boxes[0, 6].tolist() == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"image_sizes": [(100, 100)], "min_patches": 1, "max_patches": 12}, "sample 0 has 1792 image tokens.*take \\[256\\]"),
        ({"image_sizes": [(900, 600), (10, 10)]}, "image_sizes: expected 1 images.*got 2"),
        ({"min_patches": 1, "max_patches": 1}, "sample 0 has 1792 image tokens"),
        ({"min_patches": 3, "max_patches": 2}, "min_patches, max_patches"),
        ({"image_sizes": [(900, 0)]}, "image_sizes\\[0\\]"),
        ({"min_patches": "a"}, "min_patches, max_patches: expected ints .* got 'a', 6"),
        ({"max_patches": 6.0}, "min_patches, max_patches: expected ints .* got 6, 6.0"),
    ],
)
def test_wrong_image_sizes_raise(internvl, change, match):
    batch = make_batch(internvl, [[(900, 600)]], min_patches=6, max_patches=6)
    with pytest.raises(LayoutError, match=match):
        adapters.layout(internvl, **{**batch.layout_inputs, **change})


def test_pixel_values_tile_count_is_checked(internvl):
    batch = make_batch(internvl, [[(900, 600)]], min_patches=6, max_patches=6)
    inputs = {**batch.layout_inputs, "pixel_values": batch.inputs["pixel_values"][:5]}
    with pytest.raises(LayoutError, match="pixel_values: expected 7 tiles.*got 5"):
        adapters.layout(internvl, **inputs)


def test_partial_tile_raises(internvl):
    batch = make_batch(internvl, [[(900, 600)]])
    ids = batch.inputs["input_ids"]
    first = int((ids[0] == internvl.config.image_token_id).nonzero()[0])
    cut = torch.cat([ids[:, :first], ids[:, first + 1 :]], dim=1)  # one placeholder less
    with pytest.raises(LayoutError, match="input_ids: expected whole tiles of 256"):
        adapters.layout(internvl, input_ids=cut)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_sizes_of_a_batch_that_generate_repeated_for_beams(internvl, as_tensor):
    # generate(num_beams=2) repeats every row of input_ids twice, leaves an extra
    # image_sizes list alone and repeats each row of a tensor in place.
    batch = make_batch(internvl, [[(448, 896)], [(896, 448), (448, 448)]])
    sizes = batch.extra["image_sizes"]
    expected = adapters.layout(internvl, **batch.layout_inputs)
    repeated = {"input_ids": batch.inputs["input_ids"].repeat_interleave(2, dim=0)}
    given = torch.tensor(sizes).repeat_interleave(2, dim=0) if as_tensor else sizes
    got = adapters.layout(internvl, **repeated, image_sizes=given)
    for name in ("coords", "region_shapes", "region_boxes"):
        want = getattr(expected, name).repeat_interleave(2, dim=0)
        assert torch.equal(getattr(got, name).nan_to_num(-1), want.nan_to_num(-1)), name
