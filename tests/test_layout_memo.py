"""Per-layout remembered values: reused on the same unchanged layout, never stale."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import tokenprune
from tokenprune import Cues, Layout
from tokenprune._layout_memo import SLOT, layout_memo
from tokenprune.compile import compile_mode
from tokenprune.strategies import soft_nms_cpu
from tokenprune.strategies.transforms import Gaussian, gaussian_map


def _counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value() if callable(value) else value

    return compute, calls


def _copy(layout: Layout) -> Layout:
    """An equal layout of new tensors (a value remembered for ``layout`` cannot apply)."""
    return Layout.trusted(**{name: getattr(layout, name) for name in ("coords", "regions", "region_shapes", "valid")})


def test_remembered_on_the_same_layout_and_key():
    layout = Layout.grid(3, 4)
    compute, calls = _counting(lambda: torch.rand(2))
    first = layout_memo(layout, "k", compute)
    assert layout_memo(layout, "k", compute) is first
    assert len(calls) == 1
    layout_memo(layout, "other", compute)  # another key computes its own value
    assert len(calls) == 2


def test_another_layout_object_computes_again():
    layout = Layout.grid(3, 4)
    compute, calls = _counting(lambda: torch.rand(2))
    layout_memo(layout, "k", compute)
    layout_memo(Layout.grid(3, 4), "k", compute)
    layout_memo(_copy(layout), "k", compute)
    assert len(calls) == 3


@pytest.mark.parametrize("field", ["coords", "regions", "region_shapes", "valid"])
def test_an_in_place_write_to_any_tensor_computes_again(field):
    layout = Layout.grid(3, 4)
    compute, calls = _counting(lambda: torch.rand(2))
    layout_memo(layout, "k", compute)
    tensor = getattr(layout, field)
    tensor.view(-1)[:1].copy_(tensor.view(-1)[:1])  # same value, through a view: still a write
    layout_memo(layout, "k", compute)
    assert len(calls) == 2
    layout_memo(layout, "k", compute)
    assert len(calls) == 2


def test_a_swapped_tensor_computes_again():
    layout = Layout.grid(3, 4)
    compute, calls = _counting(lambda: torch.rand(2))
    layout_memo(layout, "k", compute)
    object.__setattr__(layout, "valid", layout.valid.clone())  # same version (0), another tensor
    layout_memo(layout, "k", compute)
    assert len(calls) == 2


def test_inference_tensors_are_never_remembered():
    with torch.inference_mode():
        layout = Layout.grid(3, 4)
    compute, calls = _counting(lambda: torch.rand(2))
    layout_memo(layout, "k", compute)
    layout_memo(layout, "k", compute)
    assert len(calls) == 2


def test_the_value_goes_with_its_layout():
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
        fresh = pruner.select(Cues.trusted(_copy(layout), attention=cues.attention, keys=cues.keys), budget)
    assert not bool(again.mask[0, top])
    assert not torch.equal(again.indices[1], first.indices[1])  # the change matters
    assert torch.equal(again.indices, fresh.indices)
    assert torch.equal(again.mask, fresh.mask)
    assert torch.equal(again.scores, fresh.scores)
