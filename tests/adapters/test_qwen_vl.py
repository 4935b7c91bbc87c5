"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL: the adapter's layout equals where the model puts each
merged patch, read from the model's own code.

Truth: pixels that carry their own (row, col, visual, frame) go through the image
processor's own ``patchify``, the tower's patch order (Qwen2.5-VL's window permutation
and its inverse), the merger's own 2 x 2 grouping and the model's ``masked_scatter``;
the tower's blocks are made identities and the merger passes the codes through. A second
truth is the model's own ``get_rope_index``: the M-RoPE (t, h, w) positions it gives
each visual token.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import make_batch, qwen_grid, tiny_qwen2_5_vl, tiny_qwen2_vl, tiny_qwen3_vl
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from tokenprune.adapters import qwen_vl
from tokenprune.errors import LayoutError


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def qwen(request):
    return {"qwen2_vl": tiny_qwen2_vl, "qwen2_5_vl": tiny_qwen2_5_vl, "qwen3_vl": tiny_qwen3_vl}[request.param]()


class _Stop(Exception):
    def __init__(self, embeds):
        self.embeds = embeds


def _coded_pixels(model, grids, first_visual):
    """``(P, C * T * p * p)`` processor rows of visuals whose channel 0 is each pixel's
    row, 1 its column, 2 its visual number (from ``first_visual``) + 1000 * temporal group."""
    vision = model.config.vision_config
    processor = Qwen2VLImageProcessorPil()
    rows = []
    for v, (t, h, w) in enumerate(grids):
        for group in range(t):
            height, width = h * vision.patch_size, w * vision.patch_size
            image = np.zeros((3, height, width), dtype=np.float32)
            image[0] = np.arange(height, dtype=np.float32)[:, None]
            image[1] = np.arange(width, dtype=np.float32)[None, :]
            image[2] = first_visual + v + 1000 * group
            patches, _, _ = processor.patchify(
                image, vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
            )
            rows.append(torch.from_numpy(np.ascontiguousarray(patches)))
    return torch.cat(rows)


@contextmanager
def _pass_codes(model):
    """Tower blocks as identities, patch embedding = the pixel codes, merger = its own
    grouping of 2 x 2 codes; the language model's input is raised as `_Stop`."""
    visual = model.model.visual
    vision = model.config.vision_config
    stride = vision.temporal_patch_size * vision.patch_size**2  # one channel of a row
    merger = visual.merger
    norm = getattr(merger, "ln_q", None) or merger.norm
    first = merger.mlp[0] if hasattr(merger, "mlp") else merger.linear_fc1
    grouped = {}

    def embed(module, args, output):
        rows = args[0]
        codes = torch.zeros_like(output)
        codes[:, :3] = rows[:, [0, stride, 2 * stride]]
        return codes

    def capture(module, args):
        grouped["x"] = args[0]

    def merged(module, args, output):
        x = grouped["x"]
        width = x.shape[1] // vision.spatial_merge_size**2
        out = torch.zeros_like(output)
        out[:, :3] = x[:, :3]  # top-left patch: row, col, visual code
        out[:, 3:5] = x[:, -width : -width + 2]  # bottom-right patch: row, col
        return out

    def language(module, args, kwargs):
        raise _Stop(kwargs["inputs_embeds"])

    handles = [
        visual.patch_embed.register_forward_hook(embed),
        norm.register_forward_hook(lambda m, a, o: a[0]),
        first.register_forward_pre_hook(capture),
        merger.register_forward_hook(merged),
        model.model.language_model.register_forward_pre_hook(language, with_kwargs=True),
    ]
    handles += [block.register_forward_hook(lambda m, a, o: a[0]) for block in visual.blocks]
    pos_embed = getattr(visual, "pos_embed", None)
    saved = None if pos_embed is None else pos_embed.weight.detach().clone()
    if pos_embed is not None:
        with torch.no_grad():
            pos_embed.weight.zero_()
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if pos_embed is not None:
            with torch.no_grad():
                pos_embed.weight.copy_(saved)


def _landed(model, inputs):
    """``(B, L, 5)`` what the model put at each position: row, col, visual code of the
    top-left patch of the merged block, row and col of its bottom-right patch."""
    inputs = dict(inputs)
    images = [tuple(g) for g in inputs.get("image_grid_thw", torch.zeros(0, 3)).tolist()]
    videos = [tuple(g) for g in inputs.get("video_grid_thw", torch.zeros(0, 3)).tolist()]
    if images:
        inputs["pixel_values"] = _coded_pixels(model, images, 0)
    if videos:
        inputs["pixel_values_videos"] = _coded_pixels(model, videos, 100)
    try:
        with _pass_codes(model), torch.no_grad():
            model(**inputs)
    except _Stop as stop:
        return stop.embeds[..., :5]
    raise AssertionError("the language model was never called")


