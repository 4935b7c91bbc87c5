"""``soft_nms`` on the CPU through a small C kernel with lazy suppression.

`soft_nms_cpu.c` computes the same selection and final scores as the torch steps of
`tokenprune.strategies.soft_nms` for the default decay terms (spatial, similarity) with
a radius, computing a suppression factor only where it can change the argmax or the
final scores (see the C file). It builds in about half a second at the first call
(`tokenprune.native`), and B, N, D and the dtypes are run-time arguments: nothing
recompiles. It runs where compilation is on (``tokenprune.set_compile``) and
`native_enabled` is True; otherwise, or where no C compiler is found (warned once),
``soft_nms`` runs its torch steps.
"""

from __future__ import annotations

import ctypes
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from tokenprune._layout_memo import layout_memo
from tokenprune.compile import compile_enabled
from tokenprune.errors import CueError
from tokenprune.finite import check_finite, norm_limit
from tokenprune.layout import Layout
from tokenprune.native import NativeBuildError, load

__all__ = ["applies", "native_enabled", "native_mode", "negative_score_error", "run", "set_native"]

SOURCE = Path(__file__).with_name("soft_nms_cpu.c")

#: ``-DTP_KEYS`` of each key dtype the kernel reads in place.
KEY_TYPES = {torch.float32: 1, torch.float64: 2, torch.bfloat16: 3, torch.float16: 4}

_enabled = True
_failed = False  # the build failed once: torch steps from then on


def native_enabled() -> bool:
    """Whether ``soft_nms`` may use the C kernel on CPU tensors (when compiling is on)."""
    return _enabled and not _failed


