"""Running a greedy selector: ``budget`` steps of a step function, batched.

A step keeps one token per sample and updates its state. Samples stop at their own
budget: their state is frozen once it is spent, and only the first ``budget[b]`` kept
indices count. No host sync per step.

The steps of ``divprune`` and ``dpp`` run eagerly: each is dominated by one
``(B, N, D)`` matrix-vector product that eager mode hands to BLAS, and compiling the
step (unrolled, as ``soft_nms`` does) measured 2-3x slower at N = 576, D = 4096 on this
project's CPU (``benchmarks/method_selectors.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["kept_mask", "run_greedy"]


def run_greedy(
    step: Callable[..., tuple[tuple[Tensor, ...], Tensor]], state: tuple[Tensor, ...], budget: Tensor, *args
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run ``step(i, state, *args) -> (new_state, kept (B,))`` for steps i = 0, 1, ...
    until every sample spent its ``budget (B,)``; ``state`` is a tuple of batch-first
    tensors (a sample's is frozen once its budget is spent).

    Returns:
        ``order (B, S)`` long, the kept index of each step (S = max budget), and the
        final state.
    """
    steps = int(budget.max()) if budget.numel() else 0
    kept = []
    for i in range(steps):
        new_state, index = step(i, state, *args)
        going = budget > i
        state = tuple(
            torch.where(going.view(-1, *([1] * (new.dim() - 1))), new, old) for new, old in zip(new_state, state)
        )
        kept.append(index)
    order = torch.stack(kept, dim=1) if kept else budget.new_zeros(budget.shape[0], 0)
    return order, state


def kept_mask(order: Tensor, budget: Tensor, num_tokens: int) -> Tensor:
    """``(B, N)`` bool: the first ``budget[b]`` indices of ``order[b]``."""
    take = torch.arange(order.shape[1], device=order.device).unsqueeze(0) < budget.unsqueeze(1)
    # Steps past a sample's budget may repeat an index; counting keeps the mask exact.
    hits = torch.zeros(order.shape[0], num_tokens, dtype=torch.long, device=order.device)
    return hits.scatter_add(1, order, take.long()) > 0