def check_against_model(model, visuals):
    batch = make_batch(model, visuals)
    layout = qwen_vl.layout(model, **batch.inputs)
    input_ids = batch.inputs["input_ids"]
    config = model.config
    visual_mask = (input_ids == config.image_token_id) | (input_ids == config.video_token_id)
    if not bool(visual_mask.any()):
        assert layout.num_tokens == 0
        return
    landed = _landed(model, batch.inputs)
    vision = config.vision_config
    block = vision.patch_size * vision.spatial_merge_size
    rope, _ = model.model.get_rope_index(
        input_ids,
        batch.inputs["mm_token_type_ids"],
        batch.inputs.get("image_grid_thw"),
        batch.inputs.get("video_grid_thw"),
        attention_mask=batch.inputs["attention_mask"],
    )
    for b in range(input_ids.shape[0]):
        codes = landed[b][visual_mask[b]]
        n = codes.shape[0]
        assert layout.valid[b, :n].all() and not layout.valid[b, n:].any()
        # The merger grouped a 2 x 2 block of patches: bottom-right = top-left + 1 patch.
        assert torch.equal(codes[:, 3] - codes[:, 0], torch.full((n,), block - vision.patch_size, dtype=codes.dtype))
        rows, cols = codes[:, 0] / block, codes[:, 1] / block
        assert torch.equal(layout.coords[b, :n, 0], rows)
        assert torch.equal(layout.coords[b, :n, 1], cols)
        visual, frame = codes[:, 2].long() % 1000, codes[:, 2].long() // 1000
        regions = layout.regions[b, :n]
        # One region per (visual, frame), numbered in sequence order.
        key = visual * 1000 + frame
        assert regions.unique().numel() == key.unique().numel()
        for r in regions.unique().tolist():
            here = regions == r
            assert key[here].unique().numel() == 1
            shape = (int(rows[here].max()) + 1, int(cols[here].max()) + 1)
            assert tuple(layout.region_shapes[b, r].tolist()) == shape == tuple(
                g // vision.spatial_merge_size for g in _grid_of(batch, int(visual[here][0]))[1:]
            )
            is_video = int(visual[here][0]) >= 100
            assert int(layout.region_frames[b, r]) == (int(frame[here][0]) if is_video else -1)
        # region_images: the sample's visuals, numbered in order of appearance.
        images_of_tokens = layout.region_images[b][regions]
        _, first = np.unique(visual.numpy(), return_index=True)
        order = visual[np.sort(first)].tolist()
        assert images_of_tokens.tolist() == [order.index(v) for v in visual.tolist()]
        # The model's own M-RoPE positions: h and w offsets are the layout's row and col.
        t_pos, h_pos, w_pos = rope[:, b][:, visual_mask[b]]
        for r in regions.unique().tolist():
            here = regions == r
            assert torch.equal((h_pos[here] - h_pos[here].min()).float(), rows[here])
            assert torch.equal((w_pos[here] - w_pos[here].min()).float(), cols[here])
            assert t_pos[here].unique().numel() == 1  # one frame = one temporal position


def _grid_of(batch, code):
    """(t, h, w) of the visual with code ``code`` (images 0.., videos 100..)."""
    key, index = ("video_grid_thw", code - 100) if code >= 100 else ("image_grid_thw", code)
    return tuple(batch.inputs[key][index].tolist())


sides = st.integers(10, 250)
image = st.tuples(sides, sides)
video = st.tuples(st.integers(1, 5), sides, sides)
batches = st.lists(st.lists(st.one_of(image, video), max_size=3), min_size=1, max_size=3)


@settings(max_examples=5, deadline=None)
@given(visuals=batches)
def test_layout_matches_model(qwen, visuals):
    check_against_model(qwen, visuals)


def test_extremes(qwen):
    """The smallest grid (one merged token), a long thin image, and one frame of video."""
    check_against_model(qwen, [[(10, 10), (1, 10, 10)], [(30, 2000), (2000, 30)], [(5, 400, 300)]])


def test_grids_are_qwen_grids(qwen):
    batch = make_batch(qwen, [[(100, 150)]])
    assert tuple(batch.inputs["image_grid_thw"][0].tolist()) == qwen_grid(qwen, (100, 150))


def test_missing_or_wrong_grids_are_clear_errors(qwen):
    batch = make_batch(qwen, [[(100, 150), (3, 60, 90)]])
    inputs = dict(batch.inputs)
    with pytest.raises(LayoutError, match="video_grid_thw: expected the \\(t, h, w\\) of each video"):
        qwen_vl.layout(qwen, **{k: v for k, v in inputs.items() if k != "video_grid_thw"})
    wrong = inputs["image_grid_thw"].clone()
    wrong[0, 1] += 2
    with pytest.raises(LayoutError, match="image tokens"):
        qwen_vl.layout(qwen, **{**inputs, "image_grid_thw": wrong})
    odd = inputs["image_grid_thw"].clone()
    odd[0, 1] += 1
    with pytest.raises(LayoutError, match=r"image_grid_thw\[0\]: expected t >= 1 and h, w positive multiples"):
        qwen_vl.layout(qwen, **{**inputs, "image_grid_thw": odd})


def test_adapter_for_finds_qwen_vl(qwen):
    from tokenprune import adapters

    assert adapters.adapter_for(qwen).name == "qwen_vl"
    batch = make_batch(qwen, [[(100, 150), (3, 60, 90)]])
    mask = adapters.visual_token_mask(qwen, batch.inputs["input_ids"])
    assert int(mask.sum()) == batch.num_visual[0]  # image and video placeholders
