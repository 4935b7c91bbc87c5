"""benchmarks/selector_speed.py's markdown: a real list of targets, the key columns
first, everything else in a collapsible block, every row as wide as its header."""

from __future__ import annotations

import argparse

import pytest
from script_modules import ROOT, script_module

SCRIPT = ROOT / "benchmarks" / "selector_speed.py"


@pytest.fixture(scope="module")
def selector_speed():
    with script_module(SCRIPT, "selector_speed") as module:
        yield module


def _result(n, d, b, dtype, loop, compiled, differ=0):
    return {
        "config": {"n": n, "d": d, "k": n // 10, "b": b, "h": 1, "w": n, "dtype": dtype},
        "median_s": {"loop": loop, "eager": compiled * 5, "compiled": compiled},
        "repeats": {"loop": 3, "eager": 7, "compiled": 7},
        "loop_samples": b,
        "first_s": {"loop": loop, "eager": compiled * 5, "compiled": 3.0},
        "outside_graph_s": 1.5e-3,
        "outside_graph_engine_s": 1.5e-4,
        "differ": {"compiled_vs_eager": differ, "eager_vs_loop": 0, "compiled_vs_loop": 0},
        "peak_bytes": {"loop": 2**20, "eager": 2**20, "compiled": 2**19},
    }


def test_markdown_lists_targets_and_keeps_detail_collapsed(selector_speed):
    results = [
        _result(576, 4096, 1, "float32", 0.2, 0.0015),
        _result(576, 128, 1, "float32", 0.012, 0.002),
        _result(10000, 4096, 8, "float32", 1.0, 0.9),
        _result(576, 4096, 8, "bfloat16", 1.0, 0.01, differ=1),
    ]
    step = {"label": "first call", "first_s": 12.0, "again_s": 0.01, "graphs": 1}
    check = {"cold": [step, {**step, "label": "new D", "first_s": 0.02, "graphs": 0}], "warm": [step]}
    args = argparse.Namespace(device="cpu", quick=False, budget=30.0)
    text = selector_speed.report(results, check, args, 1.0)
    assert "Targets:\n\n- PASS: compiled at least 100x" in text  # a list, not a run-on paragraph
    assert "- MISS: compiled at least 10x faster than the loop at (576, 128, 57), B = 1: 6.0x" in text
    assert "- MISS: N = 10,000 (D = 4096, K = 1000) under 60 ms per sample, compiled, B = 8: 112.5 ms" in text
    assert "- MISS: identical indices across eager, compiled and the loop in every row (1 rows differ)" in text
    assert "- MISS: first call, empty cache, under 10 s: 12.00 s" in text
    assert "- PASS: host time outside the compiled graph under 0.2 ms at N = 576 (the engine's call; " in text
    assert "- PASS: new D: under 5 s more or no recompile" in text
    main, details = text.split('<details markdown="1">')
    details, compile_times = details.split("</details>")
    header = next(line for line in main.splitlines() if line.startswith("| N |"))
    assert header.count("|") - 1 <= 9  # the few columns a reader needs
    for block in (main, details, compile_times):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        assert rows and len({row.count("|") for row in rows}) == 1
