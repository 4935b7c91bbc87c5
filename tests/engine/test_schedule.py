"""Several prune points in one block: each stage sees only the survivors of the earlier
ones, keeps a fraction of the ORIGINAL visual tokens, and takes its cues from the layer
before it. A two-stage run equals two single-stage references chained by hand."""

from __future__ import annotations

import pytest
import torch

import tokenprune
from tokenprune.capture.attention_math import last_query_attention

from .reference import hidden_norm_pruner, keep_mask, masked_reference


def test_two_stages_equal_two_single_stage_references_chained_by_hand(llava, batches):
    batch = batches["llava"]
    inputs, ids = batch.inputs, batch.inputs["input_ids"]
    schedule = {1: ("fastv", 0.5), 3: ("fastv", 0.25)}
    with tokenprune.prune(llava, layer=schedule) as run, torch.no_grad():
        logits = llava(**inputs).logits
    first, second = run.records
    assert (first.point, second.point) == (1, 3)
    assert first.selection.counts.tolist() == [int(n * 0.5) for n in batch.num_visual]
    assert second.selection.counts.tolist() == [int(n * 0.25) for n in batch.num_visual]

    # Stage 1 by hand: a single-stage run at layer 1 selects the same tokens.
    with tokenprune.prune(llava, "fastv", keep=0.5, layer=1) as single, torch.no_grad():
        llava(**inputs)
    assert torch.equal(single.records[0].selection.mask, first.selection.mask)
    keep1 = keep_mask(ids, run, stage=0)

    # Stage 2 by hand: the masked stage-1 reference's layer-2 attention of the last
    # token, top 25% of the original count among the survivors.
    with masked_reference(llava, 1, keep1), torch.no_grad():
        out = llava(**inputs, output_attentions=True)
    attention = out.attentions[2][:, :, -1].mean(dim=1)  # (B, L)
    expected = []
    for b, n in enumerate(batch.num_visual):
        survivors = first.samples[b].kept_seq_index
        order = attention[b, survivors].argsort(descending=True, stable=True)
        expected.append(survivors[order[: int(n * 0.25)]].sort().values)
    for b, sample in enumerate(second.samples):
        assert torch.equal(sample.kept_seq_index, expected[b])
    # Both stages as masks: the pruned logits equal the chained reference.
    keep2 = keep_mask(ids, run, stage=1)
    with masked_reference(llava, 1, keep1, (3, keep2)), torch.no_grad():
        reference = llava(**inputs).logits
    kept = run.kept
    slots = kept >= 0
    gathered = reference.gather(1, kept.clamp(min=0)[..., None].expand(-1, -1, reference.shape[-1]))
    torch.testing.assert_close(logits[slots], gathered[slots], atol=1e-5, rtol=0)


def test_input_then_layer_stage_decodes_like_the_masked_reference(llava, batches):
    batch = batches["llava"]
    inputs, ids = batch.inputs, batch.inputs["input_ids"]
    schedule = {"input": (hidden_norm_pruner(0.5), None), 2: ("fastv", 0.25)}
    generate = {"max_new_tokens": 3, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    with tokenprune.prune(llava, layer=schedule) as run, torch.no_grad():
        out = llava.generate(**inputs, **generate)
    keep1, keep2 = keep_mask(ids, run, stage=0), keep_mask(ids, run, stage=1)
    with masked_reference(llava, 0, keep1, (2, keep2)), torch.no_grad():
        expected = llava.generate(**inputs, **generate)
    assert torch.equal(out.sequences, expected.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(expected.logits), atol=1e-5, rtol=0)


def test_keep_one_at_every_stage_is_bitwise(llava, batches):
    inputs = batches["llava"].inputs
    with torch.no_grad():
        expected = llava(**inputs).logits
    with tokenprune.prune(llava, "fastv", layer={1: 1.0, 3: 1.0}) as run, torch.no_grad():
        logits = llava(**inputs).logits
    assert len(run.records) == 2
    assert torch.equal(logits, expected)


def test_growing_keeps_and_bad_points_are_refused(llava):
    with pytest.raises(tokenprune.SpecError, match="at most what the stage before kept"):
        tokenprune.prune(llava, "fastv", layer={1: 0.25, 3: 0.5})
    with pytest.raises(tokenprune.SpecError, match="layer: expected 'input' or an int"):
        tokenprune.prune(llava, "fastv", keep=0.5, layer={1: 0.5, 9: 0.25})
    with pytest.raises(tokenprune.SpecError, match="needs pruner="):
        tokenprune.prune(llava, layer={1: 0.5})
    with pytest.raises(tokenprune.SpecError, match="at least one prune point"):
        tokenprune.prune(llava, "fastv", layer={})


def test_attention_math_takes_each_samples_last_real_query():
    torch.manual_seed(0)
    query, key = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    last = torch.tensor([5, 3])
    got = last_query_attention(query, key, mask, 0.5, last)
    alone = last_query_attention(query[1:, :, :4], key[1:, :, :4], mask[1:, :4], 0.5)
    torch.testing.assert_close(got[1, :4], alone[0])
    assert (got[1, 4:] == 0).all()
