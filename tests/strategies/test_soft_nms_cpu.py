"""soft_nms's C kernel (lazy suppression) == Algorithm 1 reference and == the torch steps."""

from __future__ import annotations

import warnings
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenprune
from tokenprune import Cues, Layout
from tokenprune.compile import compile_mode
from tokenprune.errors import CueError
from tokenprune.strategies import soft_nms, soft_nms_cpu
from tokenprune.strategies.soft_nms import SoftNMS, SpatialDecay, TemporalDecay

from .draw import (
    Given,
    keep_values,
    keys_for,
    layouts,
    scores_for,
    soft_nms_selector,
    torch_threads,
)
from .reference import assert_matches_ref_soft_nms, ref_budget, ref_soft_nms, tokens_of


def _select(layout, scores, keys, keep, selector, native: bool):
    """The selection with the C kernel (native) or the torch steps run eagerly."""
    pruner = tokenprune.Pruner(Given(scores), (), selector, keep=keep)
    with compile_mode(native), soft_nms_cpu.native_mode(native):
        return pruner(Cues(layout, keys=keys))


def _kernel_calls(monkeypatch) -> list[int]:
    """Count the kernel's runs (to prove a test exercised it, not the torch steps)."""
    calls = []
    real = soft_nms_cpu.run

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(soft_nms_cpu, "run", counted)
    return calls


@pytest.fixture
def eager_torch_steps(monkeypatch):
    """The torch steps run eagerly even where compiling is on (no inductor compile in
    tests that only check which path runs)."""
    monkeypatch.setattr(soft_nms, "_window_steps", soft_nms._window_steps.eager)
    monkeypatch.setattr(soft_nms, "_dense_steps", soft_nms._dense_steps.eager)


@given(data=st.data())
def test_kernel_matches_algorithm_1_float64(data):
    layout = data.draw(layouts())
    scores = data.draw(scores_for(layout, ties=data.draw(st.booleans())))
    keys = data.draw(keys_for(layout))
    keep = data.draw(keep_values(layout))
    radius = data.draw(st.sampled_from([5.0, 1.5, 2.0, 0.5]))
    sigma_d = data.draw(st.sampled_from([1.5, 0.7, None]))
    sigma_s = data.draw(st.sampled_from([0.05, 0.5, None]))
    selection = _select(layout, scores, keys, keep, soft_nms_selector(radius, sigma_d, sigma_s), native=True)
    assert_matches_ref_soft_nms(selection, layout, scores, keys, keep, radius, sigma_d, sigma_s)


@settings(max_examples=25)
@given(data=st.data(), key_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]))
def test_kernel_matches_the_torch_steps_for_every_key_dtype(data, key_dtype):
    # Keys gathered in their own dtype, arithmetic in the scores' dtype, on both paths.
    layout = data.draw(layouts(max_batch=3, max_side=12))
    score_dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    scores = data.draw(scores_for(layout)).to(score_dtype)
    keys = data.draw(keys_for(layout, dim=data.draw(st.integers(1, 40)))).to(key_dtype)
    keep = data.draw(keep_values(layout))
    selector = soft_nms_selector(5.0, 1.5, 0.5)
    native = _select(layout, scores, keys, keep, selector, native=True)
    steps = _select(layout, scores, keys, keep, selector, native=False)
    assert torch.equal(native.indices, steps.indices)
    assert torch.equal(native.mask, steps.mask)
    assert native.scores.dtype == steps.scores.dtype == score_dtype
    tol = {"rtol": 1e-5, "atol": 1e-6} if score_dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-12}
    torch.testing.assert_close(native.scores, steps.scores, **tol)


@pytest.mark.parametrize("keep", [0, 1, 7, 200])
def test_budgets_past_the_valid_tokens_match_the_torch_steps(keep):
    # Trusted callers may ask for more than the valid tokens (or none): both paths then
    # fall back to index 0 the same way, and nothing indexes out of range.
    layout = Layout.stack([Layout.grid(3, 4), Layout.grid(2, 2)])
    g = torch.Generator().manual_seed(keep)
    scores = torch.rand(2, layout.num_tokens, generator=g, dtype=torch.float64).masked_fill(~layout.valid, float("-inf"))
    keys = torch.randn(2, layout.num_tokens, 5, generator=g)
    budget = torch.tensor([keep, min(keep, 3)])
    selector = soft_nms_selector(5.0, 1.5, 0.05)
    with compile_mode(True):
        native = selector(scores, Cues(layout, keys=keys), budget)
    with compile_mode(False):
        steps = selector(scores, Cues(layout, keys=keys), budget)
    assert torch.equal(native.mask, steps.mask)
    assert torch.equal(native.indices, steps.indices)
    torch.testing.assert_close(native.scores, steps.scores, rtol=1e-12, atol=0)


