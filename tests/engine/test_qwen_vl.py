"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL and LLaVA-OneVision through the engine: images and
videos in one padded batch; keep=1.0 is bitwise the unpruned model, a pruned run equals
the same model with the dropped tokens masked (original M-RoPE positions), a batch equals
its samples run alone, at decoder layers (Qwen3-VL: inside its deepstack layers too) and
at ``layer="input"``."""

from __future__ import annotations

import pytest
import torch
from tiny_models import QWEN_FAMILIES, VIDEO_TOKEN_ID, make_batch, tiny_model

import tokenprune
from tokenprune.errors import UnsupportedModelError

from .reference import hidden_norm_pruner, masked_reference

pytestmark = pytest.mark.usefixtures("eager_selectors")

FAMILIES = (*QWEN_FAMILIES, "llava_onevision")
#: One image with a video, and a smaller image alone (left padding, two grid shapes).
VISUALS = {
    **{f: [[(100, 150), (3, 60, 90)], [(56, 84)]] for f in QWEN_FAMILIES},
    "llava_onevision": [[(500, 700)], [(2, 64, 64)]],
}
STEPS = 3


@pytest.fixture(scope="module")
def models():
    return {family: tiny_model(family) for family in FAMILIES}


@pytest.fixture(scope="module")
def batches(models):
    return {family: make_batch(models[family], VISUALS[family], seed=1) for family in FAMILIES}


def greedy(model, inputs, **kwargs):
    with torch.no_grad():
        options = {"max_new_tokens": STEPS, "do_sample": False, "output_logits": True}
        return model.generate(**inputs, return_dict_in_generate=True, **{**options, **kwargs})


def keep_mask(model, input_ids, run):
    """``(B, L)`` bool: text tokens and the visual tokens ``run`` kept."""
    config = model.config
    keep = (input_ids != config.image_token_id) & (input_ids != VIDEO_TOKEN_ID)
    for b, sample in enumerate(run.records[-1].samples):
        keep[b, sample.kept_seq_index] = True
    return keep


@pytest.mark.parametrize(
    ("family", "layer"), [*((f, 2) for f in FAMILIES), ("qwen3_vl", "input"), ("llava_onevision", "input")]
)
def test_keep_1_is_bitwise(models, batches, family, layer):
    model, inputs = models[family], batches[family].inputs
    recipe = "fastv" if layer != "input" else hidden_norm_pruner(1.0)
    with torch.no_grad():
        logits = model(**inputs).logits
    expected = greedy(model, inputs)
    with tokenprune.prune(model, recipe, keep=1.0, layer=layer) as run:
        with torch.no_grad():
            pruned = model(**inputs).logits
        out = greedy(model, inputs)
    assert run.selection.counts.tolist() == batches[family].num_visual
    assert torch.equal(pruned, logits)
    assert torch.equal(out.sequences, expected.sequences)
    assert torch.equal(torch.stack(out.logits), torch.stack(expected.logits))


@pytest.mark.parametrize(
    ("family", "layer"),
    [("qwen2_vl", 2), ("qwen2_vl", "input"), ("qwen2_5_vl", 2), ("qwen2_5_vl", "input"), ("qwen3_vl", 1),
     ("qwen3_vl", 2), ("qwen3_vl", "input"), ("llava_onevision", 2)],
)
def test_pruned_equals_masked_reference(models, batches, family, layer):
    model, inputs = models[family], batches[family].inputs
    recipe = "adaptprune_video" if layer != "input" else hidden_norm_pruner(0.3)
    with tokenprune.prune(model, recipe, keep=0.3, layer=layer) as run:
        with torch.no_grad():
            logits = model(**inputs).logits  # (B, L', V)
        kept = run.kept
        out = greedy(model, inputs)
    keep = keep_mask(model, inputs["input_ids"], run)
    with masked_reference(model, 0 if layer == "input" else layer, keep), torch.no_grad():
        reference = model(**inputs).logits  # (B, L, V)
        expected = greedy(model, inputs)
    slots = kept >= 0
    gathered = reference.gather(1, kept.clamp(min=0).unsqueeze(-1).expand(-1, -1, reference.shape[-1]))
    torch.testing.assert_close(logits[slots], gathered[slots], atol=1e-5, rtol=0)
    assert torch.equal(out.sequences, expected.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(expected.logits), atol=1e-5, rtol=0)


def _single(batch, b):
    """Sample ``b`` of a Qwen-VL `make_batch` batch alone, without padding."""
    inputs = batch.inputs
    mask = inputs["attention_mask"][b].bool()
    out = {key: inputs[key][b][mask][None] for key in ("input_ids", "attention_mask", "mm_token_type_ids")}
    for kind, pixels, size in (("image", "pixel_values", 2), ("video", "pixel_values_videos", 3)):
        grids = inputs.get(f"{kind}_grid_thw")
        before = sum(len(v) == size for sample in batch.image_sizes[:b] for v in sample)
        mine = sum(len(v) == size for v in batch.image_sizes[b])
        if grids is None or not mine:
            continue
        rows = grids.prod(-1).tolist()
        start = sum(rows[:before])
        out[f"{kind}_grid_thw"] = grids[before : before + mine]
        out[pixels] = inputs[pixels][start : start + sum(rows[before : before + mine])]
    return out


def _single_onevision(batch, b):
    """Sample ``b`` of a LLaVA-OneVision `make_batch` batch alone, without padding: its
    images (one ``pixel_values`` row each) and videos (one ``pixel_values_videos`` row each)."""
    inputs = batch.inputs
    mask = inputs["attention_mask"][b].bool()
    out = {key: inputs[key][b][mask][None] for key in ("input_ids", "attention_mask")}
    images = [[len(v) == 2 for v in sample] for sample in batch.image_sizes]
    first_image = sum(map(sum, images[:b]))
    first_video = sum(len(s) - sum(s) for s in images[:b])
    count = sum(images[b])
    out["batch_num_images"] = torch.tensor([count])
    if count:
        out["pixel_values"] = inputs["pixel_values"][first_image : first_image + count]
        out["image_sizes"] = inputs["image_sizes"][first_image : first_image + count]
    if len(images[b]) > count:
        out["pixel_values_videos"] = inputs["pixel_values_videos"][first_video : first_video + len(images[b]) - count]
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_equals_single_runs(models, batches, family):
    model, batch = models[family], batches[family]
    pad = (~batch.inputs["attention_mask"].bool()).sum(1)
    with tokenprune.prune(model, "adaptprune_video", keep=0.3, layer=2):
        together = greedy(model, batch.inputs)
        for b in range(len(VISUALS[family])):
            single = _single_onevision if family == "llava_onevision" else _single
            alone = greedy(model, single(batch, b))
            assert torch.equal(together.sequences[b][pad[b] :], alone.sequences[0])
            torch.testing.assert_close(
                torch.stack(together.logits)[:, b], torch.stack(alone.logits)[:, 0], atol=1e-4, rtol=0
            )


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_beams_and_sampling_at_keep_1_are_bitwise(models, batches, family):
    model, inputs = models[family], batches[family].inputs
    beams = {"num_beams": 2, "num_return_sequences": 2, "output_logits": False, "output_scores": True}
    sample = {"do_sample": True, "top_k": 20, "temperature": 1.5}
    for kwargs in (beams, sample):
        torch.manual_seed(3)
        expected = greedy(model, inputs, **kwargs)
        with tokenprune.prune(model, "adaptprune_video", keep=1.0, layer=2) as run:
            torch.manual_seed(3)
            out = greedy(model, inputs, **kwargs)
        assert run.prefills == 1
        assert torch.equal(out.sequences, expected.sequences)


def test_beams_with_pruning_decode(models, batches):
    """Pruned beam search runs (B * beams rows, grids recovered from generate's encoder calls)."""
    model, inputs = models["qwen3_vl"], batches["qwen3_vl"].inputs
    with tokenprune.prune(model, "adaptprune_video", keep=0.3, layer=2) as run:
        out = greedy(model, inputs, num_beams=3, output_logits=False)
    assert run.selection.indices.shape[0] == 2 * 3
    assert out.sequences.shape[0] == 2


def test_compact_positions_are_refused_with_m_rope(models, batches):
    model, inputs = models["qwen2_vl"], batches["qwen2_vl"].inputs
    pruner = hidden_norm_pruner(0.3)
    with (
        pytest.raises(UnsupportedModelError, match="compact"),
        tokenprune.prune(model, pruner, keep=0.3, layer="input", positions="compact"),
        torch.no_grad(),
    ):
        model(**inputs)


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_right_padded_rows_equal_single_runs(models, batches, family):
    """A right-padded Qwen batch (M-RoPE positions from the attention mask) gives each row
    the logits of its sample run alone at its real positions; keep=1.0 is bitwise the
    unpruned right-padded forward."""
    from .test_padding import right_padded

    model, batch = models[family], batches[family]
    inputs = right_padded(batch.inputs)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        unpruned = model(**inputs).logits
    with tokenprune.prune(model, "fastv", keep=1.0, layer=2), torch.no_grad():
        assert torch.equal(model(**inputs).logits[real], unpruned[real])
    with tokenprune.prune(model, "adaptprune_video", keep=0.3, layer=2) as run, torch.no_grad():
        logits = model(**inputs).logits  # (B, L', V)
        kept = run.kept
        for b in range(len(VISUALS[family])):
            alone = model(**_single(batch, b)).logits[0]  # (L'_b, V)
            slots = kept[b] >= 0
            assert slots.sum() == alone.shape[0]
            assert not slots[alone.shape[0] :].any(), "kept tokens stay left-aligned"
            torch.testing.assert_close(logits[b][slots], alone, atol=1e-4, rtol=0)
