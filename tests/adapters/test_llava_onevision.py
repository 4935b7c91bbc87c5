"""LLaVA-OneVision: the adapter's layout equals the model's own packing of images
(``pack_image_features``: base grid, unpadded and maybe downscaled anyres grid, row
newlines) and videos (pooled frames, one trailing newline)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import make_batch, tiny_llava_onevision
from transformers.models.llava_onevision.modeling_llava_onevision import (
    image_size_to_num_patches,
    select_best_resolution,
)

from tokenprune.adapters import llava_onevision
from tokenprune.errors import LayoutError, UnsupportedModelError

from .scatter import NEWLINE, landed_codes

SIDE, FRAME = 27, 14


@pytest.fixture(scope="module")
def onevision():
    return tiny_llava_onevision()


def _image_tiles(model, sample):
    images = [v for v in sample if len(v) == 2]
    pinpoints = model.config.image_grid_pinpoints
    return [image_size_to_num_patches(list(s), pinpoints, 384) if len(images) == 1 else 1 for s in images]


def check_against_model(model, visuals):
    batch = make_batch(model, visuals)
    layout = llava_onevision.layout(model, **batch.inputs)
    assert layout.num_valid().tolist() == batch.num_visual
    if not any(visuals):
        assert layout.num_tokens == 0
        return
    input_ids = batch.inputs["input_ids"]
    is_video = input_ids == model.config.video_token_id
    codes = landed_codes(model, batch.inputs, [0, 1, 2], mask=is_video | (input_ids == model.config.image_token_id))
    first_tile = first_frame = 0
    for b, sample in enumerate(visuals):
        c = codes[b]
        n = c.shape[0]
        video_token = is_video[b][is_video[b] | (input_ids[b] == model.config.image_token_id)]
        newline = c[:, 0] == NEWLINE
        regions = layout.regions[b, :n]
        assert torch.equal(regions == -1, newline)
        tower = c[:, 0].round().long() - 1  # tile (images) or frame (videos) of the batch
        tiles = _image_tiles(model, sample)
        image = 0
        for visual, item in enumerate(sample):
            if len(item) == 2:
                count = tiles[image]
                base = (tower == first_tile) & ~video_token
                mine = (tower >= first_tile) & (tower < first_tile + count) & ~newline & ~video_token
                base_region = regions[base].unique()
                assert base_region.numel() == 1 and tuple(layout.region_shapes[b, base_region[0]].tolist()) == (SIDE, SIDE)
                token = c[base, 1].long()
                assert torch.equal(layout.positions[b, :n][base], torch.stack([token // SIDE, token % SIDE], 1).float())
                high = mine & ~base
                if count > 1:
                    region = regions[high].unique()
                    assert region.numel() == 1
                    h, w = layout.region_shapes[b, region[0]].tolist()
                    # The model's own packing: h rows of w tokens, each row ended by a newline.
                    after = (torch.arange(n) > int(base.nonzero().max())) & ~video_token
                    span = torch.nonzero(high | (newline & after)).flatten()
                    span = span[: h * (w + 1)]
                    assert newline[span].tolist() == ([False] * w + [True]) * h
                    exact = c[high, 1] == c[high, 1].round()
                    if bool(exact.all()) and h * w == int(high.sum()):
                        _check_tiles(model, item, layout.positions[b, :n][high], c[high], first_tile)
                assert int(layout.region_images[b, base_region[0]]) == visual
                first_tile += count
                image += 1
            else:
                frames = item[0]
                for f in range(frames):
                    here = (tower == first_frame + f) & ~newline & video_token
                    region = regions[here].unique()
                    assert region.numel() == 1 and int(here.sum()) == FRAME * FRAME
                    assert int(layout.region_frames[b, region[0]]) == f
                    assert int(layout.region_images[b, region[0]]) == visual
                first_frame += frames


def _check_tiles(model, size, positions, codes, first_tile):
    """Non-downscaled anyres grid: each token's (row, col) from its tile and tower token,
    counted from the first row / column unpadding kept (as for LLaVA-NeXT)."""
    width_tiles = select_best_resolution(size, model.config.image_grid_pinpoints)[1] // 384
    tile = codes[:, 0].round().long() - 1 - first_tile - 1
    token = codes[:, 1].long()
    rows = tile // width_tiles * SIDE + token // SIDE
    cols = tile % width_tiles * SIDE + token % SIDE
    assert torch.equal(positions[:, 0].long(), rows - rows.min())
    assert torch.equal(positions[:, 1].long(), cols - cols.min())


sides = st.integers(8, 2500)
image = st.tuples(sides, sides)
video = st.tuples(st.just(2), st.integers(8, 500), st.integers(8, 500))
batches = st.lists(st.lists(st.one_of(image, video), max_size=2), min_size=1, max_size=2)


@settings(max_examples=4, deadline=None)
@given(visuals=batches)
def test_layout_matches_model_packing(onevision, visuals):
    check_against_model(onevision, visuals)


def test_single_multi_and_video(onevision):
    """One anyres image that is downscaled (2000 x 2000: 9 tiles' worth kept), one that is
    not (500 x 700), several images (base grids only) and a video."""
    check_against_model(onevision, [[(2000, 2000)], [(500, 700)], [(300, 200), (40, 900)], [(2, 64, 64)]])


def test_errors(onevision):
    batch = make_batch(onevision, [[(500, 700)]])
    with pytest.raises(LayoutError, match="image_sizes: expected the \\(height, width\\)"):
        llava_onevision.layout(onevision, **{k: v for k, v in batch.inputs.items() if k != "image_sizes"})
    with pytest.raises(UnsupportedModelError, match="vision_aspect_ratio: expected 'anyres_max_N'"):
        llava_onevision.layout(onevision, **batch.inputs, vision_aspect_ratio="pad")
    with pytest.raises(UnsupportedModelError, match="vision_feature_select_strategy"):
        llava_onevision.layout(onevision, **batch.inputs, vision_feature_select_strategy="default")


def test_adapter_for_finds_llava_onevision(onevision):
    from tokenprune import adapters

    assert adapters.adapter_for(onevision).name == "llava_onevision"
