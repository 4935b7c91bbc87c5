"""GPU check: the selectors and a 7B-shaped prefill on one accelerator, offline, in a few minutes.

Two parts, each against its targets:

1. Selectors: ``adaptprune``'s selector (the whole ``pruner(cues)`` call) at N = 576, 2,880
   and 10,000 visual tokens (keep 10%), B = 1 and 8, keys of width 4096 in float32 and
   bfloat16, timed with CUDA events (median of the repeats after warm-up; the first call,
   which compiles, is reported apart). At N = 576, B = 1 the authors' per-step loop
   (``selector_speed.authors_loop``) is timed interleaved with it for the ratio, and
   every configuration compares its indices with the eager path.
2. Prefill: a random-weight LLaVA whose language model has LLaVA-1.5-7B's text shape
   (32 layers, hidden 4096, 32 heads, MLP 11008, bfloat16, sdpa) and a small vision
   tower; one image (576 visual tokens) in a 624-token prompt. Unpruned, ``fastv`` and
   ``adaptprune`` at keep 1.0 and 0.1, in interleaved rounds, CUDA-event timed.

Targets: selector at N = 576 under 0.3 ms; adaptprune's prefill within 3% of fastv's at
keep 0.1; keep 1.0 overhead (fastv, which runs the whole machinery and keeps every token)
under 1% of the unpruned prefill.

Needs nothing beyond torch, transformers (any 5.x), pluggy and einops: no downloads, no
install. From a checkout of the repository::

    PYTHONPATH=. python benchmarks/gpu_check.py                 # on the GPU; writes gpu_check.{json,md}
    PYTHONPATH=. python benchmarks/gpu_check.py --out results/  # elsewhere
    PYTHONPATH=. python benchmarks/gpu_check.py --small         # a CPU smoke run (the test suite's)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # selector_speed, beside this file

from selector_speed import authors_loop

import tokenprune
from tokenprune.compile import compile_mode

IMAGE_TOKEN = 32000


@dataclass(frozen=True)
class Plan:
    """What to run: the full check on an accelerator, or a small smoke run."""

    device: str
    grids: tuple[tuple[int, int], ...]  # (h, w) of the visual token grid; N = h * w
    batches: tuple[int, ...]
    dtypes: tuple[str, ...]
    key_width: int
    repeats: int
    image_side: int  # visual tokens of the prefill's image: image_side ** 2
    layers: int
    hidden: int
    heads: int
    intermediate: int
    prefill_dtype: str
    prefill_repeats: int


FULL = dict(
    grids=((24, 24), (48, 60), (100, 100)),
    batches=(1, 8),
    dtypes=("float32", "bfloat16"),
    key_width=4096,
    repeats=20,
    image_side=24,
    layers=32,
    hidden=4096,
    heads=32,
    intermediate=11008,
    prefill_dtype="bfloat16",
    prefill_repeats=15,
)
SMALL = dict(
    grids=((8, 8),),
    batches=(1, 2),
    dtypes=("float32", "bfloat16"),
    key_width=32,
    repeats=1,
    image_side=8,
    layers=3,
    hidden=64,
    heads=2,
    intermediate=128,
    prefill_dtype="float32",
    prefill_repeats=1,
)


# --------------------------------------------------------------------------- timing
def timer(device: str) -> Callable[[Callable[[], object]], tuple[float, object]]:
    """``time(fn) -> (seconds, result)``: CUDA events on a GPU, perf_counter on the CPU."""
    if device == "cuda":

        def time_cuda(fn: Callable[[], object]) -> tuple[float, object]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3, out

        return time_cuda

    def time_cpu(fn: Callable[[], object]) -> tuple[float, object]:
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out

    return time_cpu


def peak_extra_bytes(fn: Callable[[], object], device: str) -> int | None:
    """CUDA memory allocated at the peak of one call beyond what was allocated before it."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


# --------------------------------------------------------------------------- selectors
def selector_inputs(h: int, w: int, b: int, d: int, dtype: torch.dtype, device: str):
    """Attention ``(B, N)`` and keys ``(B, N, D)`` around one shared direction (pairwise
    cosine about 0.94, so the similarity decay really suppresses), as selector_speed.py."""
    g = torch.Generator().manual_seed(h * w * 31 + d * 7 + b)
    attention = torch.rand(b, h * w, generator=g)
    keys = torch.randn(b, 1, d, generator=g) + 0.25 * torch.randn(b, h * w, d, generator=g)
    return attention.to(device=device, dtype=dtype), keys.to(device=device, dtype=dtype)


def _kept(pruner: tokenprune.Pruner, cues: tokenprune.Cues) -> torch.Tensor:
    return pruner(cues).indices


