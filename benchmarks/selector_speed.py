"""Selector time and memory: tokenprune's ``adaptprune``, compiled and eager, against a
per-step loop written the way the authors' released code does it.

"compiled" is what a user gets by default: on CPU tensors ``soft_nms``'s C kernel with
lazy suppression (`tokenprune.strategies.soft_nms_cpu`, built once at first use), on
CUDA the torch.compile'd greedy steps; "eager" is the torch steps without compiling.

The loop (``authors_loop``) handles one sample at a time (B > 1 loops over samples) and,
per kept token: one argmax with a ``.item()`` host sync, the cosine of the kept token's
L2-normalised key against ALL N tokens, and one update of the d <= 5 window around it with
``1 - exp(-d^2 / (2 * 1.5^2)) * exp(-(1 - cos)^2 / (2 * 0.05^2))``, after the Gaussian
correction of the attention. tokenprune's pruner is timed end to end: ``p(cues)``,
including its input checks, the Gaussian and the key norms.

Inputs: random attention ``(B, N)`` and random keys ``(B, N, D)`` on a grid layout, in
float32 and, for the rows marked so, bfloat16 / float16 (as models hand them over; the
keys are gathered in their own dtype, the decay arithmetic runs in float32). The keys
share one random direction plus per-token noise (pairwise cosine about 0.94) so that the
similarity decay really suppresses neighbours; with independent Gaussian keys every
cosine is ~0 and Soft-NMS would reduce to top-k. The work done does not depend on the
values.

Every configuration is timed in a fresh subprocess: warm-up (the first compiled call
compiles, reported separately), a check that the three selections keep the same indices,
then timed rounds interleaving the three methods (median reported), then the host time
of a compiled call outside its compiled greedy steps (or the C kernel), both for the
public call ``pruner(cues)`` (which checks its inputs; soft_nms's C kernel checks the keys
in the pass that reads them for the suppression, so the kernel's time includes that) and for
the engine's trusted call ``pruner.select(cues, budget)``. Its peak memory is measured in a
second fresh subprocess (see ``MEMORY_METHOD``), with allocator settings that would
distort the timings. Last, the compile check: first calls in a fresh process with an
empty inductor cache (a new D, N, B and dtype one after another), then the first call of
a second process on that cache.

    python benchmarks/selector_speed.py                  # full table (many minutes on a CPU)
    python benchmarks/selector_speed.py --quick          # N = 576 at B = 1 only, few repeats
    python benchmarks/selector_speed.py --device cuda --out results.md
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

# Compile in-process: a pool of compile workers would steal the CPU from the timed calls.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch
import torch.nn.functional as F

import tokenprune
from tokenprune.strategies import soft_nms, soft_nms_cpu

RADIUS = 5
SIGMA_D = 1.5
SIGMA_S = 0.05
METHODS = ("loop", "eager", "compiled")

MEMORY_METHOD = {
    "cpu": (
        "CPU: increase of the process's resident-set high-water mark (VmHWM, reset through "
        "/proc/self/clear_refs just before one warm call) over the RSS before it, in a fresh "
        "subprocess per configuration with glibc's mmap and trim thresholds pinned at 128 KiB "
        "so that freed tensors go back to the OS (blocks below that, reused from the heap, "
        "are not seen); the inputs (attention, keys) are not counted"
    ),
    "cuda": (
        "CUDA: torch.cuda.max_memory_allocated() during the call minus "
        "torch.cuda.memory_allocated() before it; the inputs are not counted"
    ),
}


@dataclass(frozen=True)
class Config:
    n: int
    d: int
    k: int
    b: int
    h: int
    w: int
    dtype: str = "float32"  # of the keys and attention, as a model hands them over


def configs(quick: bool) -> list[Config]:
    shapes = [(576, 4096, 57, 24, 24), (2880, 4096, 288, 48, 60), (10000, 4096, 1000, 100, 100)]
    shapes.append((576, 128, 57, 24, 24))
    if quick:
        out = [Config(n, d, k, 1, h, w) for n, d, k, h, w in shapes if n == 576]
        return [*out, Config(576, 4096, 57, 1, 24, 24, "bfloat16")]
    out = [Config(n, d, k, b, h, w) for n, d, k, h, w in shapes for b in (1, 8)]
    low = [Config(576, 4096, 57, b, 24, 24, dtype) for dtype in ("bfloat16", "float16") for b in (1, 8)]
    return [*out, *low]


# --------------------------------------------------------------------------- the authors' way
def authors_loop(
    attention: torch.Tensor, keys: torch.Tensor, h: int, w: int, k: int
) -> torch.Tensor:
    """``(B, k)`` kept indices, in the order kept, one sample at a time.

    attention ``(B, N)``, keys ``(B, N, D)``, tokens row-major on an ``h x w`` grid.
    Written the way the released AdaptPrune code works (what it does, not its text): the
    Gaussian of sigma = side / 2 on ``linspace(-side/2, side/2, side)``, keys L2-normalised
    once, then per kept token: an argmax read back to the host, the distance of every
    grid cell to it, ``F.cosine_similarity`` of its key against all N keys, and an update
    of the cells within the radius through a boolean mask. A kept token is not masked
    out: its own factor ``1 - 1 * 1`` sets its score to 0.
    """
    device = attention.device
    ys = torch.linspace(-h / 2, h / 2, h, device=device) if h > 1 else torch.zeros(1, device=device)
    xs = torch.linspace(-w / 2, w / 2, w, device=device) if w > 1 else torch.zeros(1, device=device)
    gauss = torch.exp(
        -(ys[:, None] ** 2 / (2 * (h / 2) ** 2) + xs[None, :] ** 2 / (2 * (w / 2) ** 2))
    )
    gauss = gauss / gauss.max()
    rows, cols = torch.meshgrid(
        torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    out = []
    for b in range(attention.shape[0]):
        scores = attention[b].view(h, w) * gauss
        keys_n = F.normalize(keys[b], dim=-1)
        kept = []
        for _ in range(k):
            top = torch.argmax(scores)
            kept.append(top.item())
            if len(kept) == k:
                break
            distance = torch.sqrt(((rows - top // w) ** 2 + (cols - top % w) ** 2).float())
            window = distance <= RADIUS
            spatial = torch.exp(-(distance**2) / (2 * SIGMA_D**2))
            cos = F.cosine_similarity(keys_n, keys_n[top].unsqueeze(0), dim=-1).view(h, w)
            similarity = torch.exp(-((1 - cos) ** 2) / (2 * SIGMA_S**2))
            scores[window] *= 1 - (spatial * similarity)[window]
        out.append(torch.tensor(kept, device=device))
    return torch.stack(out)


# --------------------------------------------------------------------------- one configuration
def inputs(cfg: Config, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention ``(B, N)`` and keys ``(B, N, D)`` in ``cfg.dtype`` (the same values at
    every dtype up to its rounding)."""
    gen = torch.Generator().manual_seed(cfg.n * 31 + cfg.d * 7 + cfg.b)
    attention = torch.rand(cfg.b, cfg.n, generator=gen)
    base = torch.randn(cfg.b, 1, cfg.d, generator=gen)
    keys = base + 0.25 * torch.randn(cfg.b, cfg.n, cfg.d, generator=gen)
    dtype = getattr(torch, cfg.dtype)
    return attention.to(device=device, dtype=dtype), keys.to(device=device, dtype=dtype)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], torch.Tensor], device: str) -> tuple[float, torch.Tensor]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def peak_extra_bytes(fn: Callable[[], object], device: str) -> int | None:
    """Peak memory of one call of ``fn`` beyond what was in use before it (see MEMORY_METHOD)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
        before = _status_kib("VmRSS")
    except OSError:
        return None
    fn()
    return max(0, _status_kib("VmHWM") - before) * 1024


def same_indices(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of samples whose sorted kept indices differ."""
    a, b = a.sort(dim=1).values.cpu(), b.sort(dim=1).values.cpu()
    return int((a != b).any(dim=1).sum())


