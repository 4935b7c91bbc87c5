"""Per-layout remembered values: reused on the same unchanged layout and on layouts of the
same content, never stale, bitwise the values computed afresh."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import tokenprune
from tokenprune import Cues, Layout, _layout_memo
from tokenprune._layout_memo import SLOT, layout_memo
from tokenprune.compile import compile_mode
from tokenprune.strategies import soft_nms_cpu
from tokenprune.strategies.transforms import Gaussian, gaussian_map


@pytest.fixture(autouse=True)
def _nothing_shared(monkeypatch):
    """Each test starts with no values shared by content (other tests' layouts left some)."""
    monkeypatch.setattr(_layout_memo, "_shared", type(_layout_memo._shared)())


def _counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value() if callable(value) else value

    return compute, calls


_FIELDS = ("coords", "regions", "region_shapes", "valid", "region_boxes", "region_images", "region_frames")


def _copy(layout: Layout) -> Layout:
    """A new layout object of new tensors with the same contents."""
    return Layout.trusted(**{name: None if getattr(layout, name) is None else getattr(layout, name).clone() for name in _FIELDS})


def test_remembered_on_the_same_layout_and_key():
    layout = Layout.grid(3, 4)
    compute, calls = _counting(lambda: torch.rand(2))
    first = layout_memo(layout, "k", compute)
    assert layout_memo(layout, "k", compute) is first
    assert len(calls) == 1
    layout_memo(layout, "other", compute)  # another key computes its own value
    assert len(calls) == 2


def test_another_layout_object_of_the_same_content_reuses_the_value():
    layout = Layout.grid(3, 4)
    compute, calls = _counting(lambda: torch.rand(2))
    first = layout_memo(layout, "k", compute)
    assert torch.equal(layout_memo(Layout.grid(3, 4), "k", compute), first)
    assert torch.equal(layout_memo(_copy(layout), "k", compute), first)  # new tensors, same bits
    assert len(calls) == 1


def _variants() -> dict[str, Layout]:
    """Layouts that differ from ``Layout.grid(3, 4)`` in one respect each."""
    base = Layout.grid(3, 4)
    fields = {name: getattr(base, name) for name in ("coords", "regions", "region_shapes", "valid")}
    one_invalid = fields["valid"].clone()
    one_invalid[0, 5] = False
    moved = fields["coords"].clone()
    moved[0, [0, 1]] = moved[0, [1, 0]]  # two tokens swap places: same set of cells
    negative_zero = fields["coords"].clone()
    negative_zero[0, 0, 0] = -0.0  # equal as a number, other bits
    return {
        "transposed": Layout.grid(4, 3),
        "batch of two": Layout.grid(3, 4, batch=2),
        "two regions": Layout.regions_of([(3, 2), (3, 2)]),
        "separators": Layout.regions_of([(3, 4)], separators=True),
        "one token invalid": Layout.trusted(**{**fields, "valid": one_invalid}),
        "two tokens swapped": Layout.trusted(**{**fields, "coords": moved}),
        "-0.0": Layout.trusted(**{**fields, "coords": negative_zero}),
        "float64 coords": Layout.trusted(**{**fields, "coords": fields["coords"].double()}),
        "bfloat16 coords": Layout.trusted(**{**fields, "coords": fields["coords"].bfloat16()}),
        "region boxes": Layout.trusted(**fields, region_boxes=torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])),
        "region images": Layout.trusted(**fields, region_images=torch.zeros(1, 1, dtype=torch.long)),
        "region frames": Layout.trusted(**fields, region_frames=torch.zeros(1, 1, dtype=torch.long)),
    }


@pytest.mark.parametrize("variant", sorted(_variants()))
def test_another_content_computes_its_own_value(variant):
    compute, calls = _counting(lambda: torch.rand(2))
    base = layout_memo(Layout.grid(3, 4), "k", compute)
    layout = _variants()[variant]
    value = layout_memo(layout, "k", compute)
    assert len(calls) == 2 and not torch.equal(value, base)
    assert layout_memo(_copy(layout), "k", compute) is value  # the variant's content: its value
    assert len(calls) == 2


def test_nan_coords_match_by_their_bits():
    layout = Layout.regions_of([(2, 3)], separators=True)  # NaN (row, col) of the separators
    compute, calls = _counting(lambda: torch.rand(2))
    layout_memo(layout, "k", compute)
    layout_memo(_copy(layout), "k", compute)
    assert len(calls) == 1


def test_a_shared_value_is_a_copy_that_later_writes_cannot_reach():
    layout = Layout.grid(3, 4)
    value = layout_memo(layout, "valid", lambda: (layout.valid, layout.valid.contiguous()))
    assert all(v.untyped_storage().data_ptr() != layout.valid.untyped_storage().data_ptr() for v in value)
    layout.valid[0, 2] = False  # the layout it came from changes: its own value is recomputed
    assert not bool(layout_memo(layout, "valid", lambda: (layout.valid.clone(),))[0][0, 2])
    fresh = Layout.grid(3, 4)  # a layout of the first content still finds the first value
    assert bool(layout_memo(fresh, "valid", lambda: pytest.fail("recomputed"))[0].all())


