"""The methods users compare against, inside real (tiny) models: every family and prune
point where their cues exist, padded batches, composition, and VisionZip's merges equal
to the plain model run on merged embeddings built by hand."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, llava_singles

import tokenprune
from tokenprune import CueError
from tokenprune.schedules import pyramid

from .reference import language_model_inputs

#: (spec, point): each method at the point its paper uses, plus compositions.
METHODS = [
    ("divprune", "input"),
    ("cdpruner", "input"),
    ("visionzip", "input"),
    ("dart", 1),
    ("sparsevlm", 1),
    ("vision_attention | gaussian | soft_nms", 1),
    ("vision_attention | gaussian | soft_nms", "input"),
]
#: Small, so the greedy selectors take few steps on LLaVA-NeXT's ~2,000 tokens.
KEEP = 0.05


def _has_cls_tower(model) -> bool:
    return tokenprune.adapters.adapter_for(model).vision_cls_attention() is not None


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("spec", "point"), METHODS)
def test_each_method_prunes_a_padded_batch(models, batches, family, spec, point):
    model, batch = models[family], batches[family]
    needs_cls = "vision" in tokenprune.pruner(spec, keep=KEEP).spec
    if needs_cls and not _has_cls_tower(model):
        with pytest.raises(CueError, match="cls_attention"):
            tokenprune.prune(model, spec, keep=KEEP, layer=point)
        return
    with tokenprune.prune(model, spec, keep=KEEP, layer=point) as run, torch.no_grad():
        logits = model(**batch.inputs).logits
    assert torch.isfinite(logits).all()
    assert run.selection.counts.tolist() == [max(1, int(n * KEEP)) for n in batch.num_visual]


@pytest.mark.parametrize("spec", ["divprune", "cdpruner", "visionzip"])
def test_batch_equals_single_runs_at_the_input(models, batches, spec):
    model, batch = models["llava"], batches["llava"]
    inputs = batch.inputs
    mask = inputs["attention_mask"].bool()
    with tokenprune.prune(model, spec, keep=KEEP, layer="input") as run, torch.no_grad():
        together = model(**inputs).logits[:, -1]
        kept = run.samples
        for b, alone in enumerate(llava_singles(inputs, batch.image_sizes)):
            single = model(**alone).logits[0, -1]
            assert torch.equal(run.samples[0].kept_seq_index + int((~mask[b]).sum()), kept[b].kept_seq_index)
            torch.testing.assert_close(together[b], single, atol=1e-5, rtol=0)


def test_visionzip_equals_the_plain_model_on_merged_embeddings(models, batches):
    model, inputs = models["llava"], batches["llava"].inputs
    with tokenprune.prune(model, "visionzip", keep=KEEP, layer="input") as run, torch.no_grad():
        logits = model(**inputs).logits
    (record,) = run.records
    selection = record.selection
    assert selection.merge_into is not None
    embeds = language_model_inputs(model, inputs)["inputs_embeds"]
    merged = embeds.clone()
    for b in range(embeds.shape[0]):
        for t in selection.indices[b].tolist():
            if t < 0:
                continue
            group = [j for j in range(selection.mask.shape[1]) if int(selection.merge_into[b, j]) == t]
            merged[b, record.seq_index[b, t]] = sum(
                float(selection.merge_weight[b, j]) * embeds[b, record.seq_index[b, j]] for j in group
            )
    kept = run.kept
    slots = kept >= 0
    short = merged.gather(1, kept.clamp(min=0)[..., None].expand(-1, -1, merged.shape[-1]))
    mask = inputs["attention_mask"].bool()
    positions = (mask.long().cumsum(1) - 1).masked_fill(~mask, 1).gather(1, kept.clamp(min=0)).masked_fill(~slots, 1)
    with torch.no_grad():
        reference = model(inputs_embeds=short, attention_mask=slots.long(), position_ids=positions).logits
    torch.testing.assert_close(logits[slots], reference[slots], atol=1e-5, rtol=0)
    # The contextual tokens really changed: some kept slot differs from its embedding.
    assert not torch.equal(merged, embeds)


def test_pyramid_schedule_runs_its_stages(models, batches):
    model, batch = models["llava"], batches["llava"]
    layers = model.config.text_config.num_hidden_layers
    schedule = pyramid(layers, stages=min(4, layers))
    with tokenprune.prune(model, layer=schedule) as run, torch.no_grad():
        model(**batch.inputs)
    assert [r.point for r in run.records] == sorted(schedule)
    for record, (_, keep) in zip(run.records, (schedule[p] for p in sorted(schedule))):
        assert record.selection.counts.tolist() == [max(1, int(n * keep)) for n in batch.num_visual]