def run_selectors(plan: Plan, log: Callable[[str], None]) -> list[dict]:
    time_it = timer(plan.device)
    rows = []
    for h, w in plan.grids:
        n = h * w
        k = int(n * 0.1)
        pruner = tokenprune.pruner("adaptprune", keep=k)
        for dtype_name in plan.dtypes:
            dtype = getattr(torch, dtype_name)
            for b in plan.batches:
                attention, keys = selector_inputs(h, w, b, plan.key_width, dtype, plan.device)
                layout = tokenprune.Layout.grid(h, w, batch=b, device=plan.device)
                cues = tokenprune.Cues(layout, attention=attention, keys=keys)
                call = functools.partial(_kept, pruner, cues)
                first_s, compiled = time_it(call)
                for _ in range(2):  # B = 1 then dynamic-shape recompiles settle here
                    call()
                with compile_mode(False):
                    eager = call()
                timed = {"selector": []}
                loop_call = None
                if (h, w) == plan.grids[0] and b == 1:
                    timed["loop"] = []
                    loop_call = functools.partial(authors_loop, attention.float(), keys.float(), h, w, k)
                    loop_kept = loop_call().sort(dim=1).values
                for _ in range(plan.repeats):
                    timed["selector"].append(time_it(call)[0])
                    if loop_call is not None:
                        timed["loop"].append(time_it(loop_call)[0])
                row = {
                    "n": n,
                    "k": k,
                    "b": b,
                    "d": plan.key_width,
                    "dtype": dtype_name,
                    "median_ms": statistics.median(timed["selector"]) * 1e3,
                    "min_ms": min(timed["selector"]) * 1e3,
                    "first_call_s": first_s,
                    "peak_extra_mib": _mib(peak_extra_bytes(call, plan.device)),
                    "same_as_eager": bool(torch.equal(compiled, eager)),
                }
                if loop_call is not None:
                    row["loop_median_ms"] = statistics.median(timed["loop"]) * 1e3
                    row["loop_over_selector"] = row["loop_median_ms"] / row["median_ms"]
                    row["same_as_loop"] = bool(torch.equal(compiled, loop_kept))
                rows.append(row)
                log(
                    f"selector N={n} B={b} {dtype_name}: {row['median_ms']:.3f} ms "
                    f"(first call {first_s:.1f} s)"
                )
    return rows


def _mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20


