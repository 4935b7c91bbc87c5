"""`tokenprune.viz`: cell colours, panels, separators, tile canvases, files."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tokenprune
from tokenprune import viz
from tokenprune.selection import Selection

CELL = 10


def _selection(mask: torch.Tensor) -> Selection:
    return Selection.from_mask(mask, mask.float())


def _centre(panel_x: int, row: int, col: int, labels: int = 0) -> tuple[int, int]:
    """Pixel at the centre of a cell; ``labels`` text rows (title, panel labels) above."""
    top = viz._LABEL * labels
    return panel_x + col * CELL + CELL // 2, top + row * CELL + CELL // 2


def test_kept_and_dropped_cells_have_their_colours():
    layout = tokenprune.Layout.grid(3, 4)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, [0, 5, 11]] = True
    picture = viz.draw_selection(layout, _selection(mask), cell=CELL, legend=False)
    assert picture.size == (4 * CELL, 3 * CELL)  # one panel: no label
    for index in range(12):
        row, col = divmod(index, 4)
        expected = viz.KEPT if bool(mask[0, index]) else viz.DROPPED
        assert picture.getpixel(_centre(0, row, col)) == expected


def test_picks_the_requested_sample_and_leaves_padding_empty():
    layout = tokenprune.Layout.stack([tokenprune.Layout.grid(2, 2), tokenprune.Layout.grid(1, 3)])
    mask = torch.tensor([[True, False, False, False], [False, False, True, False]])
    picture = viz.draw_selection(layout, _selection(mask), sample=1, cell=CELL, legend=False)
    assert picture.size == (3 * CELL, CELL)
    assert [picture.getpixel(_centre(0, 0, c)) for c in range(3)] == [viz.DROPPED, viz.DROPPED, viz.KEPT]


def test_separators_form_a_column_right_of_their_region():
    layout = tokenprune.Layout.regions_of([(2, 3)], separators=True)  # 3 cells + separator per row
    mask = torch.tensor([[False, False, False, True, False, False, False, False]])
    with_sep = viz.draw_selection(layout, _selection(mask), cell=CELL, legend=False)
    without = viz.draw_selection(layout, _selection(mask), cell=CELL, separators=False, legend=False)
    assert with_sep.width == without.width + viz._SEPARATOR_GAP + CELL
    column = 3 * CELL + viz._SEPARATOR_GAP + CELL // 2
    assert with_sep.getpixel((column, CELL // 2)) == viz.KEPT      # row 0's separator
    assert with_sep.getpixel((column, CELL + CELL // 2)) == viz.DROPPED


def test_place_less_tokens_that_do_not_end_every_row_are_not_separators():
    # LLaVA with vision_feature_select_strategy="full": a CLS without a place before each
    # image's grid. Image 1's CLS follows the last cell of image 0 but is no separator.
    from tokenprune.adapters.builder import FULL_IMAGE, SampleBuilder

    sample = SampleBuilder()
    for image in range(2):
        sample.unplaced(1)
        sample.region(3, 3, image=image, box=FULL_IMAGE)
    layout = sample.build()
    mask = torch.zeros(1, layout.num_tokens, dtype=torch.bool)
    mask[0, 10] = True  # image 1's CLS
    with_sep = viz.draw_selection(layout, _selection(mask), cell=CELL, legend=False)
    without = viz.draw_selection(layout, _selection(mask), cell=CELL, separators=False, legend=False)
    assert with_sep.size == without.size


def test_tiles_with_boxes_share_one_canvas_and_the_thumbnail_stands_alone():
    # InternVL-like: a 1 x 2 canvas of 2 x 2 tiles, then a thumbnail over the whole image.
    layout = tokenprune.Layout.regions_of([(2, 2), (2, 2), (2, 2)])
    boxes = torch.tensor([[[0, 0, 1, 0.5], [0, 0.5, 1, 1], [0, 0, 1, 1]]], dtype=torch.float32)
    layout = tokenprune.Layout(
        layout.coords, layout.regions, layout.region_shapes, layout.valid,
        region_boxes=boxes, region_images=torch.zeros(1, 3, dtype=torch.long),
    )
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 5] = True  # tile 1, row 0, col 1 -> canvas cell (0, 3)
    picture = viz.draw_selection(layout, _selection(mask), cell=CELL, legend=False)
    assert picture.size == (4 * CELL + viz._GAP + 2 * CELL, viz._LABEL + 2 * CELL)
    assert picture.getpixel(_centre(0, 0, 3, labels=1)) == viz.KEPT
    assert picture.getpixel(_centre(0, 0, 1, labels=1)) == viz.DROPPED
    assert picture.getpixel(_centre(4 * CELL + viz._GAP, 0, 1, labels=1)) == viz.DROPPED
    titled = viz.draw_selection(layout, _selection(mask), cell=CELL, title="tiles", legend=False)
    assert titled.getpixel(_centre(0, 0, 3, labels=2)) == viz.KEPT


def test_the_legend_sits_under_the_panels_and_shows_the_cell_colours():
    layout = tokenprune.Layout.grid(3, 4)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 0] = True
    bare = viz.draw_selection(layout, _selection(mask), cell=CELL, legend=False)
    plain = viz.draw_selection(layout, _selection(mask), cell=CELL)
    assert plain.height > bare.height and plain.width >= bare.width
    # A picture narrower than the legend gets one swatch per row, the last row at the
    # bottom; a swatch's centre is 8 px from the left and 12 px below its row's top.
    assert plain.getpixel((8, plain.height - 36)) == viz.KEPT
    assert plain.getpixel((8, plain.height - 12)) == viz.DROPPED
    # Over an image: the image's own colour for kept cells, a darker one for dropped.
    over = viz.draw_selection(layout, _selection(mask), viz.synthetic_image(30, 40), cell=CELL)
    kept, dropped = over.getpixel((8, over.height - 36)), over.getpixel((8, over.height - 12))
    assert {kept, dropped}.isdisjoint({viz.KEPT, viz.DROPPED, viz.BACKGROUND})
    assert sum(dropped) < sum(kept) / 2


def test_image_shows_through_kept_cells_and_is_darkened_elsewhere():
    layout = tokenprune.Layout.grid(2, 2)
    image = viz.synthetic_image(64, 64)
    mask = torch.tensor([[True, False, False, False]])
    picture = viz.draw_selection(layout, _selection(mask), image, cell=32)
    resized = image.resize((64, 64))
    assert picture.getpixel((16, 16)) == resized.getpixel((16, 16))
    dropped = picture.getpixel((48, 48))
    assert sum(dropped) < sum(resized.getpixel((48, 48)))


def test_values_map_onto_the_colour_scale():
    layout = tokenprune.Layout.grid(1, 3)
    picture = viz.draw_values(layout, torch.tensor([[0.0, 0.5, 1.0]]), cell=CELL, vmin=0.0, vmax=1.0)
    assert picture.getpixel(_centre(0, 0, 0)) == viz._COLORMAP[0]
    assert picture.getpixel(_centre(0, 0, 2)) == viz._COLORMAP[-1]
    assert picture.getpixel(_centre(0, 0, 1)) == viz._COLORMAP[2]


def test_gaussian_map_picture_is_brightest_in_the_centre():
    from tokenprune.strategies.transforms import gaussian_map

    layout = tokenprune.Layout.grid(5, 5)
    picture = viz.draw_values(layout, gaussian_map(layout), cell=CELL, vmin=0.0, vmax=1.0)
    assert picture.getpixel(_centre(0, 2, 2)) == viz._COLORMAP[-1]
    assert sum(picture.getpixel(_centre(0, 0, 0))) < sum(picture.getpixel(_centre(0, 2, 2)))


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"sample": 2}, tokenprune.LayoutError, "sample"),
        ({"cell": 0}, tokenprune.PictureError, "cell: expected an int >= 1"),
        ({"image": "photo.png"}, tokenprune.PictureError, "image: .* got the path 'photo.png'"),
        ({"image": [3]}, tokenprune.PictureError, r"image\[0\]: expected a PIL.Image.Image, got int"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, needle):
    layout = tokenprune.Layout.grid(2, 2, batch=2)
    with pytest.raises(error, match=needle):
        viz.draw_selection(layout, _selection(torch.ones(2, 4, dtype=torch.bool)), **kwargs)


def test_a_selection_of_another_shape_is_refused():
    with pytest.raises(tokenprune.LayoutError, match=r"expected shape \(B, N\) = \(1, 4\)"):
        viz.draw_selection(tokenprune.Layout.grid(2, 2), _selection(torch.ones(1, 5, dtype=torch.bool)))


@given(
    shapes=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=3),
    separators=st.booleans(),
    batch=st.integers(1, 2),
    suffix=st.sampled_from([".pt", ".safetensors"]),
    boxes=st.booleans(),
)
def test_save_and_load_cues_round_trip(tmp_path_factory, shapes, separators, batch, suffix, boxes):
    layout = tokenprune.Layout.regions_of(shapes, batch=batch, separators=separators)
    if boxes:
        r = layout.num_regions
        layout = tokenprune.Layout(
            layout.coords, layout.regions, layout.region_shapes, layout.valid,
            region_boxes=torch.rand(batch, r, 4), region_images=torch.zeros(batch, r, dtype=torch.long),
        )
    n = layout.num_tokens
    cues = tokenprune.Cues(layout, attention=torch.rand(batch, n), keys=torch.randn(batch, n, 3))
    path = viz.save_cues(tmp_path_factory.mktemp("cues") / f"cues{suffix}", cues)
    loaded = viz.load_cues(path)
    for name in ("attention", "keys"):
        assert torch.equal(getattr(loaded, name), getattr(cues, name))
    assert loaded.hidden is None
    for name in viz.LAYOUT_KEYS:
        a, b = getattr(loaded.layout, name), getattr(layout, name)
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(torch.nan_to_num(a, nan=-7.0), torch.nan_to_num(b, nan=-7.0))


def test_selection_json_drops_padding_and_writes_null_for_minus_infinity(tmp_path):
    layout = tokenprune.Layout.stack([tokenprune.Layout.grid(2, 2), tokenprune.Layout.grid(1, 2)])
    cues = tokenprune.Cues(layout, attention=torch.tensor([[0.1, 0.4, 0.3, 0.2], [0.5, 0.6, 0.0, 0.0]]))
    selection = tokenprune.pruner("fastv", keep=0.5)(cues)
    samples = json.loads(viz.save_selection(tmp_path / "s.json", selection).read_text())["samples"]
    assert [s["indices"] for s in samples] == [[1, 2], [1]]
    assert samples[1]["scores"][2:] == [None, None]
    assert math.isclose(samples[0]["scores"][1], 0.4, rel_tol=1e-6)


def test_tile_pictures_puts_captions_above():
    sheet = viz.tile_pictures([("a", viz.synthetic_image(32, 32)), ("b", viz.synthetic_image(32, 48))], 2)
    assert sheet.size == (2 * 48 + viz._GAP, 32 + viz._LABEL)
    bare = viz.tile_pictures([("", viz.synthetic_image(32, 32))] * 3, 2)
    assert bare.size == (2 * 32 + viz._GAP, 2 * 32 + viz._GAP)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_saving_one_sample_of_a_batch_writes_that_sample_only(tmp_path, suffix):
    layout = tokenprune.Layout.grid(8, 8, batch=8)
    cues = tokenprune.Cues(layout, attention=torch.rand(8, 64), keys=torch.randn(8, 64, 256))
    one = viz.save_cues(tmp_path / f"one{suffix}", cues[3])
    all_eight = viz.save_cues(tmp_path / f"all{suffix}", cues)
    assert one.stat().st_size < all_eight.stat().st_size / 4  # not the batch's storage
    loaded = viz.load_cues(one)
    assert torch.equal(loaded.keys, cues.keys[3:4])
    selection = tokenprune.pruner("fastv", keep=5)(cues)
    single = viz.save_selection(tmp_path / "sel.pt", selection[3])
    whole = viz.save_selection(tmp_path / "sel_all.pt", selection)
    assert single.stat().st_size < whole.stat().st_size


def test_cues_that_share_memory_save_to_safetensors(tmp_path):
    layout = tokenprune.Layout.grid(4, 4)
    both = torch.rand(2, 1, 16)
    attention, text_attention = both  # views of one storage
    cues = tokenprune.Cues(layout, attention=attention, text_attention=text_attention)
    loaded = viz.load_cues(viz.save_cues(tmp_path / "shared.safetensors", cues))
    assert torch.equal(loaded.attention, attention) and torch.equal(loaded.text_attention, text_attention)
