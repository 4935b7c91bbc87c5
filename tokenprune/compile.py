"""torch.compile for the selectors' inner steps, with an eager fallback.

The same switch covers soft_nms's C kernel for CPU tensors
(`tokenprune.strategies.soft_nms_cpu`). Compilation is on by default. Turn it off with ``tokenprune.set_compile(False)`` or the
environment variable ``TOKENPRUNE_COMPILE=0``. If compiling fails (no C compiler, an
unsupported device), tokenprune warns once and runs the same function eagerly on that
device type from then on; an error that the eager function raises as well (bad input, a
plugin's own error) propagates and leaves compilation on.
"""

from __future__ import annotations

import functools
import os
import tempfile
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.utils._pytree as pytree

__all__ = ["compile_enabled", "maybe_compiled", "set_compile"]

F = TypeVar("F", bound=Callable[..., Any])

_enabled = os.environ.get("TOKENPRUNE_COMPILE", "1").strip().lower() not in {"0", "false", "no", "off"}


def compile_enabled() -> bool:
    """Whether selectors run their compiled step functions."""
    return _enabled


def set_compile(enabled: bool) -> None:
    """Switch compiled selectors (torch.compile, and soft_nms's C kernel on CPU) on or off
    for this process."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {enabled!r}")
    _enabled = enabled


@contextmanager
def compile_mode(enabled: bool):
    """Temporarily switch compilation on or off: ``with compile_mode(False): ...``."""
    previous = compile_enabled()
    set_compile(enabled)
    try:
        yield
    finally:
        set_compile(previous)


def maybe_compiled(fn: F, *, cpu_threads: int | None = None) -> F:
    """``fn`` compiled when compilation is enabled, else ``fn``.

    ``cpu_threads=1`` compiles single-threaded CPU kernels: for a loop of small steps an
    OpenMP fork and join per kernel costs more than it saves, and on a loaded machine a
    descheduled worker stalls every step (CUDA kernels are unaffected).

    The compiled function is built once, at the first call that needs it (so importing a
    module that wraps a step costs nothing). Before each call the two leading dims of
    every tensor argument, also inside tuples (batch-first: B and N) are marked dynamic, so a new B or N
    does not recompile (dynamo specialises B = 1, so going from one sample to several
    compiles once more); trailing dims such as the key width D stay static, which lets
    inductor vectorise over them. If compilation raises, the failure is reported once
    and ``fn`` runs eagerly from then on.
    """
    options = None if cpu_threads is None else {"cpp.threads": cpu_threads}
    failed: set[str] = set()  # device types on which compiling failed

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        tensors = [a for a in pytree.tree_leaves(args) if isinstance(a, torch.Tensor)]
        device = tensors[0].device.type if tensors else "cpu"
        if not _enabled or device in failed:
            return fn(*args, **kwargs)
        if run.compiled is None:  # type: ignore[attr-defined]
            run.compiled = _compile(fn, options)  # type: ignore[attr-defined]
        for arg in tensors:
            for dim in range(min(arg.dim(), 2)):
                torch._dynamo.maybe_mark_dynamic(arg, dim)
        try:
            return run.compiled(*args, **kwargs)  # type: ignore[attr-defined]
        except Exception as exc:
            # The same call eagerly: if it raises too, the inputs are at fault (a user or
            # plugin error), so that error propagates and compilation stays on. If it
            # works, compiling is what failed (no toolchain, a backend error).
            result = fn(*args, **kwargs)
            failed.add(device)
            warnings.warn(
                f"tokenprune: torch.compile of {fn.__name__} failed on {device} "
                f"({_summary(exc)}); running it eagerly there from now on",
                RuntimeWarning,
                stacklevel=2,
            )
            return result

    run.eager = fn  # type: ignore[attr-defined]
    run.compiled = None  # type: ignore[attr-defined]  # built at the first compiled call
    return run  # type: ignore[return-value]


def _compile(fn: Callable[..., Any], options: dict[str, Any] | None) -> Callable[..., Any]:
    """``torch.compile(fn)``, called at the first compiled call rather than at import:
    it imports dynamo and inductor, seconds that a process which never needs them
    (soft_nms's C kernel on CPU, eager mode) must not pay. Their imports warn about
    torch's own deprecations, which are not the caller's to act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.compile(fn, dynamic=None, options=options)


#: Most characters of a compile error that the warning quotes.
SUMMARY_CHARS = 300


def _summary(exc: Exception) -> str:
    """The error's type and first lines, and where its full text was written: compiler
    errors embed whole build logs (hundreds of KB), too much for a warning."""
    text = f"{type(exc).__name__}: {exc}"
    if len(text) <= SUMMARY_CHARS and text.count("\n") < 3:
        return text
    head = "\n".join(text.splitlines()[:3])[:SUMMARY_CHARS]
    try:
        with tempfile.NamedTemporaryFile(
            "w", prefix="tokenprune-compile-", suffix=".log", delete=False, encoding="utf-8"
        ) as log:
            log.write(text)
        where = f"full error in {log.name}"
    except OSError:
        where = "full error not saved: the temporary directory is not writable"
    return f"{head} ... [{len(text)} characters; {where}]"
