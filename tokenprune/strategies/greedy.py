"""Running a greedy selector: ``budget`` steps of a compiled step function, batched.

A step keeps one token per sample and updates its state. Samples stop at their own
budget: their state is frozen once it is spent, and only the first ``budget[b]`` kept
indices count. The step is compiled once (dynamic B and N) and unrolled ``UNROLL``
times per call, so the Python loop costs one call per ``UNROLL`` kept tokens and no
host sync per kept token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tokenprune.compile import maybe_compiled

__all__ = ["UNROLL", "greedy_runner", "kept_mask", "run_greedy"]

#: Greedy steps per compiled call.
UNROLL = 8


def greedy_runner(step: Callable[..., tuple[tuple[Tensor, ...], Tensor]]) -> Callable[..., tuple]:
    """Wrap ``step(state, *args) -> (new_state, kept (B,))`` (``state`` a tuple of
    batch-first tensors) into a compiled function of ``UNROLL`` steps:
    ``run(state, remaining (B,), *args) -> (state, remaining, kept (B, UNROLL))``."""

    def steps(state: tuple[Tensor, ...], remaining: Tensor, *args) -> tuple:
        kept = []
        for _ in range(UNROLL):
            new_state, index = step(state, *args)
            going = remaining > 0
            state = tuple(
                torch.where(going.view(-1, *([1] * (new.dim() - 1))), new, old)
                for new, old in zip(new_state, state)
            )
            remaining = remaining - 1
            kept.append(index)
        return state, remaining, torch.stack(kept, dim=1)

    steps.__name__ = f"unrolled_{step.__name__}"
    return maybe_compiled(steps)


def run_greedy(run: Callable[..., tuple], state: tuple[Tensor, ...], budget: Tensor, *args) -> tuple[Tensor, tuple]:
    """Call ``run`` (from `greedy_runner`) until every sample spent its budget.

    Returns:
        ``order (B, S)`` long, the kept index of each step (S >= max budget), and the
        final state.
    """
    steps = int(budget.max()) if budget.numel() else 0
    remaining = budget.clone()
    kept = []
    for _ in range(0, steps, UNROLL):
        state, remaining, index = run(state, remaining, *args)
        kept.append(index)
    order = torch.cat(kept, dim=1) if kept else budget.new_zeros(budget.shape[0], 0)
    return order, state


def kept_mask(order: Tensor, budget: Tensor, num_tokens: int) -> Tensor:
    """``(B, N)`` bool: the first ``budget[b]`` indices of ``order[b]``."""
    take = torch.arange(order.shape[1], device=order.device).unsqueeze(0) < budget.unsqueeze(1)
    # Steps past a sample's budget may repeat an index; counting keeps the mask exact.
    hits = torch.zeros(order.shape[0], num_tokens, dtype=torch.long, device=order.device)
    return hits.scatter_add(1, order, take.long()) > 0
