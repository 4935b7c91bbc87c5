"""benchmarks/prefill.py: a quick run prints every configuration's row and the speedup
the machine allows (the plain model timed at L and L'), and that arithmetic is right."""

from __future__ import annotations

import re

import pytest
from script_modules import ROOT, script_module

SCRIPT = ROOT / "benchmarks" / "prefill.py"


@pytest.fixture(scope="module")
def prefill():
    with script_module(SCRIPT, "prefill") as module:
        yield module


def test_ceiling_times_layers_before_k_long_and_the_rest_short(prefill):
    size = prefill.Size(layers=8, hidden=16, heads=1, intermediate=32, vocab=10)
    # 8 layers at 1.0 s each unpruned, 0.25 s each at L': 2 x 1.0 + 6 x 0.25 = 3.5 s.
    assert prefill.ceiling_speedup(8.0, 2.0, 2, size) == pytest.approx(8.0 / 3.5)
    assert prefill.ceiling_speedup(8.0, 8.0, 2, size) == pytest.approx(1.0)


def test_a_quick_run_reports_rows_and_the_ceiling(prefill, capsys):
    prefill.main(["--quick", "--repeats", "1", "--warmup", "0", "--keeps", "0.1", "--threads", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| llava (576) |")]
    assert [row.split("|")[2].strip() for row in rows] == ["unpruned", "fastv", "fastv", "adaptprune"]
    ceilings = re.findall(r"keep 0\.1 can reach ([0-9.]+)x here; reached: fastv (\d+)%, adaptprune (\d+)%", out)
    assert len(ceilings) == 2  # from medians and from minimums
    assert all(float(speedup) > 1 for speedup, _, _ in ceilings)
