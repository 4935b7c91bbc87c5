"""The ``prune`` block: what it exposes, what it leaves behind, and its errors."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_batch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import tokenprune
from tokenprune.errors import CueError, SpecError, TokenpruneError, UnsupportedModelError

from .reference import Record


def warm(model, inputs):
    """transformers installs its own output-capturing hooks on first use; let it first."""
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=2)


def snapshot(model):
    """Everything the engine may touch, by identity."""
    hooks = {
        name: (
            dict(m._forward_pre_hooks),
            dict(m._forward_hooks),
            dict(m._forward_pre_hooks_with_kwargs),
            dict(m._forward_hooks_always_called),
        )
        for name, m in model.named_modules()
    }
    return {
        "modules": [(name, id(m)) for name, m in model.named_modules()],
        "forward": [
            (name, type(m).forward, "forward" in vars(m)) for name, m in model.named_modules()
        ],
        "instance": sorted(vars(model.base_model)),
        "hooks": hooks,
        "attn": [
            (name, getattr(m, "config", None) and m.config._attn_implementation)
            for name, m in model.named_modules()
        ],
        "functions": (sorted(ALL_ATTENTION_FUNCTIONS), sorted(ALL_MASK_ATTENTION_FUNCTIONS)),
    }


def test_leaving_restores_the_model_even_after_an_exception(llava, batches):
    warm(llava, batches["llava"].inputs)
    before = snapshot(llava)
    with (
        pytest.raises(RuntimeError, match="boom"),
        tokenprune.prune(llava, "adaptprune", keep=0.1, layer=2) as run,
    ):
        # Inside: a tapped attention function, hooks and the image-size recorder are installed.
        assert snapshot(llava) != before
        name = llava.config.text_config._attn_implementation
        assert name in ALL_ATTENTION_FUNCTIONS and name in ALL_MASK_ATTENTION_FUNCTIONS
        with torch.no_grad():
            llava.generate(**batches["llava"].inputs, max_new_tokens=2)
        assert run.prefills == 1
        raise RuntimeError("boom")
    assert snapshot(llava) == before
    assert llava.config.text_config._attn_implementation == "sdpa"
    assert llava.model.vision_tower.config._attn_implementation == "sdpa"


class Broken(Record):
    def __call__(self, cues):
        raise ValueError("pruner failed")


def test_an_error_inside_the_prefill_restores_too(llava, batches):
    warm(llava, batches["llava"].inputs)
    before = snapshot(llava)
    selector = tokenprune.pruner("fastv", keep=0.5).selector
    pruner = tokenprune.Pruner(Broken(frozenset({"attention"})), (), selector, keep=0.5)
    with (
        pytest.raises(ValueError, match="pruner failed"),
        tokenprune.prune(llava, pruner, layer=2),
        torch.no_grad(),
    ):
        llava(**batches["llava"].inputs)
    assert snapshot(llava) == before
    with torch.no_grad():
        llava(**batches["llava"].inputs)  # still works unpatched


def test_cue_free_pruner_leaves_the_attention_setting_alone(llava, batches):
    generator = torch.Generator().manual_seed(0)
    with tokenprune.prune(llava, "random", keep=0.5, layer=0, generator=generator) as run:
        assert llava.config.text_config._attn_implementation == "sdpa"
        with torch.no_grad():
            llava(**batches["llava"].inputs)
    assert run.selection.counts.tolist() == [288, 576]


def test_selections_expose_each_sample(llava, batches):
    batch = batches["llava"]
    with tokenprune.prune(llava, "fastv", keep=10, layer=1) as run, torch.no_grad():
        llava(**batch.inputs)
    samples = run.samples
    assert len(samples) == 2
    for b, sample in enumerate(samples):
        assert isinstance(sample, tokenprune.engine.PrunedSample)
        assert sample.selection.mask.shape == (1, run.layout.num_tokens)
        assert sample.layout.batch_size == 1
        assert int(sample.layout.valid.sum()) == batch.num_visual[b]
        assert sample.kept_seq_index.numel() == 10
        assert (sample.seq_index[: batch.num_visual[b]] >= 0).all()
        assert (sample.seq_index[batch.num_visual[b] :] == -1).all()
    # Sample 1 has two images: two 24 x 24 regions, one budget over both.
    assert samples[1].layout.region_shapes.tolist() == [[[24, 24], [24, 24]]]


def test_vtw_drops_every_visual_token(llava, batches):
    batch = batches["llava"]
    with tokenprune.prune(llava, "vtw", layer=2) as run, torch.no_grad():
        out = llava.generate(**batch.inputs, max_new_tokens=2, do_sample=False)
    assert run.selection.counts.tolist() == [0, 0]
    text = (batch.inputs["attention_mask"].bool() & (batch.inputs["input_ids"] != 120)).sum(1)
    assert run.kept.shape[1] == int(text.max())
    assert out.shape[1] == batch.inputs["input_ids"].shape[1] + 2


def test_fitprune_runs_in_generate(models, batches):
    model = models["llava_next"]
    with tokenprune.prune(model, "fitprune", keep=0.2, layer=2) as run, torch.no_grad():
        model.generate(**batches["llava_next"].inputs, max_new_tokens=2, do_sample=False)
    assert run.selection.counts.tolist() == [int(n * 0.2) for n in batches["llava_next"].num_visual]


@pytest.mark.parametrize("layer", [-1, 4, 2.0, True, None])
def test_layer_out_of_range(llava, layer):
    with (
        pytest.raises(SpecError, match=r"layer: expected 'input' or an int in \[0, 3\]"),
        tokenprune.prune(llava, "fastv", keep=0.1, layer=layer),
    ):
        pass


def test_numpy_integer_layers_are_ints(llava, batches):
    np = pytest.importorskip("numpy")
    for layer in (np.int64(2), np.int32(2)):
        with tokenprune.prune(llava, "fastv", keep=0.1, layer=layer) as run, torch.no_grad():
            llava(**batches["llava"].inputs)
        assert run.layer == 2 and type(run.layer) is int
        assert run.selection.counts.tolist() == [57, 115]


@pytest.mark.parametrize("generator", [123, "seed", torch.Generator().manual_seed(0).get_state()])
def test_a_generator_that_is_not_one_is_refused_when_the_block_is_built(llava, generator):
    with pytest.raises(SpecError, match=r"generator: expected a torch.Generator or None, got"):
        tokenprune.prune(llava, "random", keep=0.1, generator=generator)


def test_attention_pruner_at_layer_zero(llava):
    with (
        pytest.raises(CueError, match="attention.*layer=0"),
        tokenprune.prune(llava, "fastv", keep=0.1, layer=0),
    ):
        pass


def test_pruner_needing_an_unknown_cue(llava):
    record = Record(frozenset({"gradients"}))
    pruner = tokenprune.Pruner(record, (), tokenprune.pruner("fastv", keep=1).selector, keep=1)
    with (
        pytest.raises(CueError, match="gradients.*which no cue source provides"),
        tokenprune.prune(llava, pruner),
    ):
        pass


def test_keys_without_k_proj(llava):
    attention = llava.model.language_model.layers[2].self_attn
    k_proj = attention.k_proj
    del attention.k_proj
    try:
        with (
            pytest.raises(CueError, match="keys.*k_proj"),
            tokenprune.prune(llava, "adaptprune", keep=0.1, layer=2),
        ):
            pass
    finally:
        attention.k_proj = k_proj


def test_unsupported_model():
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    model = LlamaForCausalLM(config)
    with (
        pytest.raises(UnsupportedModelError, match="llava"),
        tokenprune.prune(model, "fastv", keep=0.1),
    ):
        pass


def test_bad_keep_and_spec(llava):
    with pytest.raises(SpecError, match="keep"), tokenprune.prune(llava, "fastv", keep=1.5):
        pass
    with pytest.raises(SpecError), tokenprune.prune(llava, "no_such_recipe", keep=0.5):
        pass


def test_nested_blocks_on_one_model_are_refused(llava):
    before = snapshot(llava)
    with (
        tokenprune.prune(llava, "fastv", keep=0.5),
        pytest.raises(TokenpruneError, match="already"),
        tokenprune.prune(llava, "fastv", keep=0.5),
    ):
        pass
    assert snapshot(llava) == before


def test_inputs_embeds_without_images_pass(llava):
    batch = make_batch(llava, [[]], seed=2)
    embeds = llava.get_input_embeddings()(batch.inputs["input_ids"])
    with torch.no_grad():
        expected = llava(inputs_embeds=embeds, attention_mask=batch.inputs["attention_mask"]).logits
        with tokenprune.prune(llava, "fastv", keep=0.5) as run:
            got = llava(inputs_embeds=embeds, attention_mask=batch.inputs["attention_mask"]).logits
    assert run.prefills == 0
    assert torch.equal(got, expected)