def methods(
    cfg: Config, device: str, loop_samples: int | None = None, loop_steps: int | None = None
) -> dict[str, Callable[[], torch.Tensor]]:
    """The three selectors of ``cfg``'s inputs, each returning kept indices: ``(B, K)`` for
    tokenprune, ``(loop_samples, loop_steps)`` for the loop (default: all B, K)."""
    attention, keys = inputs(cfg, device)
    layout = tokenprune.Layout.grid(cfg.h, cfg.w, batch=cfg.b, device=device)
    cues = tokenprune.Cues(layout, attention=attention, keys=keys)
    pruner = tokenprune.pruner("adaptprune", keep=cfg.k)
    s = cfg.b if loop_samples is None else loop_samples

    def run_tokenprune(compiled: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            tokenprune.set_compile(compiled)
            return pruner(cues).indices

        return run

    # The loop gets float32 copies of the same (possibly rounded) values.
    loop_attention, loop_keys = attention[:s].float(), keys[:s].float()
    return {
        "loop": lambda: authors_loop(loop_attention, loop_keys, cfg.h, cfg.w, loop_steps or cfg.k),
        "eager": run_tokenprune(False),
        "compiled": run_tokenprune(True),
    }


def timed_into(inside: list[float], fn: Callable[..., object]) -> Callable[..., object]:
    """``fn`` that appends the seconds of each of its calls to ``inside``."""

    def timed_fn(*args: object) -> object:
        start = time.perf_counter()
        out = fn(*args)
        inside.append(time.perf_counter() - start)
        return out

    return timed_fn


def outside_graph_s(call: Callable[[], object], device: str, calls: int = 7) -> float:
    """Median host time of one compiled ``call`` spent outside the compiled greedy steps
    or the C kernel (input checks, Gaussian, window set-up, the Selection): the call's
    time minus that of its calls of ``soft_nms._window_steps`` and of the kernel. The
    kernel must have run once before (it is looked up among the built ones)."""
    inside: list[float] = []
    real_steps, real_kernels = soft_nms._window_steps, dict(soft_nms_cpu._functions)
    soft_nms._window_steps = timed_into(inside, real_steps)
    soft_nms_cpu._functions.update({key: timed_into(inside, fn) for key, fn in real_kernels.items()})
    try:
        outside = []
        for _ in range(calls):
            inside.clear()
            sync(device)
            start = time.perf_counter()
            call()
            outside.append(time.perf_counter() - start - sum(inside))
    finally:
        soft_nms._window_steps = real_steps
        soft_nms_cpu._functions.update(real_kernels)
    return statistics.median(outside)


def engine_call(cfg: Config, device: str) -> Callable[[], object]:
    """The compiled selector through the engine's trusted path (no input checks)."""
    attention, keys = inputs(cfg, device)
    layout = tokenprune.Layout.grid(cfg.h, cfg.w, batch=cfg.b, device=device)
    cues = tokenprune.Cues(layout, attention=attention, keys=keys)
    pruner = tokenprune.pruner("adaptprune", keep=cfg.k)
    budget = pruner.budget(layout.num_valid())

    def run() -> object:
        tokenprune.set_compile(True)
        return pruner.select(cues, budget)

    return run


def time_worker(cfg: Config, device: str, repeats: int, budget_s: float, loop: bool = True) -> dict:
    """Warm up, check the selections agree, then time interleaved rounds.

    The loop handles one sample after another. Where B of them would take over half the
    budget, it is timed on the first sample and its time multiplied by B (reported as
    such); the selections are compared on that sample. ``loop=False`` leaves the loop
    out (``--loop-max-n``: it takes minutes per sample at N = 10,000)."""
    names = METHODS if loop else METHODS[1:]
    loop_samples = cfg.b if loop else 0
    probe = None
    if cfg.b > 1 and loop:
        probe = timed(methods(cfg, device, loop_samples=1)["loop"], device)
        if probe[0] * cfg.b > budget_s / 2:
            loop_samples = 1
    fns = methods(cfg, device, loop_samples=loop_samples or 1)
    scale = {"loop": cfg.b / max(loop_samples, 1), "eager": 1.0, "compiled": 1.0}
    times: dict[str, list[float]] = {m: [] for m in names}
    first: dict[str, float] = {}
    kept: dict[str, torch.Tensor] = {}
    for m in names:
        if m == "loop" and loop_samples == 1 and probe is not None:
            first[m], kept[m] = probe
        else:
            first[m], kept[m] = timed(fns[m], device)
        if m != "compiled" and first[m] > budget_s / 2:
            times[m].append(first[m])  # a long call without compilation counts as a sample
        else:
            for _ in range(2):  # B = 1 then dynamic-shape recompiles settle here
                timed(fns[m], device)
    for _ in range(repeats):
        for m in names:
            if len(times[m]) < repeats and sum(times[m]) <= budget_s:
                times[m].append(timed(fns[m], device)[0])
    outside = outside_graph_s(fns["compiled"], device)
    engine = engine_call(cfg, device)
    engine()
    outside_engine = outside_graph_s(engine, device)
    differ = {"compiled_vs_eager": same_indices(kept["compiled"], kept["eager"])}
    if loop:
        differ["eager_vs_loop"] = same_indices(kept["eager"][:loop_samples], kept["loop"])
        differ["compiled_vs_loop"] = same_indices(kept["compiled"][:loop_samples], kept["loop"])
    return {
        "config": asdict(cfg),
        "median_s": {m: statistics.median(times[m]) * scale[m] for m in names},
        "repeats": {m: len(times[m]) for m in names},
        "loop_samples": loop_samples,
        "first_s": first,
        "outside_graph_s": outside,
        "outside_graph_engine_s": outside_engine,
        "differ": differ,
    }


#: Steps of the loop run for its memory peak: every step allocates the same temporaries.
LOOP_MEMORY_STEPS = 20


def memory_worker(cfg: Config, device: str, loop: bool = True) -> dict:
    """Peak extra bytes of one warm call of each method (the loop: one sample,
    ``LOOP_MEMORY_STEPS`` steps, as it holds one sample's temporaries at a time)."""
    fns = methods(cfg, device, loop_samples=1, loop_steps=min(cfg.k, LOOP_MEMORY_STEPS))
    peaks: dict[str, int | None] = {"loop": None}
    for m in METHODS if loop else METHODS[1:]:
        for _ in range({"loop": 0, "eager": 1, "compiled": 3}[m]):
            fns[m]()
        peaks[m] = peak_extra_bytes(fns[m], device)
    return {"peak_bytes": peaks}


#: First calls timed by the compile check in one fresh process, in order, each with what
#: it changes from the calls before it.
COMPILE_STEPS = (
    ("first call: N 576, D 4096, B 1, float32", Config(576, 4096, 57, 1, 24, 24)),
    ("new D: 128", Config(576, 128, 57, 1, 24, 24)),
    ("new N: 2,880", Config(2880, 128, 288, 1, 48, 60)),
    ("new B: 8", Config(2880, 128, 288, 8, 48, 60)),
    ("new N and B again: 576, 3", Config(576, 128, 57, 3, 24, 24)),
    ("new dtype: bfloat16 keys", Config(576, 128, 57, 3, 24, 24, "bfloat16")),
)


def compile_worker(device: str, warm: bool) -> dict:
    """Time the first compiled call of each of `COMPILE_STEPS` (only the first when
    ``warm``: a new process on a cache filled by an earlier one) and count the graphs
    dynamo compiled and the C libraries built for it."""
    from torch._dynamo.utils import counters

    from tokenprune.native import cache_dir

    def libraries() -> int:
        return len(list(cache_dir().glob("*.so")))

    out = []
    for label, cfg in COMPILE_STEPS[:1] if warm else COMPILE_STEPS:
        call = methods(cfg, device)["compiled"]
        before, built = counters["stats"]["unique_graphs"], libraries()
        first, _ = timed(call, device)
        again, _ = timed(call, device)
        out.append(
            {
                "label": label,
                "first_s": first,
                "again_s": again,
                "graphs": counters["stats"]["unique_graphs"] - before,
                "libraries": libraries() - built,
            }
        )
    return {"steps": out}


def compile_check(args: argparse.Namespace) -> dict:
    """`compile_worker` in a fresh process with an empty inductor (and triton) cache, then
    its first step in a second fresh process on the cache the first one filled."""
    with tempfile.TemporaryDirectory(prefix="tokenprune-compile-check-") as cache:
        env = {"TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": os.path.join(cache, "triton")}
        cold = _worker(["--compile-worker", "cold"], args, env)
        warm = _worker(["--compile-worker", "warm"], args, env)
    return {"cold": cold["steps"], "warm": warm["steps"]}


def run_worker(cfg: Config, mode: str, args: argparse.Namespace) -> dict:
    """Run one configuration in a fresh subprocess; ``mode`` "time" or "memory"."""
    env = {}
    if mode == "memory":
        # Pinned thresholds turn off glibc's dynamic mmap threshold, so freed tensors leave
        # RSS. Timing runs with the default allocator settings, as users would.
        env = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "MALLOC_TRIM_THRESHOLD_": str(128 * 1024)}
    return _worker([f"--{mode}-worker", json.dumps(asdict(cfg))], args, env)


