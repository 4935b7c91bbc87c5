"""PyramidDrop's and SparseVLM's schedules: points, keeps and argument checks."""

from __future__ import annotations

import pytest

import tokenprune
from tokenprune import SpecError
from tokenprune.schedules import pyramid, sparsevlm


def test_the_paper_setting_for_llava_1_5():
    assert pyramid(32) == {8: ("pdrop", 0.5), 16: ("pdrop", 0.25), 24: ("pdrop", 0.125)}
    assert tokenprune.pruner("pdrop", keep=0.5).spec == "attention | top_k"


def test_other_splits():
    assert pyramid(24, stages=3, ratio=0.25, pruner="adaptprune") == {8: ("adaptprune", 0.25), 16: ("adaptprune", 0.0625)}
    assert pyramid(4) == {1: ("pdrop", 0.5), 2: ("pdrop", 0.25), 3: ("pdrop", 0.125)}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_layers": 1}, "num_layers: expected an int >= 2, got 1"),
        ({"num_layers": 8, "stages": 1}, r"stages: expected an int in \[2, 8\] \(num_layers\), got 1"),
        ({"num_layers": 8, "stages": 9}, r"stages: expected an int in \[2, 8\]"),
        ({"num_layers": 8, "ratio": 0.0}, r"ratio: expected a fraction in \(0, 1\], got 0.0"),
        ({"num_layers": 8, "ratio": True}, r"ratio: expected a fraction in \(0, 1\], got True"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(SpecError, match=match):
        pyramid(**kwargs)


def test_sparsevlm_is_the_authors_llava_setting():
    assert sparsevlm() == {2: ("sparsevlm", 300), 6: ("sparsevlm", 200), 15: ("sparsevlm", 110)}
    assert sparsevlm(64, pruner="fastv") == {2: ("fastv", 66), 6: ("fastv", 30), 15: ("fastv", 17)}
    assert tokenprune.pruner("sparsevlm", keep=0.5).spec == "rater_attention | top_k"


@pytest.mark.parametrize("budget", [100, 192.0, True, "192"])
def test_sparsevlm_budgets_are_the_papers(budget):
    with pytest.raises(SpecError, match=r"budget: expected one of \[64, 96, 128, 192\], got "):
        sparsevlm(budget)