def test_keys_are_read_in_place_with_their_strides(monkeypatch):
    calls = _kernel_calls(monkeypatch)
    layout = Layout.grid(6, 7, batch=2)
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(2, layout.num_tokens + 3, 24, generator=g)
    keys = wide[:, 2 : 2 + layout.num_tokens, 4:20]  # rows and batches strided, D contiguous
    scores = torch.rand(2, layout.num_tokens, generator=g, dtype=torch.float64)
    strided = _select(layout, scores, keys, 9, soft_nms_selector(5.0, 1.5, 0.05), native=True)
    packed = _select(layout, scores, keys.contiguous(), 9, soft_nms_selector(5.0, 1.5, 0.05), native=True)
    assert calls == [True, True]
    assert torch.equal(strided.indices, packed.indices)
    assert torch.equal(strided.scores, packed.scores)


def test_negative_scores_raise_and_change_nothing():
    layout = Layout.grid(4, 4)
    scores = torch.rand(1, 16, dtype=torch.float64)
    scores[0, 5] = -0.25
    before = scores.clone()
    with compile_mode(True), pytest.raises(CueError, match="needs them >= 0, got min -0.25"):
        SoftNMS()(scores, Cues(layout, keys=torch.randn(1, 16, 3)), torch.tensor([3]))
    assert torch.equal(scores, before)


def test_other_decays_use_the_torch_steps(monkeypatch, eager_torch_steps):
    calls = _kernel_calls(monkeypatch)
    layout = Layout.grid(5, 5)
    cues = Cues(layout, attention=torch.rand(1, 25), keys=torch.randn(1, 25, 4))
    with compile_mode(True):
        tokenprune.pruner("adaptprune", keep=4)(cues)
        assert calls == [True]
        for selector in (
            SoftNMS(radius=None),  # the whole region as window
            SoftNMS(decays=(SpatialDecay(1.5), TemporalDecay())),
            SoftNMS(decays=(SpatialDecay(1.5), SpatialDecay(2.0))),
        ):
            selector(torch.rand(1, 25), cues, torch.tensor([4]))
        with soft_nms_cpu.native_mode(False):
            tokenprune.pruner("adaptprune", keep=4)(cues)
    assert calls == [True]


def test_a_new_shape_or_dtype_builds_nothing_new(monkeypatch):
    built = []
    real = soft_nms_cpu.load
    monkeypatch.setattr(soft_nms_cpu, "load", lambda *a: built.append(a) or real(*a))
    pruner = tokenprune.pruner("adaptprune", keep=0.2)
    with compile_mode(True):
        for h, w, b, d in ((6, 6, 1, 8), (9, 4, 3, 16), (12, 12, 2, 5)):
            layout = Layout.grid(h, w, batch=b)
            pruner(Cues(layout, attention=torch.rand(b, h * w), keys=torch.randn(b, h * w, d)))
    assert len(built) <= 1  # float32 scores and keys: one library (none if built earlier)


def test_a_failed_build_warns_once_and_runs_the_torch_steps(monkeypatch, tmp_path, eager_torch_steps):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(soft_nms_cpu, "_functions", {})
    monkeypatch.setattr(soft_nms_cpu, "_failed", False)
    monkeypatch.setattr("tokenprune.native._loaded", {})
    layout = Layout.grid(5, 5)
    cues = Cues(layout, attention=torch.rand(1, 25, dtype=torch.float64), keys=torch.randn(1, 25, 4, dtype=torch.float64))
    pruner = tokenprune.pruner("adaptprune", keep=5)
    with compile_mode(False):
        expected = pruner(cues).indices
    with compile_mode(True):
        with pytest.warns(RuntimeWarning, match="building the soft_nms CPU kernel failed .*no C compiler"):
            assert torch.equal(pruner(cues).indices, expected)
        assert not soft_nms_cpu.native_enabled()
        with warnings.catch_warnings(record=True) as again:
            warnings.simplefilter("always")
            assert torch.equal(pruner(cues).indices, expected)
    assert not again


