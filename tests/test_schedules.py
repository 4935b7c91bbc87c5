"""PyramidDrop's schedule: points, keeps and argument checks."""

from __future__ import annotations

import pytest

import tokenprune
from tokenprune import SpecError
from tokenprune.schedules import pyramid


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
