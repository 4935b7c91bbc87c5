"""benchmarks/selector_host_time.py runs and reports every call kind (tiny sizes: under a second)."""

from __future__ import annotations

import ctypes

import pytest
from script_modules import ROOT, script_module

from tokenprune.compile import compile_mode
from tokenprune.strategies import soft_nms_cpu


@pytest.fixture(scope="module")
def host_time():
    with script_module(ROOT / "benchmarks" / "selector_host_time.py", "selector_host_time") as module:
        yield module


def test_reports_each_call_kind_at_each_batch_and_dtype(host_time):
    with compile_mode(True), soft_nms_cpu.native_mode(True):
        lines = host_time.main(["--side", "4", "--d", "8", "--k", "3", "--calls", "4", "--calls-batch", "2", "--rounds", "2"])
    rows = [line.split("|")[1:-1] for line in lines[2:]]
    assert [(r[0].strip(), r[1].strip(), r[2].strip()) for r in rows] == [
        (name, b, dtype) for b in ("1", "8") for dtype in ("float32", "bfloat16") for name in host_time.CALLS
    ]
    for row in rows:
        median, p10 = float(row[3]), float(row[4])
        assert 0 < p10 <= median
    assert all(isinstance(f, ctypes._CFuncPtr) for f in soft_nms_cpu._functions.values())  # restored


def test_prefill_mode_reports_each_part_at_each_batch_and_mode(host_time):
    with compile_mode(True), soft_nms_cpu.native_mode(True):
        lines = host_time.main(["--prefill", "--prefills", "1", "--rounds", "1", "--batches", "1", "2"])
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[2:]]
    assert [(r[0], r[1]) for r in rows] == [(b, mode) for b in ("1", "2") for mode in host_time.PREFILL_MODES]
    for row in rows:  # one prefill per row: each median is that prefill's time
        parts = [float(cell) for cell in row[2:-3]]
        assert all(p > 0 for p in parts) and float(row[-3]) == pytest.approx(sum(parts), abs=2e-3)
        assert float(row[-2]) == float(row[-3])
    assert (host_time._layout_memo.MAX_GEOMETRIES, host_time.builder.MAX_SAMPLES) == (8, 64)  # restored