def set_native(enabled: bool) -> None:
    """Allow or forbid the C kernel (tests and benchmarks compare it with the torch steps)."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {enabled!r}")
    _enabled = enabled


@contextmanager
def native_mode(enabled: bool):
    """Temporarily allow or forbid the C kernel: ``with native_mode(False): ...``."""
    previous = _enabled
    set_native(enabled)
    try:
        yield
    finally:
        set_native(previous)


class _Args(ctypes.Structure):
    _fields_ = [
        ("b", ctypes.c_int64),
        ("n", ctypes.c_int64),
        ("d", ctypes.c_int64),
        ("r", ctypes.c_int64),
        ("budget", ctypes.c_void_p),
        ("valid", ctypes.c_void_p),
        ("regions", ctypes.c_void_p),
        ("coords", ctypes.c_void_p),
        ("shapes", ctypes.c_void_p),
        ("key_batch", ctypes.c_int64),
        ("key_row", ctypes.c_int64),
        ("radius", ctypes.c_double),
        ("spatial_sigma", ctypes.c_double),
        ("similarity_sigma", ctypes.c_double),
        ("mask", ctypes.c_void_p),
        ("indices", ctypes.c_void_p),
        ("kept_most", ctypes.c_void_p),
        ("max_entries", ctypes.c_int64),
        ("threads", ctypes.c_int64),
        ("thread_work", ctypes.c_int64),
        ("threads_used", ctypes.c_void_p),
        ("check_keys", ctypes.c_int64),
        ("key_limit", ctypes.c_double),
        ("keys_unsure", ctypes.c_void_p),
    ]


_functions: dict[tuple[torch.dtype, torch.dtype], ctypes._CFuncPtr] = {}


def _function(compute: torch.dtype, keys: torch.dtype):
    """The kernel for scores in ``compute`` and keys in ``keys``, or None if it cannot be built."""
    global _failed
    fn = _functions.get((compute, keys))
    if fn is None:
        defines = (f"-DTP_KEYS={KEY_TYPES[keys]}",) + (("-DTP_DOUBLE",) if compute == torch.float64 else ())
        try:
            fn = load(SOURCE, defines).soft_nms
        except (NativeBuildError, OSError) as exc:
            _failed = True
            warnings.warn(
                f"tokenprune: building the soft_nms CPU kernel failed ({exc}); soft_nms runs its "
                "torch steps from now on",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.POINTER(_Args), ctypes.c_void_p, ctypes.c_void_p]
        _functions[(compute, keys)] = fn
    return fn


def applies(scores: Tensor, keys: Tensor | None) -> bool:
    """Whether the kernel can run these inputs (CPU, supported dtypes, compiling on)."""
    return (
        scores.device.type == "cpu"
        and scores.dtype in (torch.float32, torch.float64)
        and (keys is None or (keys.device.type == "cpu" and keys.dtype in KEY_TYPES))
        and compile_enabled()
        and native_enabled()
    )


#: Status codes of the kernel.
NO_MEMORY, NEGATIVE_SCORE, TOO_LARGE = 1, 2, 3

#: Most pending entries (kept tokens x window offsets) the kernel's int32 lists index;
#: beyond it (a huge radius on a huge region) the torch steps run.
MAX_ENTRIES = 2**31 - 1

#: Below this many multiply-adds (kept tokens x window x D) a call runs on one thread.
#: Above it (about 10 ms of work on one core; N = 10,000 at K = 1,000, D = 4096 is 2.5x
#: this) the call uses ``torch.get_num_threads()`` threads: the samples of a batch, or
#: one sample's final factors, are shared out, and the result is the same bit for bit.
#: Shorter calls stay on one thread: on a busy machine the call would wait for a thread
#: the scheduler has not started yet, for longer than the whole call takes alone.
THREAD_WORK = 1 << 27

#: Threads the last call ran on (benchmarks and tests read it).
last_threads = 1


def run(
    scores: Tensor,
    layout: Layout,
    budget: Tensor,
    keys: Tensor | None,
    radius: float,
    spatial_sigma: float | None,
    similarity_sigma: float | None,
    check_keys: bool = False,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """Soft-NMS of ``scores (B, N)`` (float32/64, -inf on padding) with the window of
    ``radius`` cells, keeping ``budget (B,)`` tokens per sample; ``keys (B, N, D)`` read
    in place (in their own dtype) when ``similarity_sigma`` is given. ``check_keys``
    (with keys and ``similarity_sigma``): also refuse keys as `check_finite` does, from
    the self-dots of the one pass that reads every valid token's key (the exact check runs
    only where a self-dot is NaN, inf or near overflow, or before a negative-score error).

    Returns:
        ``indices (B, K)`` (ascending, -1 padded), ``mask (B, N)`` and the final
        ``scores (B, N)``; None when the kernel is unavailable or the window times the
        budget exceeds `MAX_ENTRIES` (the caller runs the torch steps).

    Raises:
        CueError: a valid score is negative (`negative_score_error`), or with
            ``check_keys``, a key is not finite or its norm overflows.
    """
    if keys is None or similarity_sigma is None:
        if check_keys:
            raise ValueError("check_keys: expected keys and a similarity_sigma, got none to read")
        keys, similarity_sigma = None, None
    fn = _function(scores.dtype, keys.dtype if keys is not None else torch.float32)
    if fn is None:
        return None
    b, n = scores.shape
    # The kernel suppresses in place: a contiguous copy, never the caller's scores.
    out = scores.clone(memory_format=torch.contiguous_format)
    mask = torch.empty(b, n, dtype=torch.bool)
    indices = torch.empty(b, n, dtype=torch.long)
    counts = (ctypes.c_int64 * 3)()  # the most kept by a sample, the threads used, keys unsure
    budget = budget.contiguous()
    valid, regions, coords, shapes = layout_memo(layout, "soft_nms_cpu", lambda: _layout_inputs(layout))
    key_batch = key_row = 0
    if keys is not None:
        if keys.stride(-1) != 1:
            keys = keys.contiguous()
        key_batch, key_row = keys.stride(0), keys.stride(1)
    args = _Args(
        b, n, keys.shape[-1] if keys is not None else 0, shapes.shape[1],
        budget.data_ptr(), valid.data_ptr(), regions.data_ptr(), coords.data_ptr(), shapes.data_ptr(),
        key_batch, key_row, radius, spatial_sigma or 0.0, similarity_sigma or 0.0,
        mask.data_ptr(), indices.data_ptr(), ctypes.addressof(counts), MAX_ENTRIES,
        torch.get_num_threads(), THREAD_WORK, ctypes.addressof(counts) + ctypes.sizeof(ctypes.c_int64),
        int(check_keys), norm_limit(keys.dtype) if keys is not None else 0.0,
        ctypes.addressof(counts) + 2 * ctypes.sizeof(ctypes.c_int64),
    )  # fmt: skip
    status = fn(ctypes.byref(args), out.data_ptr(), keys.data_ptr() if keys is not None else None)
    global last_threads
    most, last_threads, unsure = counts
    if check_keys and (unsure or status == NEGATIVE_SCORE):
        check_finite("keys", keys, layout.valid)  # the exact verdict and error (it may pass)
    if status == NEGATIVE_SCORE:
        raise negative_score_error(scores, layout.valid)
    if status == TOO_LARGE:
        return None
    if status == NO_MEMORY:
        raise MemoryError("soft_nms CPU kernel: out of memory")
    return indices[:, :most], mask, out


def _layout_inputs(layout: Layout) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The layout's tensors as the kernel reads them: ``valid``, ``regions``, ``coords`` in
    float64 and ``region_shapes``, each contiguous."""
    return (
        layout.valid.contiguous(),
        layout.regions.contiguous(),
        layout.coords.to(torch.float64).contiguous(),
        layout.region_shapes.contiguous(),
    )


def negative_score_error(scores: Tensor, valid: Tensor) -> CueError:
    """The error for ``scores (B, N)`` with a negative value at a ``valid (B, N)`` token."""
    return CueError(
        "scores: soft_nms multiplies scores by suppression factors and needs them >= 0, "
        f"got min {float(scores[valid].min()):.4g}"
    )