def _worker(flags: list[str], args: argparse.Namespace, env: dict[str, str]) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        *flags,
        "--device",
        args.device,
        "--repeats",
        str(args.repeats),
        "--budget",
        str(args.budget),
        *(["--loop-max-n", str(args.loop_max_n)] if args.loop_max_n is not None else []),
    ]
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker {flags} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report
def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.1f}"


def _outside(res: dict) -> str:
    engine = res.get("outside_graph_engine_s")
    public = f"{res['outside_graph_s'] * 1e3:.2f}"
    return public if engine is None else f"{public} / {engine * 1e3:.2f}"


def _ratio(med: dict, over: str) -> str:
    return f"{med['loop'] / med[over]:.1f}x" if "loop" in med else "loop not run"


def _same(res: dict) -> str:
    diff, b = res["differ"], res["config"]["b"]
    if not any(diff.values()):
        return "yes (all 3)" if len(diff) == 3 else "yes (eager, compiled)"
    return "NO: samples differing " + ", ".join(f"{k} {v}/{b}" for k, v in diff.items())


def _shape(c: dict) -> str:
    return f"| {c['n']:,} | {c['d']} | {c['k']} | {c['b']} | {c.get('dtype', 'float32')} |"


def table(results: list[dict]) -> list[str]:
    """The columns a reader needs: time per sample, the ratio to the loop, same indices."""
    lines = [
        "| N | D | K | B | keys | compiled ms / sample | loop / compiled | outside graph ms (public / engine) | same indices |",
        "|---:|---:|---:|---:|:---|---:|---:|---:|:---|",
    ]
    for res in results:
        c, med = res["config"], res["median_s"]
        lines.append(
            f"{_shape(c)} {_ms(med['compiled'] / c['b'])} | {_ratio(med, 'compiled')} | "
            f"{_outside(res)} | {_same(res)} |"
        )
    return lines


