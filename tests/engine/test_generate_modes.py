"""generate() modes that feed the prompt in pieces (chunked prefill) or roll the cache
back (prompt lookup, assisted decoding) are refused inside a block, before any work:
the prune needs the whole prompt in one forward and a cache that only grows."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llava
from transformers import GenerationConfig
from transformers_compat import cache_kwargs, cache_of

import tokenprune
from tokenprune.errors import TokenpruneError


@pytest.fixture(scope="module")
def assistant():
    return tiny_llava(seed=1)


@pytest.fixture(scope="module")
def one(batches):
    """The first prompt alone (assisted decoding takes a batch of one)."""
    inputs = batches["llava"].inputs
    mask = inputs["attention_mask"][0].bool()
    ids = inputs["input_ids"][:1, mask]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": inputs["pixel_values"][:1]}


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"prefill_chunk_size": 64}, "prefill_chunk_size"),
        ({"prompt_lookup_num_tokens": 4}, "prompt_lookup_num_tokens"),
        ({"generation_config": GenerationConfig(prompt_lookup_num_tokens=4, max_new_tokens=3)}, "prompt_lookup_num_tokens"),
        ({"assistant_model": "assistant"}, "assistant_model"),
    ],
)
def test_chunked_prefill_and_speculative_decoding_are_refused(llava, one, assistant, options, named):
    options = {k: (assistant if v == "assistant" else v) for k, v in options.items()}
    options.setdefault("max_new_tokens", 3)
    prefills = []
    with tokenprune.prune(llava, "fastv", keep=0.1, layer=2) as run, torch.no_grad():
        handle = llava.register_forward_pre_hook(lambda *a: prefills.append(1))
        try:
            with pytest.raises(TokenpruneError, match=rf"{named}: .*expected .*got"):
                llava.generate(**one, do_sample=False, **options)
        finally:
            handle.remove()
    assert prefills == [] and run.prefills == 0  # refused before the model ran


def test_prompt_lookup_works_outside_a_block(llava, one):
    with torch.no_grad():
        plain = llava.generate(**one, max_new_tokens=3, do_sample=False)
        lookup = llava.generate(**one, max_new_tokens=3, do_sample=False, prompt_lookup_num_tokens=4)
    assert torch.equal(plain, lookup)


def test_a_prompt_continued_with_images_on_a_pruned_cache_is_refused(llava, one):
    # What chunked prefill does by hand: the image tokens of the second piece would run
    # against a cache pruned without them.
    ids, mask = one["input_ids"], one["attention_mask"]
    with tokenprune.prune(llava, "fastv", keep=0.1, layer=2), torch.no_grad():
        out = llava(**one, use_cache=True)
        cache = cache_of(out)
        with pytest.raises(TokenpruneError, match="input_ids: expected no visual tokens in a forward that extends a pruned cache"):
            llava(input_ids=ids, attention_mask=torch.cat([mask, mask], dim=1), pixel_values=one["pixel_values"], **cache_kwargs(llava, cache))