# --------------------------------------------------------------------------- prefill
def build_llava(plan: Plan) -> torch.nn.Module:
    """A random-weight LLaVA with the plan's text shape, on the plan's device and dtype."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=plan.hidden,
        intermediate_size=plan.intermediate,
        num_hidden_layers=plan.layers,
        num_attention_heads=plan.heads,
        num_key_value_heads=plan.heads,
        max_position_embeddings=4096,
    )
    vision = CLIPVisionConfig(
        image_size=14 * plan.image_side, patch_size=14, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=2,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN)
    torch.manual_seed(0)
    with torch.device(plan.device):
        model = LlavaForConditionalGeneration(config)
    model = model.to(getattr(torch, plan.prefill_dtype)).eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("sdpa")
    return model


def prefill_inputs(model: torch.nn.Module, plan: Plan) -> tuple[dict, str]:
    """The prompt's prefill inputs: with the image features encoded up front
    (``mm_encoder_outputs``) where this transformers version takes them, else with
    ``pixel_values`` (then the small vision tower runs inside every timed prefill)."""
    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, 30000, (47,), generator=g).tolist()
    ids = torch.tensor([[1, *text[:35], *[IMAGE_TOKEN] * plan.image_side**2, *text[35:]]], device=plan.device)
    dtype = getattr(torch, plan.prefill_dtype)
    side = 14 * plan.image_side
    pixels = torch.randn(1, 3, side, side, generator=g).to(device=plan.device, dtype=dtype)
    base = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": True, "logits_to_keep": 1}
    with torch.inference_mode(), contextlib.suppress(Exception):
        features = model.model.get_image_features(pixel_values=pixels, return_dict=True)
        inputs = {**base, "mm_encoder_outputs": {"image": features}}
        model(**inputs)
        return inputs, "mm_encoder_outputs"
    return {**base, "pixel_values": pixels}, "pixel_values"


PREFILL_CONFIGS = (("unpruned", None), ("fastv", 1.0), ("adaptprune", 1.0), ("fastv", 0.1), ("adaptprune", 0.1))


def run_prefill(plan: Plan, log: Callable[[str], None]) -> dict:
    model = build_llava(plan)
    inputs, feed = prefill_inputs(model, plan)
    time_it = timer(plan.device)

    def block(method: str, keep: float | None):
        if method == "unpruned":
            return contextlib.nullcontext()
        return tokenprune.prune(model, method, keep=keep, layer=2)

    def forward() -> None:
        with torch.inference_mode():
            model(**inputs)

    first = {}
    for method, keep in PREFILL_CONFIGS:
        with block(method, keep):
            first[(method, keep)] = time_it(forward)[0]
            for _ in range(2):
                forward()
    times: dict[tuple, list[float]] = {c: [] for c in PREFILL_CONFIGS}
    for _ in range(plan.prefill_repeats):  # interleaved rounds: load drifts hit all alike
        for method, keep in PREFILL_CONFIGS:
            with block(method, keep):
                times[(method, keep)].append(time_it(forward)[0])
    rows = []
    for (method, keep), ts in times.items():
        rows.append(
            {
                "method": method,
                "keep": keep,
                "median_ms": statistics.median(ts) * 1e3,
                "min_ms": min(ts) * 1e3,
                "first_call_s": first[(method, keep)],
            }
        )
        log(f"prefill {method} keep={keep}: {rows[-1]['median_ms']:.2f} ms")
    shape = f"{plan.layers} layers, hidden {plan.hidden}, {plan.heads} heads, MLP {plan.intermediate}"
    return {
        "text_model": shape,
        "dtype": plan.prefill_dtype,
        "visual": plan.image_side**2,
        "prompt": inputs["input_ids"].shape[1],
        "feed": feed,
        "rows": rows,
    }


# --------------------------------------------------------------------------- report
def targets(selectors: list[dict], prefill: dict) -> list[str]:
    out = []
    for row in selectors:
        if row["n"] == selectors[0]["n"] and row["b"] == 1:
            ok = row["median_ms"] < 0.3
            out.append(
                f"{'PASS' if ok else 'MISS'}: selector at N = {row['n']}, B = 1, {row['dtype']} under "
                f"0.3 ms: {row['median_ms']:.3f} ms"
            )
    if not prefill["rows"]:
        return out
    by = {(r["method"], r["keep"]): r["median_ms"] for r in prefill["rows"]}
    gap = by[("adaptprune", 0.1)] / by[("fastv", 0.1)] - 1
    out.append(f"{'PASS' if gap <= 0.03 else 'MISS'}: adaptprune within 3% of fastv at keep 0.1: {100 * gap:+.1f}%")
    overhead = by[("fastv", 1.0)] / by[("unpruned", None)] - 1
    out.append(f"{'PASS' if overhead < 0.01 else 'MISS'}: keep 1.0 overhead under 1%: {100 * overhead:+.1f}%")
    return out


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# GPU check",
        "",
        f"`{result['command']}` on {env['device_name']}; torch {env['torch']}, transformers "
        f"{env['transformers']}, Python {env['python']}; {result['wall_s']:.0f} s in all.",
        "",
        "Targets:",
        "",
        *[f"- {t}" for t in result["targets"]],
        "",
        f"## Selector (`adaptprune`, keys of width {result['selectors'][0]['d']}, keep 10%)",
        "",
        "| N | B | keys | ms per call | first call s | same as eager | loop / selector |",
        "|---:|---:|---|---:|---:|---|---:|",
    ]
    for r in result["selectors"]:
        ratio = f"{r['loop_over_selector']:.0f}x" if "loop_over_selector" in r else ""
        lines.append(
            f"| {r['n']:,} | {r['b']} | {r['dtype']} | {r['median_ms']:.3f} | {r['first_call_s']:.1f} | "
            f"{'yes' if r['same_as_eager'] else 'NO'} | {ratio} |"
        )
    p = result["prefill"]
    if not p["rows"]:
        return "\n".join(lines) + "\n"
    base = next(r["median_ms"] for r in p["rows"] if r["method"] == "unpruned")
    lines += [
        "",
        f"## Prefill ({p['text_model']}, {p['dtype']}, {p['visual']} visual tokens in a prompt of "
        f"{p['prompt']}; inputs by {p['feed']})",
        "",
        "| method | keep | prefill ms (median) | min ms | speedup |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in p["rows"]:
        keep = "-" if r["keep"] is None else f"{r['keep']:g}"
        lines.append(
            f"| {r['method']} | {keep} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | {base / r['median_ms']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a small CPU smoke run (seconds)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda, or cpu with --small")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--skip-prefill", action="store_true", help="selectors only")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.small else "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --small for a CPU smoke run)")
    plan = Plan(device=device, **(SMALL if args.small else FULL))
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    import transformers

    selectors = run_selectors(plan, log)
    prefill = {"rows": []} if args.skip_prefill else run_prefill(plan, log)
    result = {
        "command": "python benchmarks/gpu_check.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "environment": {
            "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "plan": asdict(plan),
        "selectors": selectors,
        "prefill": prefill,
        "targets": targets(selectors, prefill),
        "wall_s": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    (args.out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
