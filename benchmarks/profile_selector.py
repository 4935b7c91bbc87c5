"""Where the time of one ``adaptprune`` selector call goes: torch.profiler over a few
compiled calls, by operator. For reading, not a target: the speed targets live in
``selector_speed.py``.

    python benchmarks/profile_selector.py                  # (N, D, K) = (576, 128, 57), B = 1
    python benchmarks/profile_selector.py --n-side 100 --d 4096 --k 1000 --calls 3

"Call CompiledFxGraph" rows are the compiled greedy steps (``UNROLL`` steps per call);
everything else is the eager part of the pruner (input checks, Gaussian, key norms,
window set-up, assembling the Selection). On CPU tensors the selection runs in soft_nms's
C kernel, which the profiler does not see (the total minus the listed operators);
``--torch-steps`` profiles the compiled torch steps instead.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

import tokenprune
from tokenprune.strategies import soft_nms_cpu
from tokenprune.strategies.soft_nms import UNROLL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-side", type=int, default=24, help="grid side: N = side^2 (default 24)")
    parser.add_argument("--d", type=int, default=128, help="key width D (default 128)")
    parser.add_argument("--k", type=int, default=57, help="kept tokens K (default 57)")
    parser.add_argument("--b", type=int, default=1, help="batch B (default 1)")
    parser.add_argument("--calls", type=int, default=10, help="profiled calls (default 10)")
    parser.add_argument("--torch-steps", action="store_true", help="the compiled torch steps, not the C kernel")
    args = parser.parse_args()
    soft_nms_cpu.set_native(not args.torch_steps)

    torch.manual_seed(0)
    n = args.n_side**2
    layout = tokenprune.Layout.grid(args.n_side, args.n_side, batch=args.b)
    # Keys around one shared direction, as in selector_speed.py, so suppression is real.
    keys = torch.randn(args.d) + 0.25 * torch.randn(args.b, n, args.d)
    cues = tokenprune.Cues(layout, attention=torch.rand(args.b, n), keys=keys)
    pruner = tokenprune.pruner("adaptprune", keep=args.k)
    for _ in range(3):  # compile and warm up
        pruner(cues)
    times = []
    for _ in range(max(args.calls, 5)):
        start = time.perf_counter()
        pruner(cues)
        times.append(time.perf_counter() - start)
    print(f"(N, D, K) = ({n}, {args.d}, {args.k}), B = {args.b}, torch threads = {torch.get_num_threads()}, "
          f"UNROLL = {UNROLL}: median {statistics.median(times) * 1e3:.2f} ms per call")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.calls):
            pruner(cues)
    print(f"profile of {args.calls} calls:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