def detail_table(results: list[dict]) -> list[str]:
    """Everything else measured per configuration."""
    lines = [
        "| N | D | K | B | keys | loop ms | eager ms | compiled ms | loop / sample | eager / sample | "
        "loop / eager | compile s | repeats l/e/c | peak extra MiB l/e/c |",
        "|---:|---:|---:|---:|:---|" + "---:|" * 9,
    ]
    for res in results:
        c, med = res["config"], res["median_s"]
        loop_mark = "" if res["loop_samples"] == c["b"] else " *"
        loop = "loop" in med
        lines.append(
            f"{_shape(c)} "
            + " | ".join((_ms(med[m]) + (loop_mark if m == "loop" else "")) if m in med else "-" for m in METHODS)
            + f" | {_ms(med['loop'] / c['b']) if loop else '-'} | {_ms(med['eager'] / c['b'])} | "
            f"{_ratio(med, 'eager')} | {res['first_s']['compiled'] - med['compiled']:.1f} | "
            + "/".join(str(res["repeats"].get(m, 0)) for m in METHODS)
            + " | "
            + " / ".join(_mib(res["peak_bytes"][m]) for m in METHODS)
            + " |"
        )
    return lines


def compile_table(check: dict) -> list[str]:
    lines = ["| first call of | s | graphs compiled | C libraries built |", "|:---|---:|---:|---:|"]
    for step in check["cold"]:
        lines.append(f"| {step['label']} | {step['first_s']:.2f} | {step['graphs']} | {step.get('libraries', 0)} |")
    for step in check["warm"]:
        lines.append(
            f"| a new process, warm cache: {step['label']} | {step['first_s']:.2f} | {step['graphs']} | "
            f"{step.get('libraries', 0)} |"
        )
    return lines


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def targets(results: list[dict], check: dict | None = None) -> list[str]:
    def find(n: int, d: int, b: int, dtype: str = "float32") -> dict | None:
        return next(
            (
                r
                for r in results
                if (r["config"]["n"], r["config"]["d"], r["config"]["b"], r["config"].get("dtype", "float32"))
                == (n, d, b, dtype)
            ),
            None,
        )

    out = []
    for d, need in ((4096, 100.0), (128, 10.0)):
        res = find(576, d, 1)
        if res is not None and "loop" in res["median_s"]:
            ratio = res["median_s"]["loop"] / res["median_s"]["compiled"]
            out.append(
                f"- {_verdict(ratio >= need)}: compiled at least {need:g}x faster than the loop at "
                f"(576, {d}, 57), B = 1: {ratio:.1f}x"
            )
    for b in (1, 8):
        res = find(10000, 4096, b)
        if res is not None:
            per = res["median_s"]["compiled"] / b * 1e3
            out.append(
                f"- {_verdict(per < 60)}: N = 10,000 (D = 4096, K = 1000) under 60 ms per sample, "
                f"compiled, B = {b}: {per:.1f} ms"
            )
            peak = res["peak_bytes"]["compiled"]
            if peak is not None:
                out.append(
                    f"- {_verdict(peak < 64 * 2**20)}: N = 10,000, B = {b}: extra memory under 64 MiB: "
                    f"{peak / 2**20:.1f} MiB"
                )
    res = find(576, 4096, 1)
    if res is not None:
        ms = res.get("outside_graph_engine_s", res["outside_graph_s"]) * 1e3
        out.append(
            f"- {_verdict(ms < 0.2)}: host time outside the compiled graph under 0.2 ms at N = 576 "
            f"(the engine's call; the public call, which checks its inputs: "
            f"{res['outside_graph_s'] * 1e3:.2f} ms): {ms:.2f} ms"
        )
    differ = [r for r in results if any(r["differ"].values())]
    out.append(
        f"- {_verdict(not differ)}: identical indices across eager, compiled and the loop in every row"
        + ("" if not differ else f" ({len(differ)} rows differ)")
    )
    if check is not None:
        cold, warm = check["cold"], check["warm"]
        out.append(f"- {_verdict(cold[0]['first_s'] < 10)}: first call, empty cache, under 10 s: {cold[0]['first_s']:.2f} s")
        for step in cold[1:]:
            ok = step["first_s"] - step["again_s"] < 5 or step["graphs"] + step.get("libraries", 0) == 0
            out.append(
                f"- {_verdict(ok)}: {step['label']}: under 5 s more or no recompile: "
                f"{step['first_s']:.2f} s, {step['graphs']} graph(s), {step.get('libraries', 0)} C library(ies)"
            )
        out.append(f"- {_verdict(warm[0]['first_s'] < 1)}: first call, warm cache, under 1 s: {warm[0]['first_s']:.2f} s")
    return out


