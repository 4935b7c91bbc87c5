"""soft_nms checks the keys itself in the pass that reads them (the C kernel's self-dots),
so the public call does not read them once more beforehand: the same refusals and the
same errors as `tokenprune.finite.check_finite`, and nothing else changes."""

from __future__ import annotations

import sys
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenprune
from tokenprune import CueError, Cues, Layout
from tokenprune.compile import compile_mode
from tokenprune.finite import check_finite
from tokenprune.strategies import soft_nms, soft_nms_cpu
from tokenprune.strategies.base import Score

from .draw import (
    Given,
    keep_values,
    keys_for,
    layouts,
    scores_for,
    soft_nms_selector,
    torch_threads,
)

BAD = [float("nan"), float("inf"), -float("inf"), 3e38, 1.5e19]  # the last two: norms that overflow (float32)


def _verdict(fn) -> str | None:
    """The CueError message of ``fn()``, or None when it returns."""
    try:
        fn()
    except CueError as exc:
        return str(exc)
    return None


@settings(max_examples=40)
@given(
    data=st.data(),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    threads=st.sampled_from([1, 2]),
)
def test_the_kernel_refuses_exactly_what_check_finite_refuses(data, dtype, threads):
    """Bad entries anywhere (valid tokens, padding, tokens no kept window reaches), every
    key dtype, threads or not: the public call raises check_finite's error, or returns the
    selection of the unchecked engine call."""
    layout = data.draw(layouts(max_batch=3, max_side=10))
    scores = data.draw(scores_for(layout, dtype=torch.float32))
    keys = data.draw(keys_for(layout, dim=data.draw(st.integers(1, 40)))).to(dtype)
    b, n, d = keys.shape
    for _ in range(data.draw(st.integers(0, 2))):
        where = (data.draw(st.integers(0, b - 1)), data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, d - 1)))
        keys[where] = data.draw(st.sampled_from(BAD))
    before = keys.clone()
    pruner = tokenprune.Pruner(Given(scores), (), soft_nms_selector(2.5, 1.5, 0.05), keep=data.draw(keep_values(layout)))
    cues = Cues(layout, keys=keys)
    expected = _verdict(lambda: check_finite("keys", keys, layout.valid))
    with compile_mode(True), mock.patch.object(soft_nms_cpu, "THREAD_WORK", 0), torch_threads(threads):
        got = _verdict(lambda: pruner(cues))
        if expected is None:
            assert got is None
            assert torch.equal(pruner(cues).indices, pruner.select(cues, pruner.budget(layout.num_valid())).indices)
    assert got == expected
    assert torch.equal(keys.view(torch.uint8), before.view(torch.uint8))  # untouched, NaN bits included


def _recorded_checks(monkeypatch) -> list[str]:
    """Names of what the public call checks (cues, then the scores of each stage)."""
    names: list[str] = []

    def recording(name, value, valid):
        names.append(name)
        check_finite(name, value, valid)

    # The module, not the function that `tokenprune.pruner` names.
    monkeypatch.setattr(sys.modules["tokenprune.pruner"], "check_finite", recording)
    return names


def test_the_public_call_leaves_the_keys_to_the_kernel(monkeypatch):
    names = _recorded_checks(monkeypatch)
    kernel = []
    real = soft_nms_cpu.run
    monkeypatch.setattr(soft_nms_cpu, "run", lambda *a, **k: kernel.append(k["check_keys"]) or real(*a, **k))
    cues = Cues(Layout.grid(8, 8), attention=torch.rand(1, 64), keys=torch.randn(1, 64, 16))
    with compile_mode(True):
        tokenprune.pruner("adaptprune", keep=6)(cues)
        assert (names[0], "keys" in names, kernel) == ("attention", False, [True])
        names.clear(), kernel.clear()
        pruner = tokenprune.pruner("adaptprune", keep=6)
        pruner.select(cues, pruner.budget(cues.layout.num_valid()))  # the engine's call checks nothing
        assert (names, kernel) == ([], [False])


@pytest.mark.parametrize("native", [True, False])
def test_a_bad_key_no_window_reaches_is_refused(native):
    # keep 1 on a 12 x 12 grid with radius 2.5: most keys are never needed for a factor;
    # the kernel reads them for the check alone, the torch steps check them first.
    keys = torch.randn(1, 144, 8)
    keys[0, 143, 7] = float("nan")
    scores = torch.zeros(1, 144)
    scores[0, 0] = 1.0  # kept first, far from token 143
    pruner = tokenprune.Pruner(Given(scores), (), soft_nms_selector(2.5, 1.5, 0.05), keep=1)
    message = "keys: expected finite values, got NaN/inf \\(first at sample 0, token 143\\)"
    with compile_mode(native), soft_nms_cpu.native_mode(native), pytest.raises(CueError, match=message):
        pruner(Cues(Layout.grid(12, 12), keys=keys))


def test_a_bad_key_is_named_before_a_negative_score():
    # As when the keys were checked first: the keys' error, not the scores'.
    keys = torch.randn(1, 16, 3)
    keys[0, 9, 1] = float("inf")
    pruner = tokenprune.Pruner(Given(-torch.ones(1, 16)), (), soft_nms_selector(5.0, 1.5, 0.05), keep=2)
    with compile_mode(True), pytest.raises(CueError, match="keys: expected finite values.*token 9"):
        pruner(Cues(Layout.grid(4, 4), keys=keys))


def test_keys_a_score_stage_reads_are_checked_before_it_runs(monkeypatch):
    names = _recorded_checks(monkeypatch)
    ran = []

    class KeyNorm(Score):
        name = "key_norm"
        requires = frozenset({"keys"})

        def __call__(self, cues):
            ran.append(True)
            return cues.keys.norm(dim=-1)

    keys = torch.randn(1, 16, 3)
    keys[0, 4, 0] = float("nan")
    pruner = tokenprune.Pruner(KeyNorm(), (), soft_nms_selector(5.0, 1.5, 0.05), keep=2)
    with compile_mode(True), pytest.raises(CueError, match="keys: expected finite values.*token 4"):
        pruner(Cues(Layout.grid(4, 4), keys=keys))
    assert names == ["keys"] and ran == []


def test_keys_are_checked_where_the_kernel_gives_way_to_the_torch_steps(monkeypatch):
    monkeypatch.setattr(soft_nms_cpu, "MAX_ENTRIES", 1)  # the kernel returns None before reading keys
    keys = torch.randn(1, 36, 4)
    keys[0, 20, 2] = float("nan")
    monkeypatch.setattr(soft_nms, "_window_steps", soft_nms._window_steps.eager)  # no inductor compile
    pruner = tokenprune.Pruner(Given(torch.rand(1, 36)), (), soft_nms_selector(2.5, 1.5, 0.05), keep=5)
    with compile_mode(True), pytest.raises(CueError, match="keys: expected finite values.*token 20"):
        pruner(Cues(Layout.grid(6, 6), keys=keys))
