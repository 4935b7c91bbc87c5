"""Training through a pruned forward: with gradient checkpointing (transformers 5's
non-reentrant default) the cues are computed without grad, so the checkpointed layer
saves the same tensors when it is recomputed and backward works. Where checkpointing runs
the layers' forward hooks again in backward (transformers 5.17), pruning at a decoder
layer is refused and pruning at ``"input"`` still works."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llava
from transformers_compat import CHECKPOINT_REPLAYS_HOOKS, checkpointing

import tokenprune
from tokenprune.errors import TokenpruneError

from .reference import hidden_norm_pruner
from .test_session import snapshot


def _gradients(model, inputs, recipe, layer=2):
    model.zero_grad(set_to_none=True)
    with tokenprune.prune(model, recipe, keep=0.25, layer=layer) as run:
        logits = model(**inputs, use_cache=False).logits
    logits.float().pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, run.selection.mask.clone()


@pytest.mark.skipif(CHECKPOINT_REPLAYS_HOOKS, reason="refused on this transformers (next test)")
@pytest.mark.parametrize("recipe", ["fastv", "adaptprune", "fitprune"])
def test_backward_with_gradient_checkpointing_equals_without(batches, recipe):
    model = tiny_llava().train()  # the tiny configs have no dropout
    inputs = batches["llava"].inputs
    plain, plain_mask = _gradients(model, inputs, recipe)
    with checkpointing(model):
        checkpointed, mask = _gradients(model, inputs, recipe)
    assert torch.equal(mask, plain_mask)
    assert plain.keys() == checkpointed.keys()
    assert any("language_model.layers.3" in name for name in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not CHECKPOINT_REPLAYS_HOOKS, reason="this transformers checkpoints forward only")
def test_checkpointing_that_replays_the_hooks_is_refused_at_a_decoder_layer(batches):
    model = tiny_llava().train()
    inputs = batches["llava"].inputs
    with checkpointing(model):
        before = snapshot(model)
        with (
            pytest.raises(TokenpruneError, match=r"model: expected gradient checkpointing .* got transformers 5\.[\d.]+'s, which runs layer 2's forward hooks again in backward"),
            tokenprune.prune(model, "fastv", keep=0.25, layer=2),
        ):
            model(**inputs, use_cache=False)
        assert snapshot(model) == before
        with tokenprune.prune(model, "fastv", keep=0.25, layer=2), torch.no_grad():
            model(**inputs, use_cache=False)  # no backward, nothing to recompute


def test_backward_with_gradient_checkpointing_at_the_input_equals_without(batches):
    model = tiny_llava().train()
    inputs = batches["llava"].inputs
    pruner = hidden_norm_pruner(0.25)
    plain, plain_mask = _gradients(model, inputs, pruner, layer="input")
    with checkpointing(model):
        checkpointed, mask = _gradients(model, inputs, pruner, layer="input")
    assert torch.equal(mask, plain_mask)
    assert plain.keys() == checkpointed.keys()
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
