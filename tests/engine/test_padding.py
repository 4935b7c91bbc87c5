"""Right padding (issue 10 item 7): every sample is scored from its own last real prompt
token, and a right-padded batch equals each sample run alone and, at keep = 1, the
unpruned model bitwise (at the real positions)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import llava_singles

import tokenprune

from .reference import recording_pruner


def right_padded(inputs):
    """The same batch with each row's padding moved to the end (every per-token tensor:
    ``input_ids``, ``attention_mask``, Qwen-VL's ``mm_token_type_ids``)."""
    mask = inputs["attention_mask"].bool()
    per_token = {k: v for k, v in inputs.items() if torch.is_tensor(v) and v.shape == mask.shape}
    moved = {k: torch.zeros_like(v) for k, v in per_token.items()}
    for b in range(mask.shape[0]):
        length = int(mask[b].sum())
        for k, v in per_token.items():
            moved[k][b, :length] = v[b][mask[b]]
    return {**inputs, **moved}


def test_keep_one_right_padded_is_bitwise_at_real_positions(llava, batches):
    inputs = right_padded(batches["llava"].inputs)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        expected = llava(**inputs).logits
    with tokenprune.prune(llava, "fastv", keep=1.0, layer=2) as run, torch.no_grad():
        logits = llava(**inputs).logits
    assert torch.equal(run.kept[real], torch.arange(real.shape[1]).expand_as(real)[real])
    assert torch.equal(logits[real], expected[real])


@pytest.mark.parametrize("pad", ["left", "right"])
def test_each_row_equals_its_single_run(llava, batches, pad):
    batch = batches["llava"]
    inputs = batch.inputs if pad == "left" else right_padded(batch.inputs)
    mask = inputs["attention_mask"].bool()
    with tokenprune.prune(llava, "fastv", keep=0.25, layer=2) as run, torch.no_grad():
        logits = llava(**inputs).logits
        together = run.samples
        kept = run.kept
        for b, alone in enumerate(llava_singles(inputs, batch.image_sizes)):
            single_logits = llava(**alone).logits[0]
            (single,) = run.samples
            offset = int((~mask[b]).sum()) if pad == "left" else 0
            assert torch.equal(together[b].kept_seq_index - offset, single.kept_seq_index)
            slots = kept[b] >= 0
            order = kept[b][slots] - offset
            expected = torch.zeros(mask.shape[1], single_logits.shape[-1])
            expected[run.kept[0]] = single_logits
            torch.testing.assert_close(logits[b][slots], expected[order], atol=1e-5, rtol=0)


def test_the_attention_cue_comes_from_the_last_real_token(llava, batches):
    inputs = right_padded(batches["llava"].inputs)
    record, pruner = recording_pruner({"attention"}, keep=0.5)
    with tokenprune.prune(llava, pruner, layer=2), torch.no_grad():
        llava(**inputs)
    together = record.cues.attention
    mask = inputs["attention_mask"].bool()
    for b in range(2):
        row = inputs["input_ids"][b][mask[b]][None]
        images = slice(0, 1) if b == 0 else slice(1, 3)
        alone = {"input_ids": row, "pixel_values": inputs["pixel_values"][images]}
        with tokenprune.prune(llava, pruner, layer=2), torch.no_grad():
            llava(**alone)
        n = record.cues.attention.shape[1]
        torch.testing.assert_close(together[b, :n], record.cues.attention[0], atol=1e-6, rtol=0)
