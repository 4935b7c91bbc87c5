"""soft_nms's ``temporal`` decay == the reference; image-only layouts unchanged."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenprune
from tokenprune import Cues, Layout
from tokenprune.compile import compile_mode
from tokenprune.errors import LayoutError, SpecError
from tokenprune.strategies.soft_nms import TemporalDecay

from .draw import select, selector_inputs, soft_nms_selector, video_layouts
from .reference import assert_matches_ref_soft_nms


def _select(layout, scores, keys, keep, radius, sigma_d, sigma_s, sigma_t, frames):
    return select(layout, scores, keys, keep, soft_nms_selector(radius, sigma_d, sigma_s, sigma_t, frames))


def _check(layout, scores, keys, keep, radius, sigma_d, sigma_s, sigma_t, frames):
    selection = _select(layout, scores, keys, keep, radius, sigma_d, sigma_s, sigma_t, frames)
    assert_matches_ref_soft_nms(selection, layout, scores, keys, keep, radius, sigma_d, sigma_s, sigma_t, frames)


@given(data=st.data())
def test_temporal_matches_reference(data):
    layout, scores, keys, keep = data.draw(selector_inputs(video_layouts()))
    radius = data.draw(st.sampled_from([5.0, 1.5, None]))
    sigma_d = data.draw(st.sampled_from([1.5, None]))
    sigma_s = data.draw(st.sampled_from([0.05, 0.5, None]))
    sigma_t = data.draw(st.sampled_from([1.0, 0.6, 3.0]))
    frames = data.draw(st.integers(1, 3))
    with compile_mode(False):
        _check(layout, scores, keys, keep, radius, sigma_d, sigma_s, sigma_t, frames)


@settings(max_examples=4)
@given(data=st.data())
def test_compiled_temporal_matches_reference(data):
    layout, scores, keys, keep = data.draw(selector_inputs(video_layouts(max_batch=2), dim=4))
    with compile_mode(True):
        _check(layout, scores, keys, keep, 5.0, 1.5, 0.05, 1.0, 1)


@given(data=st.data())
def test_image_only_layouts_are_unchanged(data):
    """Without region_frames (every layout an image adapter builds), adding the temporal
    term changes neither the kept tokens nor the final scores."""
    layout, scores, keys, keep = data.draw(selector_inputs())
    radius = data.draw(st.sampled_from([5.0, None]))
    with compile_mode(False):
        plain = _select(layout, scores, keys, keep, radius, 1.5, 0.05, None, 1)
        temporal = _select(layout, scores, keys, keep, radius, 1.5, 0.05, 1.0, 2)
    assert torch.equal(plain.indices, temporal.indices)
    assert torch.equal(plain.scores, temporal.scores)


def test_a_static_video_keeps_a_cell_in_fewer_frames(eager_selectors):
    """Three identical frames, one salient cell: without the temporal term the same cell
    is kept in every frame; with it (frames=1) its copy in the next frame drops to 39%
    of its score, below the background, and only frames 0 and 2 keep it."""
    layout = Layout.video(3, 5, 5)
    attention = torch.full((1, 75), 0.5, dtype=torch.float64)
    attention[0, [12, 37, 62]] = 1.0  # cell (2, 2) of each frame
    keys = torch.ones(1, 75, 4, dtype=torch.float64)
    cues = Cues(layout, attention=attention, keys=keys)
    spec = "attention | soft_nms(radius=5.0, spatial=1.5, similarity=0.05{})"
    plain = tokenprune.pruner(spec.format(""), keep=3)(cues).indices[0].tolist()
    temporal = tokenprune.pruner(spec.format(", temporal=1.0"), keep=3)(cues).indices[0].tolist()
    assert plain == [12, 37, 62]
    assert 12 in temporal and 62 in temporal and 37 not in temporal


def test_the_factor_of_the_neighbouring_frame():
    """Same key, same cell one frame away: the score keeps 1 - exp(-1 / 2) of itself; two
    frames away (beyond frames=1) nothing changes."""
    layout = Layout.video(3, 2, 2)
    scores = torch.full((1, 12), 0.5, dtype=torch.float64)
    scores[0, 0] = 1.0  # frame 0, cell (0, 0)
    keys = torch.ones(1, 12, 3, dtype=torch.float64)
    with compile_mode(False):
        selection = _select(layout, scores, keys, 1, 5.0, 1.5, 0.05, 1.0, 1)
    assert float(selection.scores[0, 4]) == pytest.approx(0.5 * (1 - math.exp(-0.5)))
    assert float(selection.scores[0, 8]) == 0.5
    assert float(selection.scores[0, 5]) == 0.5  # another cell of the next frame


def test_frames_of_different_videos_do_not_interact():
    shapes = [(2, 2)] * 4
    base = Layout.regions_of(shapes)
    layout = Layout(
        coords=base.coords,
        regions=base.regions,
        region_shapes=base.region_shapes,
        valid=base.valid,
        region_images=torch.tensor([[0, 0, 1, 1]]),
        region_frames=torch.tensor([[0, 1, 0, 1]]),
    )
    scores = torch.full((1, 16), 0.5, dtype=torch.float64)
    scores[0, 4] = 1.0  # video 0, frame 1, cell (0, 0)
    keys = torch.ones(1, 16, 3, dtype=torch.float64)
    with compile_mode(False):
        selection = _select(layout, scores, keys, 1, 5.0, 1.5, 0.05, 1.0, 1)
    assert float(selection.scores[0, 0]) < 0.5  # video 0, frame 0
    assert float(selection.scores[0, 8]) == 0.5  # video 1, frame 0
    assert float(selection.scores[0, 12]) == 0.5  # video 1, frame 1


def test_spec_and_errors():
    selector = tokenprune.pruner("attention | soft_nms(temporal={'sigma': 2.0, 'frames': 3})", keep=4).selector
    assert TemporalDecay(2.0, 3) in selector.decays
    assert "recipe:adaptprune_video" in tokenprune.available()
    with pytest.raises(SpecError, match="temporal frames: expected an int >= 1, got 0"):
        TemporalDecay(1.0, 0)
    with pytest.raises(SpecError, match="temporal sigma"):
        TemporalDecay(-1.0)
    base = Layout.regions_of([(2, 2)] * 2)
    with pytest.raises(LayoutError, match="region_frames: expected each frame index at most once per video"):
        Layout(base.coords, base.regions, base.region_shapes, base.valid, region_frames=torch.tensor([[0, 0]]))
    with pytest.raises(LayoutError, match=r"region_frames: expected a long tensor of shape \(B, R\)"):
        Layout(base.coords, base.regions, base.region_shapes, base.valid, region_frames=torch.tensor([0, 1]))
