"""The compile switch and the eager fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

import tokenprune
from tokenprune.compile import compile_mode, maybe_compiled


def test_set_compile_switches_and_validates():
    before = tokenprune.compile_enabled()
    try:
        tokenprune.set_compile(False)
        assert not tokenprune.compile_enabled()
        with compile_mode(True):
            assert tokenprune.compile_enabled()
        assert not tokenprune.compile_enabled()
    finally:
        tokenprune.set_compile(before)
    with pytest.raises(TypeError, match="enabled: expected a bool"):
        tokenprune.set_compile("no")


def test_environment_variable_turns_compile_off():
    code = "import tokenprune; print(tokenprune.compile_enabled())"
    out = subprocess.run(
        [sys.executable, "-c", code], env={"TOKENPRUNE_COMPILE": "0", "PATH": ""}, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_compile_failure_falls_back_to_eager_with_one_warning():
    calls = []

    def double(x):
        calls.append(1)
        return x * 2

    run = maybe_compiled(double)

    def broken(*args, **kwargs):
        raise RuntimeError("no C compiler")

    run.compiled = broken  # what a missing toolchain looks like at the first call
    with compile_mode(True):
        with pytest.warns(RuntimeWarning, match="torch.compile of double failed on cpu .*no C compiler.*eagerly"):
            assert torch.equal(run(torch.ones(2)), torch.full((2,), 2.0))
        assert torch.equal(run(torch.ones(2)), torch.full((2,), 2.0))  # no second warning, still eager
    assert len(calls) == 2


def test_an_error_of_the_function_itself_propagates_and_keeps_compile_on():
    def checked(x, bad):
        if bad:
            raise ValueError("x: expected something else")
        return x + 1

    run = maybe_compiled(checked)
    with compile_mode(True), warnings.catch_warnings():
        warnings.simplefilter("error")  # no "compile failed" warning
        with pytest.raises(ValueError, match="x: expected something else"):
            run(torch.ones(2), True)
        compiled_calls = []
        real = run.compiled
        run.compiled = lambda *a, **k: compiled_calls.append(1) or real(*a, **k)
        assert torch.equal(run(torch.ones(2), False), torch.full((2,), 2.0))
    assert compiled_calls == [1]  # still the compiled path


def test_eager_and_compiled_select_the_same_tokens():
    layout = tokenprune.Layout.grid(24, 24, batch=2)
    g = torch.Generator().manual_seed(3)
    cues = tokenprune.Cues(layout, attention=torch.rand(2, 576, generator=g), keys=torch.randn(2, 576, 32, generator=g))
    pruner = tokenprune.pruner("adaptprune", keep=0.1)
    with compile_mode(False):
        eager = pruner(cues)
    with compile_mode(True):
        compiled = pruner(cues)
    assert torch.equal(eager.indices, compiled.indices)
    torch.testing.assert_close(eager.scores, compiled.scores)


def test_a_long_compile_error_is_summarised_with_a_pointer_to_the_full_log():
    run = maybe_compiled(lambda x: x + 1)
    log = "FATAL first line\n" + "gcc: cc1plus output line\n" * 20_000  # ~500 KB, like a build log

    def broken(*args, **kwargs):
        raise RuntimeError(log)

    run.compiled = broken
    with compile_mode(True), pytest.warns(RuntimeWarning) as caught:
        run(torch.ones(2))
    message = str(caught[0].message)
    assert len(message) < 600
    assert "RuntimeError: FATAL first line" in message
    path = message.split("full error in ")[1].split("]")[0]
    with open(path, encoding="utf-8") as saved:
        assert saved.read() == f"RuntimeError: {log}"
    os.remove(path)