def test_at_most_max_geometries_are_shared(monkeypatch):
    monkeypatch.setattr(_layout_memo, "MAX_GEOMETRIES", 3)
    compute, calls = _counting(lambda: torch.rand(2))
    for width in range(1, 5):  # four geometries: the first is dropped
        layout_memo(Layout.grid(2, width), "k", compute)
    assert len(_layout_memo._shared) == 3
    layout_memo(Layout.grid(2, 4), "k", compute)  # the most recent stays
    assert len(calls) == 4
    layout_memo(Layout.grid(2, 1), "k", compute)
    assert len(calls) == 5


def test_nothing_is_shared_with_max_geometries_zero(monkeypatch):
    monkeypatch.setattr(_layout_memo, "MAX_GEOMETRIES", 0)
    layout = Layout.grid(3, 4)
    compute, calls = _counting(lambda: layout.valid)
    assert layout_memo(layout, "k", compute) is layout.valid  # not shared: not copied
    assert layout_memo(layout, "k", compute) is layout.valid
    layout_memo(Layout.grid(3, 4), "k", compute)
    assert len(calls) == 2 and not _layout_memo._shared


def test_layouts_off_the_cpu_are_not_shared():
    layout = Layout.grid(3, 4, device="meta")  # reading a device's tensor would wait for it
    compute, calls = _counting(lambda: layout.valid)
    layout_memo(layout, "k", compute)
    layout_memo(layout, "k", compute)  # the same object is remembered as before
    layout_memo(_copy(layout), "k", compute)
    assert len(calls) == 2


@pytest.mark.parametrize("field", ["coords", "regions", "region_shapes", "valid"])
def test_an_in_place_write_to_any_tensor_looks_the_layout_up_again(field):
    layout = Layout.grid(3, 4)
    compute, calls = _counting(lambda: torch.rand(2))
    first = layout_memo(layout, "k", compute)
    tensor = getattr(layout, field)
    tensor.view(-1)[:1].copy_(tensor.view(-1)[:1])  # same value, through a view: still a write
    assert layout_memo(layout, "k", compute) is first  # the same content: the same value
    entry = vars(layout)[SLOT]
    assert entry.versions[_FIELDS.index(field)] == tensor._version  # looked up again
    head = tensor.view(-1)[:1]
    head.copy_(~head if tensor.dtype == torch.bool else head + 1)  # another value
    assert layout_memo(layout, "k", compute) is not first
    assert len(calls) == 2
    layout_memo(layout, "k", compute)
    assert len(calls) == 2


def test_a_swapped_tensor_looks_the_layout_up_again():
    layout = Layout.grid(3, 4)
    compute, calls = _counting(lambda: torch.rand(2))
    first = layout_memo(layout, "k", compute)
    object.__setattr__(layout, "valid", layout.valid.clone())  # same version (0), another tensor
    assert layout_memo(layout, "k", compute) is first and vars(layout)[SLOT].tensors[3] is layout.valid
    valid = layout.valid.clone()
    valid[0, 0] = False
    object.__setattr__(layout, "valid", valid)  # another tensor of another content
    assert layout_memo(layout, "k", compute) is not first
    assert len(calls) == 2


def test_inference_tensors_are_looked_up_by_content_at_every_call():
    with torch.inference_mode():
        layout = Layout.grid(3, 4)
    compute, calls = _counting(lambda: torch.rand(2))
    first = layout_memo(layout, "k", compute)
    assert layout_memo(layout, "k", compute) is first
    assert SLOT not in vars(layout)  # no version counter: nothing is kept on the object
    with torch.inference_mode():
        layout.valid[0, 3] = False  # a write no version counter sees
    assert layout_memo(layout, "k", compute) is not first
    assert len(calls) == 2


def test_the_value_goes_with_its_layout(monkeypatch):
    monkeypatch.setattr(_layout_memo, "MAX_GEOMETRIES", 0)  # nothing shared holds it
    layout = Layout.grid(3, 4)
    value = weakref.ref(layout_memo(layout, "k", lambda: torch.rand(2)))
    assert SLOT in vars(layout) and value() is not None
    del layout
    gc.collect()
    assert value() is None


