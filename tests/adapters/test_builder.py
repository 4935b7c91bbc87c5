"""SampleBuilder: a repeated description hands out copies of one validated layout, bitwise
the layout built afresh; any other description builds its own."""

from __future__ import annotations

import math

import pytest
import torch

from tokenprune import Layout
from tokenprune.adapters import builder
from tokenprune.adapters.builder import FULL_IMAGE, SampleBuilder
from tokenprune.errors import LayoutError

_FIELDS = ("coords", "regions", "region_shapes", "valid", "region_boxes", "region_images", "region_frames")
_INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@pytest.fixture(autouse=True)
def _nothing_remembered(monkeypatch):
    monkeypatch.setattr(builder, "_built", type(builder._built)())


def _same_bits(a: Layout, b: Layout) -> bool:
    """Every field of the same dtype, shape and bits (NaN included)."""
    for name in _FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            if x is not y:
                return False
            continue
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.is_floating_point():
            x, y = x.view(_INTS[x.element_size()]), y.view(_INTS[y.element_size()])
        if not torch.equal(x, y):
            return False
    return True


#: Sample descriptions, each a list of (method, args, kwargs).
_SAMPLES = {
    "llava": [("region", (24, 24), {"image": 0, "box": FULL_IMAGE, "skip": 0})],
    "cls and skip": [("unplaced", (1,), {}), ("region", (4, 5), {"image": 0, "box": FULL_IMAGE, "skip": 1})],
    "separators": [
        ("region", (3, 3), {"image": 0, "box": FULL_IMAGE}),
        ("region", (4, 6), {"image": 0, "box": None, "separators": True}),
    ],
    "tiles": [("region", (2, 2), {"image": 0, "box": (0.0, 0.5 * i, 1.0, 0.5 * i + 0.5)}) for i in range(2)],
    "video": [("region", (2, 3), {"image": 0, "box": FULL_IMAGE, "frame": f}) for f in range(3)] + [("unplaced", (1,), {})],
    "two images": [("region", (2, 2), {"image": 0}), ("region", (3, 1), {"image": 1, "box": FULL_IMAGE})],
    "empty": [],
}


def _build(description) -> Layout:
    sample = SampleBuilder()
    for method, args, kwargs in description:
        getattr(sample, method)(*args, **kwargs)
    layout = sample.build()
    assert sample.num_tokens == layout.num_tokens
    return layout


@pytest.mark.parametrize("name", sorted(_SAMPLES))
def test_a_repeated_description_gives_bitwise_the_layout_built_afresh(name, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(builder, "MAX_SAMPLES", 0)
        fresh = _build(_SAMPLES[name])
        assert not builder._built
    first, again = _build(_SAMPLES[name]), _build(_SAMPLES[name])
    assert len(builder._built) == 1
    assert _same_bits(first, fresh) and _same_bits(again, fresh)
    for field in _FIELDS:  # copies: the caller's own tensors
        if getattr(first, field) is not None and getattr(first, field).numel():
            assert getattr(first, field).untyped_storage().data_ptr() != getattr(again, field).untyped_storage().data_ptr()


def test_a_write_to_a_built_layout_does_not_reach_the_next():
    first = _build(_SAMPLES["llava"])
    first.valid[0, 3] = False
    first.coords[0, 0, 0] = 7.0
    assert bool(_build(_SAMPLES["llava"]).valid.all())
    assert float(_build(_SAMPLES["llava"]).coords[0, 0, 0]) == 0.0


@pytest.mark.parametrize(
    "other",
    [
        {"box": (-0.0, 0.0, 1.0, 1.0)},  # equal as numbers, other bits
        {"box": (0.0, 0.0, 1.0, 0.5)},
        {"box": None},
        {"skip": 1},
        {"image": 1},
        {"frame": 0},
        {"separators": True},
    ],
    ids=lambda other: repr(other),
)
def test_any_other_description_builds_its_own(other):
    base = {"image": 0, "box": (0.0, 0.0, 1.0, 1.0)}
    first = _build([("region", (3, 4), base)])
    changed = _build([("region", (3, 4), {**base, **other})])
    assert len(builder._built) == 2 and not _same_bits(first, changed)
    if "box" in other and other["box"] is not None:
        assert math.copysign(1.0, float(changed.region_boxes[0, 0, 0])) == math.copysign(1.0, other["box"][0])


def test_other_argument_types_are_not_remembered():
    sample = SampleBuilder()
    sample.region(torch.tensor(3), 4, image=0)  # a 0-d tensor as a size: built, not remembered
    assert sample.build().num_tokens == 12 and not builder._built


def test_an_invalid_description_raises_every_time():
    for _ in range(2):
        sample = SampleBuilder()
        sample.region(2, 2, image=0, frame=0)
        sample.region(2, 2, image=0, frame=0)  # the same frame of one video twice
        with pytest.raises(LayoutError, match="region_frames"):
            sample.build()
    assert not builder._built


def test_at_most_max_samples_are_remembered(monkeypatch):
    monkeypatch.setattr(builder, "MAX_SAMPLES", 2)
    for width in (1, 2, 3):
        _build([("region", (2, width), {"image": 0})])
    assert len(builder._built) == 2
    assert [key[0][2] for key in builder._built] == [(int, 2), (int, 3)]  # the least recent went


def test_built_under_inference_mode_then_outside():
    with torch.inference_mode():
        inside = _build(_SAMPLES["llava"])
    outside = _build(_SAMPLES["llava"])
    assert inside.coords.is_inference() and not outside.coords.is_inference()
    outside.valid[0, 0] = False  # an ordinary tensor: writable
    assert _same_bits(_build(_SAMPLES["llava"]), inside)
