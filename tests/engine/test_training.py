"""Training through a pruned forward: with gradient checkpointing (transformers 5's
non-reentrant default) the cues are computed without grad, so the checkpointed layer
saves the same tensors when it is recomputed and backward works."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llava

import tokenprune


def _gradients(model, inputs, recipe):
    model.zero_grad(set_to_none=True)
    with tokenprune.prune(model, recipe, keep=0.25, layer=2) as run:
        logits = model(**inputs, use_cache=False).logits
    logits.float().pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, run.selection.mask.clone()


@pytest.mark.parametrize("recipe", ["fastv", "adaptprune", "fitprune"])
def test_backward_with_gradient_checkpointing_equals_without(batches, recipe):
    model = tiny_llava().train()  # the tiny configs have no dropout
    inputs = batches["llava"].inputs
    plain, plain_mask = _gradients(model, inputs, recipe)
    model.activation_checkpointing_enable()
    try:
        checkpointed, mask = _gradients(model, inputs, recipe)
    finally:
        model.activation_checkpointing_disable()
    assert torch.equal(mask, plain_mask)
    assert plain.keys() == checkpointed.keys()
    assert any("language_model.layers.3" in name for name in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5)


def test_cues_carry_no_graph(batches):
    model = tiny_llava().train()
    seen = {}
    selector = tokenprune.pruner("adaptprune", keep=0.25).selector
    from tokenprune.strategies.scores import AttentionScore

    class Spy(AttentionScore):
        requires = frozenset({"attention", "keys"})

        def __call__(self, cues):
            seen["attention"], seen["keys"] = cues.attention, cues.keys
            return super().__call__(cues)

    with tokenprune.prune(model, tokenprune.Pruner(Spy(), (), selector, keep=0.25), layer=2):
        model(**batches["llava"].inputs, use_cache=False)
    assert not seen["attention"].requires_grad and not seen["keys"].requires_grad
