"""Time and memory of the selectors of the methods users compare AdaptPrune against:
``divprune``, ``dpp`` (CDPruner), ``dart`` and ``visionzip`` (none of them compiles: their
steps are BLAS matrix-vector products, see ``tokenprune/strategies/greedy.py``).

Inputs: random features ``(B, N, D)`` float32 (the ``hidden`` and ``keys`` cues) and random
scores on a grid layout; keep 10% (57 of 576, 288 of 2,880). Each configuration runs in
a fresh subprocess: one warm-up call, then timed calls (median reported). Peak extra memory is measured as in ``selector_speed.py`` (same
function, same allocator settings), in a second subprocess; the inputs are not counted.
Target: ``divprune`` and ``dpp`` under 64 MiB extra at N = 2,880, D = 4096.

    python benchmarks/method_selectors.py            # N = 576 and 2,880, D = 4096, B = 1 and 4
    python benchmarks/method_selectors.py --quick    # B = 1 only, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch
from selector_speed import MEMORY_METHOD, peak_extra_bytes, timed

import tokenprune

SPECS = {
    "divprune": "uniform | divprune",
    "dpp": "random | dpp",
    "dart": "key_norm | dart(pivots=8)",
    "visionzip": "attention | visionzip",
}
SHAPES = ((576, 4096, 24, 24), (2880, 4096, 48, 60))
TARGET_MIB = 64


def _cues(n: int, d: int, b: int, h: int, w: int) -> tokenprune.Cues:
    gen = torch.Generator().manual_seed(n + d + b)
    hidden = torch.randn(b, n, d, generator=gen)
    layout = tokenprune.Layout.grid(h, w, batch=b)
    return tokenprune.Cues(layout, attention=torch.rand(b, n, generator=gen), keys=hidden, hidden=hidden,
                           generator=torch.Generator().manual_seed(0))


def _run(name: str, cues: tokenprune.Cues):
    pruner = tokenprune.pruner(SPECS[name], keep=0.1)
    return lambda: pruner(cues).indices


def time_worker(config: dict, repeats: int) -> dict:
    call = _run(config["name"], _cues(**{k: config[k] for k in ("n", "d", "b", "h", "w")}))
    timed(call, "cpu")
    return {"median_s": statistics.median(timed(call, "cpu")[0] for _ in range(repeats))}


def memory_worker(config: dict) -> dict:
    call = _run(config["name"], _cues(**{k: config[k] for k in ("n", "d", "b", "h", "w")}))
    call()
    return {"peak_bytes": peak_extra_bytes(call, "cpu")}


def _subprocess(mode: str, config: dict, repeats: int) -> dict:
    env = dict(os.environ)
    if mode == "memory":
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
        env.setdefault("MALLOC_TRIM_THRESHOLD_", str(128 * 1024))
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--{mode}-worker", json.dumps(config), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{mode} worker for {config} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="B = 1 only, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7; quick 3)")
    parser.add_argument("--time-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    if args.time_worker:
        print(json.dumps(time_worker(json.loads(args.time_worker), repeats)))
        return
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return
    lines = [
        f"`python benchmarks/method_selectors.py{' --quick' if args.quick else ''}`: torch {torch.__version__}, "
        f"float32, keep 0.1, {torch.get_num_threads()} torch threads. Peak extra memory: {MEMORY_METHOD['cpu']}.",
        "",
        "| selector | N | D | K | B | ms | ms / sample | peak extra MiB |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for name in SPECS:
        for n, d, h, w in SHAPES:
            for b in (1,) if args.quick else (1, 4):
                config = {"name": name, "n": n, "d": d, "b": b, "h": h, "w": w}
                res = {**_subprocess("time", config, repeats), **_subprocess("memory", config, repeats)}
                med, peak = res["median_s"], res["peak_bytes"]
                mib = None if peak is None else peak / 2**20
                lines.append(
                    f"| {name} | {n:,} | {d} | {n // 10} | {b} | {med * 1e3:,.1f} | {med * 1e3 / b:,.1f} | "
                    f"{'n/a' if mib is None else f'{mib:,.1f}'} |"
                )
                print(lines[-1], file=sys.stderr, flush=True)
                if name in ("divprune", "dpp") and n == 2880 and b == 1 and mib is not None:
                    verdicts.append(
                        f"- {'PASS' if mib < TARGET_MIB else 'MISS'}: {name} at N = 2,880, D = 4096 under "
                        f"{TARGET_MIB} MiB extra: {mib:,.1f} MiB"
                    )
    print("\n".join([*lines, "", "Targets:", *verdicts, ""]))


if __name__ == "__main__":
    main()