@settings(max_examples=6)
@given(data=st.data())
def test_compiled_torch_steps_match_reference(data):
    # Where the kernel does not run (CUDA, plugin decays), the compiled torch steps do.
    layout = data.draw(layouts(max_batch=2))
    scores = data.draw(scores_for(layout))
    keys = data.draw(keys_for(layout, dim=4))
    keep = data.draw(keep_values(layout))
    pruner = tokenprune.Pruner(Given(scores), (), soft_nms_selector(5.0, 1.5, 0.05), keep=keep)
    with compile_mode(True), soft_nms_cpu.native_mode(False):
        selection = pruner(Cues(layout, keys=keys))
    for b in range(layout.batch_size):
        k = ref_budget(keep, int(layout.valid[b].sum()))
        expected, _ = ref_soft_nms(scores[b].tolist(), tokens_of(layout, b), keys[b], k, 5.0, 1.5, 0.05)
        assert [i for i in selection.indices[b].tolist() if i >= 0] == expected


def test_more_entries_than_the_kernel_indexes_run_the_torch_steps(monkeypatch, eager_torch_steps):
    calls = _kernel_calls(monkeypatch)
    monkeypatch.setattr(soft_nms_cpu, "MAX_ENTRIES", 5 * 21)  # 5 kept x the 21-offset disc of radius 2.5
    layout = Layout.grid(6, 6)
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(1, 36, generator=g, dtype=torch.float64)
    keys = torch.randn(1, 36, 4, generator=g, dtype=torch.float64)
    selector = soft_nms_selector(2.5, 1.5, 0.05)
    fits = _select(layout, scores, keys, 5, selector, native=True)
    over = _select(layout, scores, keys, 6, selector, native=True)
    assert calls == [True, False]
    for keep, got in ((5, fits), (6, over)):
        assert torch.equal(got.indices, _select(layout, scores, keys, keep, selector, native=False).indices)


def test_set_native_validates():
    with pytest.raises(TypeError, match="enabled: expected a bool"):
        soft_nms_cpu.set_native(1)


@settings(max_examples=15)
@given(data=st.data(), threads=st.integers(2, 4))
def test_threads_change_no_bit(data, threads):
    # With threads the samples of a batch (B > 1) or one sample's final factors (B = 1)
    # are shared out; every value is the same bit for bit, and equals the torch steps'.
    layout = data.draw(layouts(max_batch=3, max_side=12))
    score_dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    scores = data.draw(scores_for(layout)).to(score_dtype)
    keys = data.draw(keys_for(layout, dim=data.draw(st.integers(1, 40))))
    keep = data.draw(keep_values(layout))
    selector = soft_nms_selector(5.0, 1.5, 0.5)
    with mock.patch.object(soft_nms_cpu, "THREAD_WORK", 0):  # small inputs take the threaded paths
        with torch_threads(1):
            one = _select(layout, scores, keys, keep, selector, native=True)
            assert soft_nms_cpu.last_threads == 1
        with torch_threads(threads):
            shared = _select(layout, scores, keys, keep, selector, native=True)
            used = soft_nms_cpu.last_threads
    assert used == (min(threads, layout.batch_size) if layout.batch_size > 1 else threads)
    assert torch.equal(shared.indices, one.indices)
    assert torch.equal(shared.mask, one.mask)
    assert torch.equal(shared.scores, one.scores)
    steps = _select(layout, scores, keys, keep, selector, native=False)
    assert torch.equal(shared.indices, steps.indices)


def test_threads_start_only_for_large_calls(monkeypatch):
    # The work of a call is kept tokens x window x D: at (N, D, K) = (576, 4096, 57)
    # 57 x 81 x 4096 reaches a THREAD_WORK of that size; with a small D it does not, and
    # the call stays on this thread.
    monkeypatch.setattr(soft_nms_cpu, "THREAD_WORK", 57 * 81 * 4096)
    layout = Layout.grid(24, 24)
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(1, 576, generator=g)
    selector = soft_nms_selector(5.0, 1.5, 0.05)
    with torch_threads(2):
        for dim, expected in ((4096, 2), (16, 1)):
            keys = torch.randn(1, 1, dim, generator=g) + 0.25 * torch.randn(1, 576, dim, generator=g)
            _select(layout, scores, keys, 57, selector, native=True)
            assert soft_nms_cpu.last_threads == expected