def test_gaussian_follows_an_in_place_change_of_the_layout():
    layout = Layout.regions_of([(4, 6), (3, 3)], separators=True)
    scores = torch.rand(1, layout.num_tokens)
    cues = Cues(layout, attention=scores)
    gaussian = Gaussian()
    assert torch.equal(gaussian(scores, cues), scores * gaussian_map(layout).float())
    layout.valid[0, 5] = False  # the factor of a token without a place is 1
    layout.region_shapes[0, 1] = torch.tensor([3, 2])  # and the second region's factors move
    layout.regions[0, layout.regions[0] == 1] = torch.where(layout.coords[0, layout.regions[0] == 1, 1] < 2, 1, -1)
    expected = scores * gaussian_map(layout).float()
    assert not torch.equal(expected, scores * gaussian_map(Layout.regions_of([(4, 6), (3, 3)], separators=True)).float())
    assert torch.equal(gaussian(scores, cues), expected)
    assert torch.equal(Gaussian(sigma=2.0)(scores, cues), scores * gaussian_map(layout, 2.0).float())
    double = scores.double()
    assert torch.equal(gaussian(double, cues), double * gaussian_map(layout))


def test_the_c_kernel_follows_an_in_place_change_of_the_layout():
    layout = Layout.grid(6, 6, batch=2)
    gen = torch.Generator().manual_seed(0)
    cues = Cues(layout, attention=torch.rand(2, 36, generator=gen), keys=torch.randn(2, 36, 8, generator=gen))
    pruner = tokenprune.pruner("adaptprune", keep=5)
    budget = torch.tensor([5, 5])
    with compile_mode(True), soft_nms_cpu.native_mode(True):
        first = pruner.select(cues, budget)
        top = int(first.indices[0, 0])
        layout.valid[0, top] = False  # the top token becomes padding: never kept again
        layout.coords[1] = layout.coords[1].roll(7, dims=0)  # sample 1's tokens change places
        again = pruner.select(cues, budget)
        _layout_memo.MAX_GEOMETRIES, shared = 0, _layout_memo.MAX_GEOMETRIES  # computed afresh
        try:
            fresh = pruner.select(Cues.trusted(_copy(layout), attention=cues.attention, keys=cues.keys), budget)
        finally:
            _layout_memo.MAX_GEOMETRIES = shared
    assert not bool(again.mask[0, top])
    assert not torch.equal(again.indices[1], first.indices[1])  # the change matters
    assert torch.equal(again.indices, fresh.indices)
    assert torch.equal(again.mask, fresh.mask)
    assert torch.equal(again.scores, fresh.scores)


_GEOMETRIES = {
    "grid": lambda: Layout.grid(6, 6, batch=2),
    "regions with separators": lambda: Layout.regions_of([(4, 5), (3, 3)], separators=True, batch=2),
    "ragged": lambda: Layout.stack([Layout.grid(5, 5), Layout.regions_of([(3, 4), (2, 2)], separators=True)]),
}
_INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bits (NaN included, unlike torch.equal)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        a, b = a.view(_INTS[a.element_size()]), b.view(_INTS[b.element_size()])
    return torch.equal(a, b)


@pytest.mark.parametrize("native", [True, False], ids=["c kernel", "torch steps"])
@pytest.mark.parametrize("geometry", sorted(_GEOMETRIES))
def test_calls_on_new_layouts_of_one_geometry_are_bitwise_the_calls_computed_afresh(geometry, native, monkeypatch):
    build = _GEOMETRIES[geometry]
    layout = build()
    gen = torch.Generator().manual_seed(1)
    shape = (layout.batch_size, layout.num_tokens)
    attention, keys = torch.rand(shape, generator=gen), torch.randn(*shape, 8, generator=gen)
    pruner = tokenprune.pruner("adaptprune", keep=5)
    budget = pruner.budget(layout.num_valid())

    def calls(lay: Layout) -> list:
        engine = pruner.select(Cues.trusted(lay, attention=attention, keys=keys), budget)
        return [engine, pruner(Cues(lay, attention=attention, keys=keys))]

    with compile_mode(native), soft_nms_cpu.native_mode(native):  # no compile for the torch steps
        with monkeypatch.context() as patch:
            patch.setattr(_layout_memo, "MAX_GEOMETRIES", 0)
            fresh = calls(build())
        assert not _layout_memo._shared
        shared = [calls(build()) for _ in range(3)]  # the first computes, the others share
    assert len(_layout_memo._shared) == 1
    for got in shared:
        for selection, expected in zip(got, fresh):
            assert torch.equal(selection.indices, expected.indices)
            assert torch.equal(selection.mask, expected.mask)
            assert _same_bits(selection.scores, expected.scores)
    # What the calls read is still what the layout gives afresh: no caller wrote into it.
    (values,) = _layout_memo._shared.values()
    assert ("gaussian", None, torch.float32) in values and (("soft_nms_cpu" in values) == native)
    for key, value in values.items():
        if key == "soft_nms_cpu":
            expected = soft_nms_cpu._layout_inputs(layout)
        else:
            expected = gaussian_map(layout, key[1]).to(key[2])
        value, expected = (value, expected) if isinstance(value, tuple) else ((value,), (expected,))
        assert all(_same_bits(v, e) for v, e in zip(value, expected, strict=True))
