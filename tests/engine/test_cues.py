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


def cls_attention_by_hand(model, pixel_values):
    """``(I, P)``: softmax of the CLS query against every key in the vision layer whose
    output LLaVA uses (vision_feature_layer -2), mean over heads, from q_proj / k_proj of
    that layer's attention input."""
    layers = model.model.vision_tower.encoder.layers
    attention = layers[len(layers) - 2].self_attn
    seen = {}

    def hook(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]

    handle = attention.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model.model.vision_tower(pixel_values)
    finally:
        handle.remove()
    x = seen["x"]
    heads, width = attention.num_heads, attention.head_dim
    with torch.no_grad():
        q = attention.q_proj(x).view(x.shape[0], -1, heads, width).transpose(1, 2)
        k = attention.k_proj(x).view(x.shape[0], -1, heads, width).transpose(1, 2)
    scores = (q[:, :, :1] @ k.transpose(-1, -2)).squeeze(2) * attention.scale
    return scores.softmax(dim=-1).mean(dim=1)


@pytest.mark.parametrize("layer", ["input", 2])
def test_cls_attention_is_the_towers_cls_row(llava, batches, layer):
    inputs = batches["llava"].inputs
    record, pruner = recording_pruner({"cls_attention"}, keep=0.5)
    before = llava.config.vision_config._attn_implementation
    with tokenprune.prune(llava, pruner, layer=layer) as run, torch.no_grad():
        assert llava.config.vision_config._attn_implementation != before  # tapped, not eager
        llava(**inputs)
    assert llava.config.vision_config._attn_implementation == before  # restored
    expected = cls_attention_by_hand(llava, inputs["pixel_values"])[:, 1:]  # CLS dropped
    got = record.cues.require("cls_attention", by="test")
    per_sample = [expected[0], expected[1:].reshape(-1)]
    for b, values in enumerate(per_sample):
        n = values.numel()
        assert (run.seq_index[b, :n] >= 0).all()
        torch.testing.assert_close(got[b, :n], values, atol=1e-6, rtol=0)


def test_cls_attention_is_refused_without_a_cls_tower(models):
    _, pruner = recording_pruner({"cls_attention"}, keep=0.5)
    with pytest.raises(tokenprune.CueError, match="cls_attention: needs a vision tower"):
        tokenprune.prune(models["internvl"], pruner, layer="input")


def test_text_embeddings_are_the_prompts_text_tokens(llava, batches):
    from .reference import language_model_inputs

    inputs = batches["llava"].inputs
    record, pruner = recording_pruner({"text_embeddings", "text_mask"}, keep=0.5)
    with tokenprune.prune(llava, pruner, layer=2), torch.no_grad():
        llava(**inputs)
    embeds = language_model_inputs(llava, inputs)["inputs_embeds"]
    text = inputs["attention_mask"].bool() & (inputs["input_ids"] != llava.config.image_token_id)
    got, mask = record.cues.text_embeddings, record.cues.text_mask
    for b in range(2):
        expected = embeds[b][text[b]]
        assert mask[b].sum() == expected.shape[0]
        assert torch.equal(got[b][mask[b]], expected)
        assert (got[b][~mask[b]] == 0).all()


def reference_raters(embeds, visual, text):
    """SparseVLM section 3.2, one sample, written out: the text tokens after the image are
    rated by the softmax (over text tokens) of each visual token's dot products with them,
    averaged over the visual tokens; raters rate above the mean."""
    first_visual = int(visual.nonzero()[0])
    after = [i for i in range(len(text)) if text[i] and i > first_visual]
    rows = []
    for v in visual.nonzero().flatten().tolist():
        dots = torch.stack([embeds[v].double() @ embeds[t].double() for t in after])
        rows.append(torch.softmax(dots, dim=0))
    relevance = torch.stack(rows).mean(dim=0)
    raters = [t for t, r in zip(after, relevance) if r > relevance.mean()]
    return raters or after  # all rate alike (e.g. one text token): every one is a rater


@pytest.mark.parametrize("layer", [1, 3])
def test_rater_attention_is_the_raters_mean_eager_attention(llava, llava_eager, layer):
    from tiny_models import make_batch

    from .reference import language_model_inputs

    # longer text runs than the shared batches, so that raters are a strict subset
    inputs = make_batch(llava, [[(336, 336)], [(336, 336), (336, 336)]], text_len=12, seed=4).inputs
    record, pruner = recording_pruner({"rater_attention"})
    with tokenprune.prune(llava, pruner, layer=layer), torch.no_grad():
        llava(**inputs)
    cue = record.cues.require("rater_attention", "test")
    with torch.no_grad():
        weights = llava_eager(**inputs, output_attentions=True).attentions[layer - 1]  # (B, H, L, L)
    embeds = language_model_inputs(llava, inputs)["inputs_embeds"]
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    visual = (ids == llava.config.image_token_id) & mask
    subsets = 0
    for b, where in enumerate(visual_positions(llava, ids)):
        raters = reference_raters(embeds[b], visual[b], mask[b] & ~visual[b])
        subsets += len(raters) < int((mask[b] & ~visual[b] & (torch.arange(ids.shape[1]) > where[0])).sum())
        expected = weights[b][:, raters].mean(dim=(0, 1))[where]
        torch.testing.assert_close(cue[b, : where.numel()], expected, atol=1e-6, rtol=0)
    assert subsets > 0, "no sample had a strict subset of raters: the test would not see the choice"


def test_rater_attention_at_a_second_stage_uses_the_same_raters(llava, batches):
    """Text tokens survive every stage: a second stage averages the same raters' attention,
    over the first stage's survivors."""
    inputs = batches["llava"].inputs
    record, pruner = recording_pruner({"rater_attention"}, keep=0.25)
    first = tokenprune.pruner("sparsevlm", keep=0.5)
    with tokenprune.prune(llava, layer={1: first, 3: pruner}) as run, torch.no_grad():
        llava(**inputs)
    cue = record.cues.require("rater_attention", "test")
    valid = record.cues.layout.valid
    survivors = run.records[0].samples
    for b in range(ids_rows := inputs["input_ids"].shape[0]):
        assert valid[b].sum() == survivors[b].kept_seq_index.numel()
        assert torch.isfinite(cue[b]).all() and (cue[b][valid[b]] > 0).all()
        assert (cue[b][~valid[b]] == 0).all()
    assert ids_rows == 2
