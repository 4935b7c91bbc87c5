"""Sliding-window language models (llava-v1.6-mistral: MistralConfig's default window,
no ``layer_types``): the shortened layers keep the window, counted over the original
sequence (a kept token sits at its original index), in the prefill and in decoding."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_batch, tiny_llava_next

import tokenprune

from .reference import keep_mask, masked_reference

#: Far shorter than the prompts (about 1200-2300 tokens), so the window matters.
WINDOW = 300
LAYER = 2
GREEDY = {"max_new_tokens": 3, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}


@pytest.fixture(scope="module")
def mistral():
    return tiny_llava_next(sliding_window=WINDOW)


@pytest.fixture(scope="module")
def batch(mistral):
    return make_batch(mistral, [[(500, 700)], [(336, 672)]], seed=1)


def test_the_tiny_model_is_sliding_window_and_the_window_matters(mistral, batch):
    config = mistral.config.text_config
    assert config.sliding_window == WINDOW and getattr(config, "layer_types", None) is None
    with torch.no_grad():
        windowed = mistral(**batch.inputs).logits
        config.sliding_window = None
        try:
            full = mistral(**batch.inputs).logits
        finally:
            config.sliding_window = WINDOW
    assert not torch.allclose(windowed, full, atol=1e-3)


def test_keep_one_is_bitwise(mistral, batch):
    inputs = batch.inputs
    with torch.no_grad():
        logits = mistral(**inputs).logits
        out = mistral.generate(**inputs, **GREEDY)
        with tokenprune.prune(mistral, "adaptprune", keep=1.0, layer=LAYER):
            pruned_logits = mistral(**inputs).logits
            pruned = mistral.generate(**inputs, **GREEDY)
    assert torch.equal(pruned_logits, logits)
    assert torch.equal(pruned.sequences, out.sequences)
    assert torch.equal(torch.stack(pruned.logits), torch.stack(out.logits))


def test_pruned_equals_the_windowed_masked_reference(mistral, batch):
    inputs = batch.inputs
    with tokenprune.prune(mistral, "fastv", keep=0.25, layer=LAYER) as run, torch.no_grad():
        logits = mistral(**inputs).logits
        kept = run.kept
        out = mistral.generate(**inputs, **GREEDY)
    keep = keep_mask(inputs["input_ids"], run)
    with masked_reference(mistral, LAYER, keep, window=WINDOW), torch.no_grad():
        reference = mistral(**inputs).logits
        expected = mistral.generate(**inputs, **GREEDY)
    slots = kept >= 0
    gathered = reference.gather(1, kept.clamp(min=0).unsqueeze(-1).expand(-1, -1, reference.shape[-1]))
    torch.testing.assert_close(logits[slots], gathered[slots], atol=1e-5, rtol=0)
    assert torch.equal(out.sequences, expected.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(expected.logits), atol=1e-5, rtol=0)
