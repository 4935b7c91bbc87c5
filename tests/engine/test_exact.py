"""keep = 1.0 changes nothing: logits and tokens are bitwise those of the unpatched model
(the shortened layers run the same arithmetic on the same tokens)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, make_batch

import tokenprune

from .conftest import LAYER

GREEDY = {
    "max_new_tokens": 3,
    "do_sample": False,
    "output_logits": True,
    "return_dict_in_generate": True,
}


def generate(model, inputs, **kwargs):
    with torch.no_grad():
        out = model.generate(**inputs, **{**GREEDY, **kwargs})
    scores = torch.stack(out.logits) if out.logits is not None else out.sequences_scores
    return out.sequences, scores


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_and_greedy_padded_batch_are_bitwise(models, batches, family):
    model, inputs = models[family], batches[family].inputs
    with torch.no_grad():
        logits = model(**inputs).logits
    tokens, step_logits = generate(model, inputs)
    with tokenprune.prune(model, "adaptprune", keep=1.0, layer=LAYER[family]) as run:
        with torch.no_grad():
            pruned_logits = model(**inputs).logits
        pruned_tokens, pruned_step_logits = generate(model, inputs)
    assert run.prefills == 2
    assert run.selection.counts.tolist() == batches[family].num_visual
    assert torch.equal(pruned_logits, logits)
    assert torch.equal(pruned_tokens, tokens)
    assert torch.equal(pruned_step_logits, step_logits)


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_beam_search_is_bitwise(models, batches, family):
    model, inputs = models[family], batches[family].inputs
    beams = {
        "num_beams": 3,
        "num_return_sequences": 2,
        "output_logits": False,
        "output_scores": True,
    }
    tokens, scores = generate(model, inputs, **beams)
    with tokenprune.prune(model, "fastv", keep=1.0, layer=LAYER[family]) as run:
        pruned, pruned_scores = generate(model, inputs, **beams)
    # The prefill runs B * num_beams rows.
    assert run.selection.indices.shape[0] == 2 * 3
    assert torch.equal(pruned, tokens)
    assert torch.equal(pruned_scores, scores)


def test_eager_model_is_bitwise(llava_eager, batches):
    inputs = batches["llava"].inputs
    tokens, logits = generate(llava_eager, inputs)
    with tokenprune.prune(llava_eager, "fastv", keep=1.0, layer=1) as run:
        pruned, pruned_logits = generate(llava_eager, inputs)
        assert llava_eager.config.text_config._attn_implementation.endswith("eager")
    assert run.prefills == 1
    assert torch.equal(pruned, tokens)
    assert torch.equal(pruned_logits, logits)


def test_sampling_is_bitwise(llava, batches):
    inputs = batches["llava"].inputs
    sample = {"do_sample": True, "top_k": 20, "temperature": 1.5}
    torch.manual_seed(7)
    tokens, logits = generate(llava, inputs, **sample)
    with tokenprune.prune(llava, "fastv", keep=1.0, layer=2):
        torch.manual_seed(7)
        pruned, pruned_logits = generate(llava, inputs, **sample)
    assert torch.equal(pruned, tokens)
    assert torch.equal(pruned_logits, logits)


def test_without_cache_is_bitwise_and_prunes_every_forward(llava, batches):
    inputs = batches["llava"].inputs
    tokens, logits = generate(llava, inputs, use_cache=False)
    with tokenprune.prune(llava, "fastv", keep=1.0, layer=2) as run:
        pruned, pruned_logits = generate(llava, inputs, use_cache=False)
    assert run.prefills == GREEDY["max_new_tokens"]
    assert torch.equal(pruned, tokens)
    assert torch.equal(pruned_logits, logits)


def test_prompts_without_images_pass_untouched(llava):
    inputs = make_batch(llava, [[], []], text_len=6, seed=3).inputs
    assert "pixel_values" not in inputs
    tokens, logits = generate(llava, inputs)
    with tokenprune.prune(llava, "adaptprune", keep=0.1, layer=2) as run:
        pruned, pruned_logits = generate(llava, inputs)
    assert run.prefills == 0 and run.selection is None and run.samples == []
    assert torch.equal(pruned, tokens)
    assert torch.equal(pruned_logits, logits)


def flash_available() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return torch.cuda.is_available() and is_flash_attn_2_available()


@pytest.mark.skipif(not flash_available(), reason="needs CUDA and flash-attn 2")
def test_flash_attention_is_bitwise_on_gpu(batches):
    from tiny_models import tiny_llava

    model = tiny_llava().to("cuda", torch.bfloat16)
    model.set_attn_implementation({"text_config": "flash_attention_2"})
    inputs = {k: v.to("cuda") for k, v in batches["llava"].inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    tokens, logits = generate(model, inputs)
    with tokenprune.prune(model, "adaptprune", keep=1.0, layer=2) as run:
        pruned, pruned_logits = generate(model, inputs)
        assert "flash_attention_2" in model.config.text_config._attn_implementation
    assert run.selection.counts.tolist() == batches["llava"].num_visual
    assert torch.equal(pruned, tokens)
    assert torch.equal(pruned_logits, logits)
    with tokenprune.prune(model, "fastv", keep=0.1, layer=2) as run:
        generate(model, inputs)
    assert run.selection.counts.tolist() == [n // 10 for n in batches["llava"].num_visual]
