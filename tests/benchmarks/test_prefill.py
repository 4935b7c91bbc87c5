"""benchmarks/prefill.py: a quick run prints every configuration's row and the speedup
the machine allows (the plain model timed at L and L'), and that arithmetic is right."""

from __future__ import annotations

import re
import time

import pytest
from script_modules import ROOT, script_module

import tokenprune

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


def test_the_parts_of_a_llava_next_prefill_are_each_timed_once_and_restored(prefill):
    """LLaVA-NeXT's layout (base grid, unpadded tiles, separators) is built in the engine's
    setup; every part is reached (a renamed engine method would leave a part at zero and
    its time in ``rest``), the parts fit inside the prefill, and closing the timer puts
    the engine's own methods back."""
    from tokenprune.engine.session import PruneRun

    size = prefill.Size(layers=3, hidden=64, heads=2, intermediate=176, vocab=32064)
    case = prefill.make_case("llava_next", size)
    assert case.visual == 2928  # 576 base + 48 rows x (48 + 1 separator)
    before = {name: getattr(PruneRun, name) for name in ("_prefill", "_on_attention", "_prune_layer", "_cues")}
    with prefill.PartTimer() as timer:
        with tokenprune.prune(case.model, "fastv", keep=0.1, layer=2):
            timer.reset()
            start = time.perf_counter()
            prefill.prefill(case)()
            total = time.perf_counter() - start
        parts = timer.parts()
    assert set(parts) == set(prefill.PARTS)
    assert all(seconds > 0 for seconds in parts.values()), parts
    assert sum(parts.values()) < total
    assert {name: getattr(PruneRun, name) for name in before} == before


def test_a_parts_only_llava_next_run_reports_every_part(prefill, capsys):
    prefill.main(
        ["--quick", "--kinds", "llava_next", "--parts-only", "--repeats", "1",
         "--keeps", "0.1", "--threads", "1", "--layers", "3", "--hidden", "64"]
    )  # fmt: skip
    out = capsys.readouterr().out
    part_rows = [line.split("|") for line in out.splitlines() if line.startswith("| llava_next (2928) |")]
    assert all(len(row) == 7 for row in part_rows)  # image, part, fastv, adaptprune, difference: no table
    assert [row[2].strip() for row in part_rows] == [*prefill.PARTS, "rest", "total"]
    for row in part_rows:
        fastv, adaptprune, difference = (float(cell.replace(",", "")) for cell in row[3:6])
        assert difference == pytest.approx(adaptprune - fastv, abs=0.11)
