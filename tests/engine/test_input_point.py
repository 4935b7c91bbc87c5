"""layer="input": the visual embeddings are pruned before decoder layer 0. A pruned
generate() equals the plain model (no tokenprune) run on the shortened inputs_embeds with
the corresponding position ids, in both position modes."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, llava_singles
from transformers_compat import cache_of

import tokenprune

from .reference import greedy_from_embeddings, hidden_norm_pruner, language_model_inputs

STEPS = 3


def greedy(model, inputs):
    with torch.no_grad():
        # Options in ``inputs`` (beams, sampling, no cache) override the greedy defaults.
        defaults = {
            "max_new_tokens": STEPS,
            "do_sample": False,
            "output_logits": True,
            "return_dict_in_generate": True,
        }
        return model.generate(**{**defaults, **inputs})


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("positions", ["original", "compact"])
def test_generate_equals_the_plain_model_on_shortened_embeddings(models, batches, family, positions):
    model, inputs = models[family], batches[family].inputs
    with tokenprune.prune(
        model, hidden_norm_pruner(0.25), layer="input", positions=positions
    ) as run:
        out = greedy(model, inputs)
        (record,) = run.records
        kept = run.kept
        with torch.no_grad():
            prefill_logits = model(**inputs).logits
    assert record.point == "input"
    seen = language_model_inputs(model, inputs)
    embeds, mask = seen["inputs_embeds"], inputs["attention_mask"].bool()
    slots = kept >= 0
    short = embeds.gather(1, kept.clamp(min=0)[..., None].expand(-1, -1, embeds.shape[-1]))
    short_mask = slots
    if positions == "original":
        full = (mask.long().cumsum(1) - 1).masked_fill(~mask, 1)
        short_positions = full.gather(1, kept.clamp(min=0)).masked_fill(~slots, 1)
    else:
        short_positions = (slots.long().cumsum(1) - 1).masked_fill(~slots, 1)
    tokens, logits = greedy_from_embeddings(model, short, short_mask, short_positions, STEPS)
    assert torch.equal(out.sequences[:, -STEPS:], tokens)
    torch.testing.assert_close(torch.stack(out.logits), logits, atol=1e-5, rtol=0)
    with torch.no_grad():
        reference = model(inputs_embeds=short, attention_mask=short_mask.long(), position_ids=short_positions).logits
    torch.testing.assert_close(prefill_logits[slots], reference[slots], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_dropped_tokens_never_reach_the_cache(models, batches, family):
    model, batch = models[family], batches[family]
    inputs = batch.inputs
    with tokenprune.prune(model, hidden_norm_pruner(0.25), layer="input") as run, torch.no_grad():
        out = model(**inputs, use_cache=True)
    length = inputs["input_ids"].shape[1]
    short = run.kept.shape[1]
    assert short < length
    for layer in cache_of(out).layers:
        assert layer.keys.shape[-2] == short
    budgets = [int(n * 0.25) for n in batch.num_visual]
    assert run.selection.counts.tolist() == budgets


def test_keep_one_is_bitwise(models, batches):
    model, inputs = models["llava"], batches["llava"].inputs
    expected = greedy(model, inputs)
    with tokenprune.prune(model, hidden_norm_pruner(1.0), layer="input"):
        out = greedy(model, inputs)
    assert torch.equal(out.sequences, expected.sequences)
    assert torch.equal(torch.stack(out.logits), torch.stack(expected.logits))


def test_input_cues_are_the_embeddings(models, batches):
    model, inputs = models["llava"], batches["llava"].inputs
    from .reference import recording_pruner

    record, pruner = recording_pruner({"hidden", "keys"}, keep=0.5)
    with tokenprune.prune(model, pruner, layer="input") as run, torch.no_grad():
        model(**inputs)
    seen = language_model_inputs(model, inputs)
    embeds = seen["inputs_embeds"]
    seq = run.seq_index
    valid = seq >= 0
    expected = embeds.gather(1, seq.clamp(min=0)[..., None].expand(-1, -1, embeds.shape[-1]))
    assert torch.equal(record.cues.hidden[valid], expected[valid])
    assert torch.equal(record.cues.keys[valid], expected[valid])


def test_attention_cues_are_refused_at_the_input(llava):
    with pytest.raises(tokenprune.CueError, match="attention: needs the attention of the decoder layer"):
        tokenprune.prune(llava, "fastv", keep=0.5, layer="input")


def test_compact_positions_need_the_input_point(llava):
    with pytest.raises(tokenprune.SpecError, match="positions: 'compact'"):
        tokenprune.prune(llava, "fastv", keep=0.5, layer=2, positions="compact")
    with pytest.raises(tokenprune.SpecError, match="positions: expected one of"):
        tokenprune.prune(llava, hidden_norm_pruner(0.5), layer="input", positions="packed")


@pytest.mark.parametrize(
    "options",
    [
        {"num_beams": 3, "num_return_sequences": 2, "output_logits": False, "output_scores": True},
        {"do_sample": True, "top_k": 20, "temperature": 1.5},
        {"use_cache": False},
    ],
    ids=["beams", "sampling", "no_cache"],
)
def test_keep_one_is_bitwise_with_every_decoding(models, batches, options):
    model, inputs = models["llava"], batches["llava"].inputs

    def run():
        torch.manual_seed(7)
        out = greedy(model, {**inputs, **options})
        scores = out.logits if out.logits is not None else out.scores
        return out.sequences, torch.stack(scores)

    expected = run()
    with tokenprune.prune(model, hidden_norm_pruner(1.0), layer="input"):
        got = run()
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


def test_keep_one_is_bitwise_with_eager_attention(llava_eager, batches):
    inputs = batches["llava"].inputs
    expected = greedy(llava_eager, inputs)
    with tokenprune.prune(llava_eager, hidden_norm_pruner(1.0), layer="input"):
        out = greedy(llava_eager, inputs)
    assert torch.equal(out.sequences, expected.sequences)
    assert torch.equal(torch.stack(out.logits), torch.stack(expected.logits))


@pytest.mark.parametrize("positions", ["original", "compact"])
def test_batch_equals_single_runs(models, batches, positions):
    model, batch = models["llava"], batches["llava"]
    inputs = batch.inputs
    with tokenprune.prune(model, hidden_norm_pruner(0.25), layer="input", positions=positions):
        together = greedy(model, inputs).sequences
        for b, alone in enumerate(llava_singles(inputs, batch.image_sizes)):
            tokens = greedy(model, alone).sequences[0]
            assert torch.equal(together[b][-tokens.numel():], tokens)
