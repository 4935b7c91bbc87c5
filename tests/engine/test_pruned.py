"""A pruned run equals the unpruned model whose layers K.. merely mask the dropped tokens
out (same selection), and its KV cache is as short as it should be."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import FAMILIES, make_batch
from transformers_compat import cache_of

import tokenprune

from .conftest import LAYER
from .reference import keep_mask, masked_reference

STEPS = 3


def greedy(model, inputs):
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=STEPS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("recipe", ["fastv", "adaptprune"])
def test_prefill_and_decoding_equal_the_masked_reference(models, batches, family, recipe):
    model, inputs = models[family], batches[family].inputs
    layer = LAYER[family]
    with tokenprune.prune(model, recipe, keep=0.25, layer=layer) as run:
        with torch.no_grad():
            logits = model(**inputs).logits  # (B, L', V)
        kept = run.kept
        out = greedy(model, inputs)
    keep = keep_mask(inputs["input_ids"], run)
    with masked_reference(model, layer, keep), torch.no_grad():
        reference = model(**inputs).logits  # (B, L, V)
        expected = greedy(model, inputs)
    slots = kept >= 0
    gathered = reference.gather(
        1, kept.clamp(min=0).unsqueeze(-1).expand(-1, -1, reference.shape[-1])
    )
    torch.testing.assert_close(logits[slots], gathered[slots], atol=1e-5, rtol=0)
    assert torch.equal(out.sequences, expected.sequences)
    torch.testing.assert_close(
        torch.stack(out.logits), torch.stack(expected.logits), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_selection_budget_and_kept_tokens(models, batches, family):
    model, batch = models[family], batches[family]
    ids = batch.inputs["input_ids"]
    with tokenprune.prune(model, "fastv", keep=0.1, layer=LAYER[family]) as run, torch.no_grad():
        model(**batch.inputs)
    budgets = [math.floor(n * 0.1) for n in batch.num_visual]
    assert run.selection.counts.tolist() == budgets
    text = (batch.inputs["attention_mask"].bool() & (ids != model.config.image_token_id)).sum(1)
    assert run.kept.shape[1] == max(t + k for t, k in zip(text.tolist(), budgets))
    for b, sample in enumerate(run.samples):
        assert sample.kept_seq_index.numel() == budgets[b]
        assert (ids[b, sample.kept_seq_index] == model.config.image_token_id).all()
        assert torch.equal(
            sample.kept_seq_index, sample.seq_index[sample.selection.indices[0, : budgets[b]]]
        )
        # The shortened row: its text tokens and kept visual tokens, in order, right-aligned.
        row = run.kept[b][run.kept[b] >= 0]
        assert torch.equal(row, row.sort().values)
        assert (ids[b, row] == model.config.image_token_id).sum() == budgets[b]
        assert row.numel() == text[b] + budgets[b]


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_kv_cache_is_full_below_k_and_short_from_k(models, batches, family):
    model, batch = models[family], batches[family]
    layer = LAYER[family]
    with tokenprune.prune(model, "adaptprune", keep=0.1, layer=layer) as run, torch.no_grad():
        out = model.generate(
            **batch.inputs, max_new_tokens=STEPS, do_sample=False, return_dict_in_generate=True
        )
        short = run.kept.shape[1]
    cache = cache_of(out)
    length = batch.inputs["input_ids"].shape[1]
    # The last generated token is not fed back, so the cache holds STEPS - 1 of them.
    lengths = [cache.layers[i].keys.shape[-2] for i in range(len(cache.layers))]
    expected = [length + STEPS - 1] * layer + [short + STEPS - 1] * (len(lengths) - layer)
    assert lengths == expected
    assert short < length
    assert cache.get_seq_length() == length + STEPS - 1


def test_batch_equals_single_runs(models):
    model = models["llava"]
    images = [[(336, 336)], [(336, 336), (336, 336)], []]
    batch = make_batch(model, images, seed=5)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"].bool()
    pad = (~mask).sum(1)
    with tokenprune.prune(model, "adaptprune", keep=0.1, layer=2) as run:
        together = greedy(model, batch.inputs).sequences
        samples = run.samples
        first = 0
        for b, sample_images in enumerate(images):
            # Row b of the batch without its padding, with its own images.
            row = ids[b][mask[b]][None]
            inputs = {"input_ids": row, "attention_mask": torch.ones_like(row)}
            if sample_images:
                inputs["pixel_values"] = batch.inputs["pixel_values"][
                    first : first + len(sample_images)
                ]
                first += len(sample_images)
            tokens = greedy(model, inputs).sequences[0]
            assert torch.equal(together[b][pad[b] :], tokens)
            if sample_images:
                (single,) = run.samples
                assert torch.equal(samples[b].kept_seq_index - pad[b], single.kept_seq_index)
            else:
                assert run.samples == [] and samples[b].kept_seq_index.numel() == 0
