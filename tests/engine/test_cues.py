"""The cues the engine captures equal the eager model's own attention weights and a
direct call of the pruning layer's ``k_proj`` on its input."""

from __future__ import annotations

import pytest
import torch

import tokenprune

from .reference import recording_pruner

ALL_CUES = {"attention", "keys", "hidden", "text_attention", "self_attention"}


def visual_positions(model, input_ids):
    """Per sample, the sequence indices of its visual tokens."""
    visual = input_ids == model.config.image_token_id
    return [row.nonzero().flatten() for row in visual]


def layer_input(model, inputs, layer):
    """``(B, L, H)`` hidden states entering decoder layer ``layer`` of an unpatched run."""
    seen = {}

    def hook(module, args, kwargs):
        seen["hidden"] = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = model.model.language_model.layers[layer].register_forward_pre_hook(
        hook, with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen["hidden"]


@pytest.mark.parametrize("layer", [1, 3])
def test_cues_match_eager_attention_and_k_proj(llava, llava_eager, batches, layer):
    inputs = batches["llava"].inputs
    record, pruner = recording_pruner(ALL_CUES)
    # The sdpa model: the cues come from the tapped attention function, not the weights.
    with tokenprune.prune(llava, pruner, layer=layer), torch.no_grad():
        llava(**inputs)
    cues = record.cues
    with torch.no_grad():
        weights = llava_eager(**inputs, output_attentions=True).attentions[
            layer - 1
        ]  # (B, H, L, L)
    hidden = layer_input(llava, inputs, layer)
    k_proj = llava.model.language_model.layers[layer].self_attn.k_proj
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    visual = ids == llava.config.image_token_id
    text = mask & ~visual
    for b, where in enumerate(visual_positions(llava, ids)):
        n = where.numel()
        assert cues.layout.valid[b].sum() == n
        last = weights[b, :, -1].mean(0)
        torch.testing.assert_close(cues.attention[b, :n], last[where], atol=1e-6, rtol=0)
        text_rows = weights[b][:, text[b]].mean(dim=(0, 1))
        torch.testing.assert_close(cues.text_attention[b, :n], text_rows[where], atol=1e-6, rtol=0)
        self_rows = weights[b][:, visual[b]].mean(dim=(0, 1))
        torch.testing.assert_close(cues.self_attention[b, :n], self_rows[where], atol=1e-6, rtol=0)
        assert torch.equal(cues.hidden[b, :n], hidden[b, where])
        torch.testing.assert_close(cues.keys[b, :n], k_proj(hidden[b, where]), atol=1e-6, rtol=0)
        # Padding candidates carry zeros, not another sample's values.
        assert not cues.layout.valid[b, n:].any()
        assert (cues.attention[b, n:] == 0).all()
    assert cues.keys.shape[-1] == k_proj.out_features


def test_attention_cue_of_llava_next_and_internvl(models, batches):
    for family, layer in (("llava_next", 2), ("internvl", 1)):
        model, inputs = models[family], batches[family].inputs
        record, pruner = recording_pruner({"attention"})
        with tokenprune.prune(model, pruner, layer=layer), torch.no_grad():
            model(**inputs)
        original = model.config.text_config._attn_implementation
        model.set_attn_implementation({"text_config": "eager"})
        try:
            with torch.no_grad():
                weights = model(**inputs, output_attentions=True).attentions[layer - 1]
        finally:
            model.set_attn_implementation({"text_config": original})
        for b, where in enumerate(visual_positions(model, inputs["input_ids"])):
            expected = weights[b, :, -1].mean(0)[where]
            torch.testing.assert_close(
                record.cues.attention[b, : where.numel()], expected, atol=1e-6, rtol=0
            )