def report(results: list[dict], check: dict | None, args: argparse.Namespace, wall_s: float) -> str:
    device = args.device
    if device == "cuda":
        where = torch.cuda.get_device_name()
    else:
        where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
    flags = (" --quick" if args.quick else "") + (f" --sizes {args.sizes}" if getattr(args, "sizes", None) else "")
    if getattr(args, "loop_max_n", None) is not None:
        flags += f" --loop-max-n {args.loop_max_n}"
    lines = [
        "# tokenprune `adaptprune` selector vs the authors' per-step loop",
        "",
        f"`python benchmarks/selector_speed.py{flags} --device {device}` on {device} ({where}); "
        f"torch {torch.__version__}; {wall_s:.0f} s in all.",
        "",
        "Times are medians over the timed repeats (after warm-up), per sample. 'loop / compiled' "
        "> 1 means tokenprune is faster than the loop; 'outside graph' is the host time of one "
        "compiled call spent outside the compiled greedy steps; 'keys' is the dtype of the keys "
        "and attention handed over (the loop gets float32 copies of the same values).",
        "",
        "Targets:",
        "",
        *targets(results, check),
        "",
        *table(results),
        "",
        '<details markdown="1">',
        "<summary>All columns: each method's time, eager, compile time, repeats, memory</summary>",
        "",
        f"A method whose single call takes over {args.budget / 2:g} s is timed from fewer calls, down "
        "to one (see 'repeats'). 'compile s' = first compiled call minus the median compiled call "
        "(inductor's on-disk cache may already be warm). Loop times marked * were measured on the "
        "first sample and multiplied by B (the loop runs one sample after another); 'same "
        "indices' then compares that sample.",
        "",
        f"Peak extra memory: {MEMORY_METHOD[device]}. The loop's peak is taken over its first "
        f"{LOOP_MEMORY_STEPS} steps on one sample (each step allocates the same).",
        "",
        *detail_table(results),
        "",
        "</details>",
        "",
    ]
    if check is not None:
        lines += [
            "First calls in a fresh process with an empty inductor cache, one after another "
            "(each includes what it compiles), and the first call of a second process on the "
            "cache the first one filled:",
            "",
            *compile_table(check),
            "",
        ]
    return "\n".join(lines)


