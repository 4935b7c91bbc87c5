"""benchmarks/gpu_check.py runs end to end (CPU, --small) so it is ready for the first GPU."""

from __future__ import annotations

import json

import pytest
from script_modules import ROOT, script_module

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    with script_module(SCRIPT, "gpu_check") as module:
        yield module


def test_small_run_writes_json_and_markdown(gpu_check, tmp_path, eager_selectors):
    result = gpu_check.main(["--small", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["targets"] == result["targets"]
    plan = written["plan"]
    assert {(r["n"], r["b"], r["dtype"]) for r in written["selectors"]} == {
        (h * w, b, dtype) for h, w in plan["grids"] for b in plan["batches"] for dtype in plan["dtypes"]
    }
    assert all(r["same_as_eager"] for r in written["selectors"])
    # float32 keys without ties: the loop keeps the same tokens (bfloat16 rows are reported only).
    assert all(r["same_as_loop"] for r in written["selectors"] if "same_as_loop" in r and r["dtype"] == "float32")
    methods = [(r["method"], r["keep"]) for r in written["prefill"]["rows"]]
    assert methods == list(gpu_check.PREFILL_CONFIGS)
    assert len(written["targets"]) == 4  # N = 576 at B = 1 per dtype, gap, overhead
    text = (tmp_path / "gpu_check.md").read_text()
    assert "Targets:\n\n- " in text  # a markdown list, not a run-on paragraph
    assert text.count("\n| ") >= len(written["selectors"]) + len(methods)


def test_refuses_cuda_without_a_gpu(gpu_check, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check.main(["--device", "cuda"])
