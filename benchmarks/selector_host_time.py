"""Host time of ``adaptprune`` outside its C kernel, from thousands of calls.

``benchmarks/selector_speed.py`` reports the same quantity (``outside_graph_s``) from 7
calls per configuration; this script times many calls, interleaved in rounds, for

- ``engine``: the engine's trusted call ``pruner.select(cues, budget)`` on one layout;
- ``engine, new layout``: the same with a new `Layout` object (the same tensors) at every
  call, as each prefill of the engine builds one: the values remembered for an earlier
  layout of the same content apply (``tokenprune/_layout_memo.py``);
- ``engine, new layout, not shared``: the same with sharing by content off
  (``MAX_GEOMETRIES = 0``), as every prefill paid before it: the values are recomputed;
- ``engine, new geometry``: a new layout whose content has no remembered values (the
  shared values are dropped before each call): the content is looked up, the values
  computed and copied, as at the first prefill of a new prompt shape;
- ``public``: ``pruner(cues)``, which also checks its inputs (the keys inside the kernel,
  in the pass that reads them);

at B = 1 and B = 8 with float32 and bfloat16 attention and keys. Each call's time minus
the time of its C kernel call is one sample; the table gives the median and the 10th
percentile (on a shared core the median carries the other jobs' interruptions).

``--prefill`` times instead the engine's whole host time in a prefill inside
``generate()``: a random-weight LLaVA-1.5 of the real geometry (576 visual tokens per
image, a tiny tower and text model) pruned with ``adaptprune`` at keep 0.1 after layer 2,
B = 1 and B = 8, in interleaved rounds of three modes: everything remembered; the layout
values not shared by content (``MAX_GEOMETRIES = 0``); and also no sample layouts
remembered by the adapters' builder (``MAX_SAMPLES = 0``). The parts are the engine's
hooks: the prefill set-up (the adapter's layout, candidates, budgets), the cue capture,
the pruner call, and the rest of the prune step (compaction, masks, records); the model's
own time is not counted, and Python's garbage collector runs between the prefills. Each
part's median, the total's median and 10th percentile: on a shared core another
process's time slice (about 5 ms here) lands in a random part of many prefills, so the
total's median is more than the sum of the parts' medians.

    OMP_NUM_THREADS=1 taskset -c 1 nice -n 19 python benchmarks/selector_host_time.py
    OMP_NUM_THREADS=1 taskset -c 1 nice -n 19 python benchmarks/selector_host_time.py --prefill
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

import torch

import tokenprune
from tokenprune import _layout_memo
from tokenprune.adapters import builder
from tokenprune.strategies import soft_nms_cpu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selector_speed import Config, inputs, timed_into  # the same inputs and timer

CALLS = ("engine", "engine, new layout", "engine, new layout, not shared", "engine, new geometry", "public")


def calls(b: int, side: int, d: int, k: int, dtype: torch.dtype) -> dict[str, Callable[[], object]]:
    """The calls of `CALLS` on one ``side x side`` grid, keeping ``k`` tokens."""
    config = Config(side * side, d, k, b, side, side, str(dtype).removeprefix("torch."))
    attention, keys = inputs(config, "cpu")
    layout = tokenprune.Layout.grid(side, side, batch=b)
    cues = tokenprune.Cues(layout, attention=attention, keys=keys)
    pruner = tokenprune.pruner("adaptprune", keep=k)
    budget = pruner.budget(layout.num_valid())
    tensors = {f.name: getattr(layout, f.name) for f in fields(layout)}

    def new_layout() -> object:
        fresh = tokenprune.Layout.trusted(**tensors)
        return pruner.select(tokenprune.Cues.trusted(fresh, attention=attention, keys=keys), budget)

    def not_shared() -> object:
        shared, _layout_memo.MAX_GEOMETRIES = _layout_memo.MAX_GEOMETRIES, 0
        try:
            return new_layout()
        finally:
            _layout_memo.MAX_GEOMETRIES = shared

    def new_geometry() -> object:
        _layout_memo._shared.clear()
        return new_layout()

    return {
        "engine": lambda: pruner.select(cues, budget),
        "engine, new layout": new_layout,
        "engine, new layout, not shared": not_shared,
        "engine, new geometry": new_geometry,
        "public": lambda: pruner(cues),
    }


def outside_kernel(fns: dict[str, Callable[[], object]], calls_per_fn: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of each call outside its C kernel call, ``calls_per_fn`` per function,
    interleaved in ``rounds``."""
    for fn in fns.values():
        fn()  # builds the kernel, fills what is remembered
    inside: list[float] = []
    real = dict(soft_nms_cpu._functions)
    soft_nms_cpu._functions.update({key: timed_into(inside, fn) for key, fn in real.items()})
    out: dict[str, list[float]] = {name: [] for name in fns}
    try:
        for _ in range(rounds):
            for name, fn in fns.items():
                for _ in range(max(1, calls_per_fn // rounds)):
                    inside.clear()
                    start = time.perf_counter()
                    fn()
                    total = time.perf_counter() - start
                    if len(inside) != 1:
                        raise RuntimeError(f"{name}: expected one C kernel call, got {len(inside)}")
                    out[name].append(total - inside[0])
    finally:
        soft_nms_cpu._functions.update(real)
    return out


def table(args: argparse.Namespace) -> list[str]:
    tokenprune.set_compile(True)
    lines = ["| call | B | keys | median ms | p10 ms | calls |", "|:---|---:|:---|---:|---:|---:|"]
    for b in (1, 8):
        for dtype in (torch.float32, torch.bfloat16):
            per = args.calls if b == 1 else args.calls_batch
            times = outside_kernel(calls(b, args.side, args.d, args.k, dtype), per, args.rounds)
            for name in CALLS:
                t = sorted(times[name])
                lines.append(
                    f"| {name} | {b} | {str(dtype).removeprefix('torch.')} | {statistics.median(t) * 1e3:.3f} | "
                    f"{t[len(t) // 10] * 1e3:.3f} | {len(t)} |"
                )
    return lines


#: The prefill's parts, each the sum of the engine methods timed under its name.
PARTS = ("set-up", "cues", "pruner", "rest", "total")


@contextlib.contextmanager
def engine_parts(now: dict[str, float]) -> Iterator[None]:
    """Add the seconds of the engine's hooks to ``now`` by part while the block runs (the
    engine binds its hooks when a prune block opens: open them inside this block)."""
    from tokenprune.engine.session import PruneRun

    timed = [  # (class, method, part it adds to, part it is taken from)
        (PruneRun, "_on_model_call", "set-up", None),
        (PruneRun, "_on_attention", "cues", None),
        (PruneRun, "_on_point", "rest", None),
        (PruneRun, "_on_later_layer", "rest", None),
        (PruneRun, "_on_model_return", "rest", None),
        (PruneRun, "_cues", "cues", "rest"),
        (tokenprune.Pruner, "select", "pruner", "rest"),
    ]
    real = [(cls, name, getattr(cls, name)) for cls, name, _, _ in timed]

    def timer(fn: Callable[..., object], part: str, within: str | None) -> Callable[..., object]:
        def timed_fn(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - start
                now[part] += seconds
                if within is not None:
                    now[within] -= seconds

        return timed_fn

    for (cls, name, part, within), (_, _, fn) in zip(timed, real):
        setattr(cls, name, timer(fn, part, within))
    try:
        yield
    finally:
        for cls, name, fn in real:
            setattr(cls, name, fn)


def tiny_llava() -> torch.nn.Module:
    """A random-weight LLaVA-1.5 of the real geometry with a small tower and text model."""
    from transformers import LlamaConfig, LlavaForConditionalGeneration

    from tokenprune.model_configs import clip_vision_config, llava_config, text_config

    torch.manual_seed(0)
    text = text_config(
        vocab_size=256, hidden_size=64, intermediate_size=128, layers=4, heads=4, kv_heads=2, max_positions=4096
    )
    vision = clip_vision_config(hidden_size=32, layers=2, heads=2)
    return LlavaForConditionalGeneration(llava_config(vision, LlamaConfig(**text), IMAGE_TOKEN)).eval()


IMAGE_TOKEN = 255


#: ``--prefill``'s modes: (`MAX_GEOMETRIES`, `MAX_SAMPLES`), None for the default.
PREFILL_MODES = {
    "all remembered": (None, None),
    "layout values not shared": (0, None),
    "nothing remembered": (0, 0),
}


@contextlib.contextmanager
def remembering(geometries: int | None, samples: int | None) -> Iterator[None]:
    """`_layout_memo.MAX_GEOMETRIES` and `builder.MAX_SAMPLES` set where not None."""
    default = _layout_memo.MAX_GEOMETRIES, builder.MAX_SAMPLES
    _layout_memo.MAX_GEOMETRIES = default[0] if geometries is None else geometries
    builder.MAX_SAMPLES = default[1] if samples is None else samples
    try:
        yield
    finally:
        _layout_memo.MAX_GEOMETRIES, builder.MAX_SAMPLES = default


@contextlib.contextmanager
def collected_before() -> Iterator[None]:
    """Python's garbage collector runs before the block, not inside it: a collection
    triggered by transformers' allocations would land in whichever hook runs then."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def prefill_times(model: torch.nn.Module, b: int, calls: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of each part (`PARTS`) of ``calls`` prefills at batch ``b``, per mode
    (`PREFILL_MODES`), interleaved in ``rounds``."""
    ids = torch.tensor([[1, 5, 6, 7, *[IMAGE_TOKEN] * 576, 8, 9]] * b)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(b, 3, 336, 336)}
    out: dict[str, dict[str, list[float]]] = {mode: {part: [] for part in PARTS} for mode in PREFILL_MODES}
    now = dict.fromkeys(PARTS, 0.0)
    # The objects alive now are not traversed again: a collection before each prefill takes
    # milliseconds instead of the 0.4 s of a full one beside transformers and torch.
    gc.freeze()
    with contextlib.ExitStack() as stack:
        stack.callback(gc.unfreeze)
        stack.enter_context(engine_parts(now))
        stack.enter_context(torch.no_grad())
        for round_ in range(rounds + 1):  # round 0 warms up: builds the kernel, fills what is remembered
            for mode, limits in PREFILL_MODES.items():
                with remembering(*limits), tokenprune.prune(model, "adaptprune", keep=0.1, layer=2):
                    for _ in range(max(1, calls // rounds)):
                        now.update(dict.fromkeys(PARTS, 0.0))
                        with collected_before():
                            model.generate(**inputs, max_new_tokens=1, do_sample=False)
                        if round_:
                            now["total"] = sum(now[part] for part in PARTS[:-1])
                            for part in PARTS:
                                out[mode][part].append(now[part])
    return out


def prefill_table(args: argparse.Namespace) -> list[str]:
    tokenprune.set_compile(True)
    model = tiny_llava()
    lines = [
        "| B | mode | " + " | ".join(f"{part} ms" for part in PARTS) + " | total p10 ms | prefills |",
        "|---:|:---|" + "---:|" * (len(PARTS) + 2),
    ]
    for b in args.batches:
        times = prefill_times(model, b, args.prefills, args.rounds)
        for mode, parts in times.items():
            medians = " | ".join(f"{statistics.median(parts[part]) * 1e3:.3f}" for part in PARTS)
            total = sorted(parts["total"])
            lines.append(f"| {b} | {mode} | {medians} | {total[len(total) // 10] * 1e3:.3f} | {len(total)} |")
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=24, help="grid side: N = side^2 (default 24: N = 576)")
    parser.add_argument("--d", type=int, default=4096, help="key width D")
    parser.add_argument("--k", type=int, default=57, help="tokens kept")
    parser.add_argument("--calls", type=int, default=1000, help="timed calls of each kind at B = 1")
    parser.add_argument("--calls-batch", type=int, default=100, help="timed calls of each kind at B = 8")
    parser.add_argument("--rounds", type=int, default=5, help="rounds the calls are interleaved in")
    parser.add_argument("--prefill", action="store_true", help="time the engine's host time in generate() prefills")
    parser.add_argument("--prefills", type=int, default=100, help="timed prefills of each mode and B (--prefill)")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[1, 8], help="batch sizes of the prefills (--prefill)"
    )
    args = parser.parse_args(argv)
    if not soft_nms_cpu.applies(torch.zeros(1, 1), None):
        raise SystemExit("the soft_nms C kernel is off (tokenprune.set_compile / set_native): nothing to time")
    if args.prefill:
        lines = prefill_table(args)
        what = "prefills of a LLaVA-1.5 geometry (N = 576), adaptprune keep 0.1, layer 2; medians"
    else:
        lines = table(args)
        what = f"N = {args.side**2}, D = {args.d}, K = {args.k}"
    print(
        f"`selector_host_time.py` ({what}); torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n"
    )
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