def _with_loop(cfg: Config, args: argparse.Namespace) -> bool:
    return args.loop_max_n is None or cfg.n <= args.loop_max_n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 576 at B = 1 only, 3 repeats, no compile check")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds (default 7; quick 3)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed calls per method and config (default 30; quick 5)",
    )
    parser.add_argument("--no-compile-check", action="store_true", help="skip the first-call compile times")
    parser.add_argument("--sizes", default=None, help="only these N, comma-separated (e.g. 576,10000)")
    parser.add_argument(
        "--loop-max-n", type=int, default=None, help="leave the authors' loop out above this N (minutes per sample)"
    )
    parser.add_argument("--compile-check-only", action="store_true", help="only the first-call compile times")
    parser.add_argument("--time-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--compile-worker", choices=("cold", "warm"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.budget = args.budget or (5.0 if args.quick else 30.0)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    if args.time_worker is not None:
        cfg = Config(**json.loads(args.time_worker))
        print(json.dumps(time_worker(cfg, args.device, args.repeats, args.budget, _with_loop(cfg, args))))
        return
    if args.memory_worker is not None:
        cfg = Config(**json.loads(args.memory_worker))
        print(json.dumps(memory_worker(cfg, args.device, _with_loop(cfg, args))))
        return
    if args.compile_worker is not None:
        print(json.dumps(compile_worker(args.device, warm=args.compile_worker == "warm")))
        return
    start = time.perf_counter()
    if args.compile_check_only:
        check = compile_check(args)
        text = "\n".join(["Targets:", "", *targets([], check)[1:], "", *compile_table(check), ""])
        print(text)
        if args.out is not None:
            args.out.write_text(text)
        return
    results = []
    sizes = None if args.sizes is None else {int(n) for n in args.sizes.split(",")}
    for cfg in configs(args.quick):
        if sizes is not None and cfg.n not in sizes:
            continue
        print(f"... N={cfg.n} D={cfg.d} K={cfg.k} B={cfg.b} {cfg.dtype}", file=sys.stderr, flush=True)
        results.append({**run_worker(cfg, "time", args), **run_worker(cfg, "memory", args)})
    check = None
    if not (args.quick or args.no_compile_check):
        print("... compile check", file=sys.stderr, flush=True)
        check = compile_check(args)
    text = report(results, check, args, time.perf_counter() - start)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
