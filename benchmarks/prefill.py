"""Prefill time and peak memory: unpruned vs ``fastv`` vs ``adaptprune`` inside
``tokenprune.prune``, next to the speedup the FLOPs allow.

A random-weight LLaVA (one 24 x 24 image: 576 visual tokens) and LLaVA-NeXT (a 672 x 672
image: 2,928 visual tokens) with a mid-size Llama text model, fp32 on the CPU. The
prefill is what ``generate()`` runs first: the language model over the prompt with the
image features already encoded (``mm_encoder_outputs``), a KV cache, and logits for the
last token. Every configuration is timed in interleaved rounds (so machine load drifts
hit all of them alike) and reported as the median.

    python benchmarks/prefill.py            # the full table (several minutes)
    python benchmarks/prefill.py --quick    # a small model, one image, a smoke run
    python benchmarks/prefill.py --points   # layer="input" vs layer=2 at keep 0.1
    python benchmarks/prefill.py --parts-only --kinds llava_next  # the engine's parts only

``--points`` compares prune points with one pruner (``norm | top_k``, which reads the
``hidden`` cue that exists at both): unpruned, ``layer=2`` and ``layer="input"`` at keep
0.1, with the KV cache each prefill leaves, the fraction of the FLOP-ideal speedup, and
the time of the pruner call inside the engine (``Pruner.select``) as a share of the
prefill; a last row times the plain model (no tokenprune) on the shortened prompt that
``"input"`` leaves, the speed the input point can reach on this machine.

Columns: ``L'`` is the sequence length of layers K.. (text + kept visual tokens);
``ideal`` = FLOPs(unpruned) / FLOPs(pruned) of the language model; ``of ideal`` =
measured speedup / ideal; ``peak`` is the most tensor memory allocated during the
prefill beyond the weights (activations and KV cache), from the PyTorch profiler.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

# Compile the selectors in-process: a pool of compile workers starting up would steal
# the CPU from the prefills being timed.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
)

import tokenprune
from tokenprune.model_configs import clip_vision_config

IMAGE_TOKEN = 32000
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


@dataclass(frozen=True)
class Size:
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int


FULL = Size(layers=8, hidden=1024, heads=16, intermediate=2816, vocab=32064)
QUICK = Size(layers=4, hidden=256, heads=4, intermediate=704, vocab=32064)


@dataclass(frozen=True)
class Case:
    """One prompt: the model, its prefill inputs and its visual token count."""

    name: str
    model: torch.nn.Module
    inputs: dict
    visual: int
    text: int


@dataclass(frozen=True)
class Config:
    method: str  # "unpruned" or a recipe
    keep: float | None


def text_config(size: Size) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=8192,
    )


def vision_config() -> CLIPVisionConfig:
    # A small tower: the timed prefill starts from encoded features anyway.
    return clip_vision_config(hidden_size=64, layers=2, heads=2)


def build(kind: str, size: Size) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "llava":
        config = LlavaConfig(
            vision_config=vision_config(),
            text_config=text_config(size),
            image_token_index=IMAGE_TOKEN,
        )
        return LlavaForConditionalGeneration(config).eval()
    config = LlavaNextConfig(
        vision_config=vision_config(),
        text_config=text_config(size),
        image_token_index=IMAGE_TOKEN,
        image_grid_pinpoints=PINPOINTS,
    )
    return LlavaNextForConditionalGeneration(config).eval()


def prompt(visual: int, before: int = 35, after: int = 12) -> torch.Tensor:
    """``(1, L)``: BOS, a system prompt, the image placeholders, a question."""
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(3, 30000, (before + after,), generator=generator)
    ids = [1, *text[:before].tolist(), *[IMAGE_TOKEN] * visual, *text[before:].tolist()]
    return torch.tensor([ids])


@torch.inference_mode()
def make_case(kind: str, size: Size) -> Case:
    model = build(kind, size)
    generator = torch.Generator().manual_seed(1)
    if kind == "llava":
        pixel_values = torch.randn(1, 3, 336, 336, generator=generator)
        features = model.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        extra = {}
    else:
        pixel_values = torch.randn(1, 5, 3, 336, 336, generator=generator)
        image_sizes = torch.tensor([[672, 672]])
        features = model.model.get_image_features(
            pixel_values=pixel_values, image_sizes=image_sizes, return_dict=True
        )
        extra = {"image_sizes": image_sizes}
    pooled = features.pooler_output
    visual = (
        int(pooled.shape[0] * pooled.shape[1])
        if torch.is_tensor(pooled)
        else int(sum(p.shape[0] for p in pooled))
    )
    ids = prompt(visual)
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_encoder_outputs": {"image": features},
        "logits_to_keep": 1,
        "use_cache": True,
        **extra,
    }
    return Case(kind, model, inputs, visual, ids.shape[1] - visual)


# ---------------------------------------------------------------------------- FLOPs
def layer_flops(n: int, size: Size) -> float:
    """Multiply-adds x 2 of one decoder layer over ``n`` causal tokens."""
    h, i = size.hidden, size.intermediate
    projections = 2 * n * h * h * 4  # q, k, v, o (multi-head: kv width = hidden)
    mlp = 2 * n * 3 * h * i
    attention = 2 * 2 * h * n * (n + 1) / 2  # QK^T and AV over the causal pairs
    return projections + mlp + attention


def prefill_flops(length: int, short: int, layer: int, size: Size) -> float:
    head = 2 * size.hidden * size.vocab  # the last token's logits
    return (
        layer * layer_flops(length, size) + (size.layers - layer) * layer_flops(short, size) + head
    )


# --------------------------------------------------------------------------- running
#: The keep whose L' the plain model is also timed at (the speedup this machine allows).
CEILING_KEEP = 0.1


def prefill(case: Case) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            case.model(**case.inputs)

    return run


def plain_prefill(case: Case, length: int) -> Callable[[], None]:
    """The plain model's prefill of a ``length``-token text prompt (no image, no
    tokenprune): per token, a decoder layer does the same work as over image tokens."""
    ids = prompt(0, before=length - 1, after=0)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "logits_to_keep": 1, "use_cache": True}

    def run() -> None:
        with torch.inference_mode():
            case.model(**inputs)

    return run


def ceiling_speedup(unpruned_s: float, plain_s: float, layer: int, size: Size) -> float:
    """The speedup layer-``layer`` pruning can reach here: layers before K timed at L
    (the unpruned prefill's share), the rest at L' (the plain model's), per layer."""
    per_layer_long, per_layer_short = unpruned_s / size.layers, plain_s / size.layers
    return unpruned_s / (layer * per_layer_long + (size.layers - layer) * per_layer_short)


def peak_bytes(fn: Callable[[], None]) -> int:
    """The most tensor memory live at once during ``fn`` beyond what was live before,
    from the profiler's per-op allocations (an op's own, net of its frees) in time order;
    scratch memory an op frees before it returns is not seen."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start
    )
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def measure(case: Case, configs: list[Config], layer: int, repeats: int, warmup: int) -> dict:
    """Median prefill seconds, peak bytes and L' of each config.

    Each config first runs ``warmup`` times (the selectors compile, then recompile once
    for dynamic shapes) and once under the memory profiler; then every config runs once
    per round, ``repeats`` rounds.
    """

    def block(config: Config):
        if config.method in ("unpruned", "plain"):
            return contextlib.nullcontext(None)
        return tokenprune.prune(case.model, config.method, keep=config.keep, layer=layer)

    fns = {config: prefill(case) for config in configs}
    peaks: dict[Config, int] = {}
    shorts: dict[Config, int] = {}
    for config in configs:
        with block(config) as run:
            for _ in range(warmup):
                fns[config]()
            peaks[config] = peak_bytes(fns[config])
            shorts[config] = case.inputs["input_ids"].shape[1] if run is None else run.kept.shape[1]
    # The plain model (no tokenprune) on a text prompt of fastv's L' at the ceiling keep:
    # with the unpruned prefill it times a layer at L and at L' on this machine.
    ceiling = Config("plain", CEILING_KEEP)
    if Config("fastv", CEILING_KEEP) in shorts:
        configs = [*configs, ceiling]
        fns[ceiling] = plain_prefill(case, shorts[Config("fastv", CEILING_KEEP)])
        for _ in range(warmup):
            fns[ceiling]()
        peaks[ceiling] = peak_bytes(fns[ceiling])
        shorts[ceiling] = shorts[Config("fastv", CEILING_KEEP)]
    times: dict[Config, list[float]] = {c: [] for c in configs}
    for _ in range(repeats):
        for config in configs:
            with block(config):
                start = time.perf_counter()
                fns[config]()
                times[config].append(time.perf_counter() - start)
    return {c: (statistics.median(times[c]), min(times[c]), peaks[c], shorts[c]) for c in configs}


#: The parts of a pruned prefill `PartTimer` times, in the order the engine runs them, and
#: the rest: what the model itself computes (with the layers' shortened inputs).
PARTS = ("setup", "capture", "cues", "pruner", "shorten")
ROWS = (*PARTS, "rest", "total")


class PartTimer:
    """Host time, per prefill, of the engine's parts, by patching them for as long as it is
    open:

    - ``setup``: ``PruneRun._prefill``, once per prefill: the visual mask, the image
      `Layout` (for LLaVA-NeXT the base grid, the unpadded high-resolution grid and its
      row separators, two regions) and the candidates;
    - ``capture``: ``PruneRun._on_attention``, after every decoder layer's attention: the
      attention cue (the last prompt token's attention row) in the layer before the point,
      a few attribute reads in the others;
    - ``cues``: ``PruneRun._cues``, at the point: the candidates' gathers and, for key
      cues, layer K's ``k_proj``;
    - ``pruner``: the pruner call (scores, transforms, selector);
    - ``shorten``: the rest of ``PruneRun._prune_layer`` (without ``cues`` and
      ``pruner``, which it calls): gathering the kept hidden states, positions and
      rotary embeddings, and the shortened causal mask.
    """

    def __init__(self) -> None:
        self.now: dict[str, float] = dict.fromkeys((*PARTS, "point"), 0.0)
        self._patched: list[tuple[type, str, Callable]] = []

    def _wrap(self, cls: type, name: str, part: str) -> None:
        real = getattr(cls, name, None)
        if real is None:
            return

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.now[part] += time.perf_counter() - start

        self._patched.append((cls, name, real))
        setattr(cls, name, timed)

    def __enter__(self) -> PartTimer:
        from tokenprune.engine.session import PruneRun

        self._wrap(PruneRun, "_prefill", "setup")
        self._wrap(PruneRun, "_on_attention", "capture")
        self._wrap(PruneRun, "_prune_layer", "point")
        self._wrap(PruneRun, "_cues", "cues")
        self._wrap(tokenprune.Pruner, "__call__", "pruner")
        self._wrap(tokenprune.Pruner, "select", "pruner")  # the engine's trusted path, where present
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, name, real in reversed(self._patched):
            setattr(cls, name, real)

    def reset(self) -> None:
        self.now = dict.fromkeys((*PARTS, "point"), 0.0)

    def parts(self) -> dict[str, float]:
        """Seconds per part of the prefill since `reset` (``shorten`` without the nested
        ``cues`` and ``pruner``)."""
        out = {part: self.now[part] for part in PARTS if part != "shorten"}
        out["shorten"] = self.now["point"] - self.now["cues"] - self.now["pruner"]
        return out


def parts(case: Case, layer: int, repeats: int, keep: float = 0.1) -> list[str]:
    """Where adaptprune's prefill differs from fastv's at ``keep``: medians over interleaved
    rounds of the whole prefill and of each `PartTimer` part; ``rest`` is the total's
    median less the parts' medians."""
    methods = ("fastv", "adaptprune")
    fn = prefill(case)
    samples: dict[str, dict[str, list[float]]] = {m: {k: [] for k in (*PARTS, "total")} for m in methods}
    with PartTimer() as timer:
        for method in methods:  # warm-up: compile, then settle dynamic shapes
            with tokenprune.prune(case.model, method, keep=keep, layer=layer):
                fn()
                fn()
        for _ in range(repeats):
            for method in methods:
                with tokenprune.prune(case.model, method, keep=keep, layer=layer):
                    timer.reset()
                    start = time.perf_counter()
                    fn()
                    samples[method]["total"].append(time.perf_counter() - start)
                    for part, seconds in timer.parts().items():
                        samples[method][part].append(seconds)
    med = {m: {k: statistics.median(v) * 1e3 for k, v in samples[m].items()} for m in methods}
    for m in methods:
        med[m]["rest"] = med[m]["total"] - sum(med[m][part] for part in PARTS)
    return [
        f"| {case.name} ({case.visual}) | {part} | {med['fastv'][part]:,.1f} | {med['adaptprune'][part]:,.1f} | "
        f"{med['adaptprune'][part] - med['fastv'][part]:+,.1f} |"
        for part in ROWS
    ]


def table(case: Case, results: dict, layer: int, size: Size) -> list[str]:
    base_time, base_best, _, length = results[Config("unpruned", None)]
    base_flops = prefill_flops(length, length, layer, size)
    rows = []
    for config, (seconds, best, peak, short) in results.items():
        if config.method == "plain":  # not a pruned prefill: see ceiling_lines
            continue
        ideal = base_flops / prefill_flops(length, short, layer, size)
        speedup = base_time / seconds
        keep = "-" if config.keep is None else f"{config.keep:g}"
        rows.append(
            f"| {case.name} ({case.visual}) | {config.method} | {keep} | {short} | "
            f"{seconds * 1e3:,.0f} | {best * 1e3:,.0f} | {speedup:.2f}x | {ideal:.2f}x | "
            f"{100 * speedup / ideal:.0f}% | {base_best / best:.2f}x | "
            f"{peak / 2**20:,.0f} |"
        )
    return rows


def ceiling_lines(case: Case, results: dict, layer: int, size: Size) -> list[str]:
    """The speedup this machine allows at `CEILING_KEEP` (`ceiling_speedup`, from medians
    and from minimums) and the share of it fastv and adaptprune reach."""
    plain = results.get(Config("plain", CEILING_KEEP))
    if plain is None:
        return []
    lines = []
    for stat, at in (("medians", 0), ("minimums", 1)):
        unpruned = results[Config("unpruned", None)][at]
        ceiling = ceiling_speedup(unpruned, plain[at], layer, size)
        reached = ", ".join(
            f"{method} {100 * unpruned / results[Config(method, CEILING_KEEP)][at] / ceiling:.0f}%"
            for method in ("fastv", "adaptprune")
            if Config(method, CEILING_KEEP) in results
        )
        lines.append(
            f"- {case.name}, from {stat}: the plain model (no tokenprune) takes "
            f"{1e3 * unpruned:,.0f} ms at L = {results[Config('unpruned', None)][3]} and "
            f"{1e3 * plain[at]:,.0f} ms at L' = {plain[3]}, so pruning at layer {layer} to "
            f"keep {CEILING_KEEP:g} can reach {ceiling:.2f}x here; reached: {reached}"
        )
    return lines


# ---------------------------------------------------------------------- prune points
POINTS_PRUNER = "norm | top_k"


def kv_bytes(case: Case, point: object | None, keep: float) -> tuple[int, int]:
    """(bytes of the KV cache one prefill leaves, L' of the last layer)."""
    block = (
        contextlib.nullcontext(None)
        if point is None
        else tokenprune.prune(case.model, POINTS_PRUNER, keep=keep, layer=point)
    )
    with block, torch.inference_mode():
        out = case.model(**case.inputs)
    # transformers 5.17 names the output field past_key_values
    layers = (out["cache"] if "cache" in out else out["past_key_values"]).layers
    total = sum(layer.keys.nbytes + layer.values.nbytes for layer in layers)
    return total, layers[-1].keys.shape[-2]


def measure_points(case: Case, keep: float, repeats: int, warmup: int) -> dict:
    """Per point (None = unpruned): median prefill seconds, median seconds inside
    ``Pruner.select``, KV bytes and L'. Points are interleaved in every round."""
    points: list[object | None] = [None, 2, "input"]
    select = tokenprune.Pruner.select
    spent: list[float] = []

    def timed_select(self, cues, budget):
        start = time.perf_counter()
        out = select(self, cues, budget)
        spent.append(time.perf_counter() - start)
        return out

    fn = prefill(case)
    plain = _plain_short_prefill(case, keep)
    times: dict = {p: [] for p in points}
    times["plain"] = []
    selects: dict = {p: [] for p in points}
    tokenprune.Pruner.select = timed_select
    try:
        for point in points:
            block = (
                contextlib.nullcontext()
                if point is None
                else tokenprune.prune(case.model, POINTS_PRUNER, keep=keep, layer=point)
            )
            with block:
                for _ in range(warmup):
                    fn()
        for _ in range(repeats):
            for point in points:
                block = (
                    contextlib.nullcontext()
                    if point is None
                    else tokenprune.prune(case.model, POINTS_PRUNER, keep=keep, layer=point)
                )
                with block:
                    spent.clear()
                    start = time.perf_counter()
                    fn()
                    times[point].append(time.perf_counter() - start)
                    selects[point].append(sum(spent))
            start = time.perf_counter()
            plain()
            times["plain"].append(time.perf_counter() - start)
    finally:
        tokenprune.Pruner.select = select
    out = {
        p: (statistics.median(times[p]), statistics.median(selects[p]), *kv_bytes(case, p, keep))
        for p in points
    }
    out["plain"] = (statistics.median(times["plain"]), 0.0, *out["input"][2:])
    return out


def _plain_short_prefill(case: Case, keep: float) -> Callable[[], None]:
    """The plain model (no tokenprune) on the language-model inputs that ``layer="input"``
    leaves: the shortened ``inputs_embeds``, 2D mask and position ids."""
    seen: dict = {}

    def record(module, args, kwargs):
        seen.update(kwargs)

    language_model = case.model.model.language_model
    with tokenprune.prune(case.model, POINTS_PRUNER, keep=keep, layer="input"):
        handle = language_model.register_forward_pre_hook(record, with_kwargs=True)
        try:
            with torch.inference_mode():
                case.model(**case.inputs)
        finally:
            handle.remove()
    inputs = {
        "inputs_embeds": seen["inputs_embeds"],
        "attention_mask": seen["attention_mask"].long(),
        "position_ids": seen["position_ids"],
        "logits_to_keep": 1,
        "use_cache": True,
    }

    def run() -> None:
        with torch.inference_mode():
            case.model(**inputs)

    return run


def points_main(size: Size, repeats: int, warmup: int, keep: float) -> None:
    case = make_case("llava", size)
    results = measure_points(case, keep, repeats, warmup)
    base, _, _, length = results[None]
    print(
        "| point | keep | L' | prefill ms (median) | speedup | ideal | of ideal | "
        "pruner call ms | pruner call % of prefill | KV MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for point, (seconds, select, kv, short) in results.items():
        name = {None: "unpruned", "plain": "plain model, shortened prompt"}.get(point, repr(point))
        first = 0 if point in ("input", "plain") else 2
        ideal = prefill_flops(length, length, 2, size) / prefill_flops(length, short, first, size)
        speedup = base / seconds
        print(
            f"| {name} | {'-' if point is None else keep} | {short} | {seconds * 1e3:,.1f} | "
            f"{speedup:.2f}x | {ideal:.2f}x | {100 * speedup / ideal:.0f}% | {select * 1e3:.2f} | "
            f"{100 * select / seconds:.2f}% | {kv / 2**20:,.1f} |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model, LLaVA only, 3 repeats")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds (default 5; quick 3)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per config")
    parser.add_argument("--layer", type=int, default=2, help="pruning layer K (default 2)")
    parser.add_argument("--layers", type=int, default=None, help="text decoder layers")
    parser.add_argument("--hidden", type=int, default=None, help="text hidden size")
    parser.add_argument(
        "--parts",
        action="store_true",
        help="also split fastv's and adaptprune's keep 0.1 prefill into the engine's parts and the rest",
    )
    parser.add_argument(
        "--parts-only",
        action="store_true",
        help="only the --parts split (no unpruned, keep 1.0 or plain-model prefills)",
    )
    parser.add_argument(
        "--keeps", default="0.5,0.25,0.1", help="pruned keep fractions, comma-separated (0.1 is needed)"
    )
    parser.add_argument(
        "--points", action="store_true", help='layer="input" vs layer=2 (LLaVA, keep 0.1)'
    )
    parser.add_argument(
        "--kinds", default=None, help="only these images, comma-separated: llava, llava_next"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = QUICK if args.quick else FULL
    if args.layers or args.hidden:
        hidden = args.hidden or size.hidden
        size = Size(
            args.layers or size.layers, hidden, hidden // 64, int(hidden * 2.75), size.vocab
        )
    repeats = args.repeats or (3 if args.quick else 5)
    if args.points:
        print(
            f"text model: {size.layers} layers, hidden {size.hidden}, fp32; pruner "
            f"{POINTS_PRUNER!r}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"medians of {repeats} interleaved rounds\n"
        )
        points_main(size, repeats, args.warmup, keep=0.1)
        return
    kinds = ["llava"] if args.quick else ["llava", "llava_next"]
    if args.kinds:
        kinds = args.kinds.split(",")
        for kind in kinds:
            if kind not in ("llava", "llava_next"):
                parser.error(f"--kinds: expected llava or llava_next, got {kind!r}")
    configs = [Config("unpruned", None), Config("fastv", 1.0)]
    keeps = [float(k) for k in args.keeps.split(",")]
    configs += [Config(m, k) for k in keeps for m in ("fastv", "adaptprune")]

    print(
        f"text model: {size.layers} layers, hidden {size.hidden}, {size.heads} heads, "
        f"MLP {size.intermediate}, fp32; K = {args.layer}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; medians of {repeats}\n"
    )
    if args.parts_only:
        print_parts([row for kind in kinds for row in parts(make_case(kind, size), args.layer, repeats)])
        return
    print(
        "| image (visual tokens) | method | keep | L' | prefill ms (median) | min ms | "
        "speedup | ideal | of ideal | speedup of mins | peak MiB |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = []
    part_rows: list[str] = []
    for kind in kinds:
        case = make_case(kind, size)
        results = measure(case, configs, args.layer, repeats, warmup=args.warmup)
        for row in table(case, results, args.layer, size):
            print(row, flush=True)
        for stat, at in (("medians", 0), ("minimums", 1)):
            t = {config: result[at] for config, result in results.items()}
            overhead = t[Config("fastv", 1.0)] / t[Config("unpruned", None)] - 1
            gap = t[Config("adaptprune", 0.1)] / t[Config("fastv", 0.1)] - 1
            summary.append(
                f"- {case.name}, from {stat}: overhead at keep 1.0 (fastv) {100 * overhead:+.1f}% "
                f"of the unpruned prefill; adaptprune vs fastv at keep 0.1 {100 * gap:+.1f}%"
            )
        summary += ceiling_lines(case, results, args.layer, size)
        if args.parts:
            part_rows += parts(case, args.layer, repeats)
        del case
    print("", *summary, sep="\n")
    if args.parts:
        print_parts(part_rows)


def print_parts(rows: list[str]) -> None:
    print(
        "\nWhere the time of the keep 0.1 prefill goes, ms (medians of interleaved rounds; "
        "'setup' = the engine's per-prefill setup with the image layout; 'capture' = the "
        "attention cue in the layer before K; 'cues' = the cue assembly, with layer K's "
        "k_proj for adaptprune's keys; 'pruner' = scores, transforms and selector; "
        "'shorten' = the shortened hidden states, positions and mask; 'rest' = the model "
        "itself)\n",
        "| image (visual tokens) | part | fastv ms | adaptprune ms | difference ms |",
        "|---|---|---:|---:|---:|",
        *rows,
        sep="\n",
        flush=True,
    )


if __name__ == "__main__":
    main()
