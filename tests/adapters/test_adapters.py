"""The public adapter API: lookup, plugins, batches, masks and errors."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import IMAGE_TOKEN_ID, make_batch
from transformers import LlamaConfig, LlamaForCausalLM

import tokenprune
from tokenprune import Layout, LayoutError, PluginError, UnsupportedModelError, adapters
from tokenprune.registry import unregister_plugin

sides = st.integers(16, 2000)
batches = st.lists(st.lists(st.tuples(sides, sides), max_size=2), min_size=1, max_size=3)
FAMILIES = ["llava", "llava_next", "internvl"]


def _same(a: Layout, b: Layout) -> bool:
    fields = ("coords", "regions", "region_shapes", "valid", "region_boxes", "region_images")
    return all(
        torch.equal(getattr(a, f).nan_to_num(-7.0), getattr(b, f).nan_to_num(-7.0)) for f in fields
    )


def test_builtin_adapters_are_registered():
    registry = tokenprune.registry.get_registry()
    builtin = {e.name for e in registry.entries("adapter") if e.plugin == "tokenprune.adapters"}
    assert builtin == {*FAMILIES, "qwen_vl", "llava_onevision"}
    assert set(FAMILIES) <= set(tokenprune.available("adapter"))


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_for_finds_the_family(family, request):
    model = request.getfixturevalue(family)
    assert adapters.adapter_for(model).name == family
    assert adapters.adapter_for(model.model).name == family  # the bare model too


@pytest.mark.parametrize("family", FAMILIES)
@given(sample_images=batches)
def test_batch_is_the_stack_of_its_samples(family, request, sample_images):
    model = request.getfixturevalue(family)
    batch = make_batch(model, sample_images, seed=1)
    together = adapters.layout(model, **batch.layout_inputs)
    assert together.num_valid().tolist() == batch.num_visual
    if not any(sample_images):
        assert together.num_tokens == 0 and together.batch_size == len(sample_images)
        return
    alone = [adapters.layout(model, **make_batch(model, [s], seed=2).layout_inputs) for s in sample_images]
    assert _same(together, Layout.stack(alone))


@pytest.mark.parametrize("family", FAMILIES)
def test_visual_token_mask_is_the_placeholders(family, request):
    model = request.getfixturevalue(family)
    batch = make_batch(model, [[(300, 500)], [], [(900, 200), (50, 60)]])
    mask = adapters.visual_token_mask(model, batch.inputs["input_ids"])
    assert mask.dtype == torch.bool and mask.shape == batch.inputs["input_ids"].shape
    assert torch.equal(mask, batch.inputs["input_ids"] == IMAGE_TOKEN_ID)
    assert mask.sum(dim=1).tolist() == batch.num_visual
    assert model.config.image_token_id == IMAGE_TOKEN_ID


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_inputs_give_an_empty_layout(family, request):
    model = request.getfixturevalue(family)
    batch = make_batch(model, [[], []])
    layout = adapters.layout(model, **batch.inputs)
    assert (layout.batch_size, layout.num_tokens) == (2, 0)


def test_unsupported_model_names_the_families_and_how_to_add_one():
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(UnsupportedModelError) as error:
        adapters.adapter_for(model)
    message = str(error.value)
    for needle in ("LlamaForCausalLM", "'llama'", "llava", "llava_next", "internvl", "hookimpl"):
        assert needle in message
    with pytest.raises(UnsupportedModelError):
        adapters.layout(object(), input_ids=torch.zeros(1, 3, dtype=torch.long))


def _fake_family_plugin(name: str, matches):
    class Fake(tokenprune.Adapter):
        description = "test family"

        @classmethod
        def matches(cls, model):
            return matches(model)

        def layout(self, **inputs):
            return Layout.grid(2, 3, batch=inputs["input_ids"].shape[0])

    Fake.name = name
    plugin = types.SimpleNamespace()

    @tokenprune.hookimpl
    def tokenprune_adapters():
        return [Fake]

    plugin.tokenprune_adapters = tokenprune_adapters
    return plugin


def test_a_plugin_adds_a_family():
    fake = types.SimpleNamespace(config=types.SimpleNamespace(model_type="fake_vlm"))
    tokenprune.register_plugin(_fake_family_plugin("fake", lambda m: m is fake), name="fake-family")
    try:
        assert adapters.adapter_for(fake).name == "fake"
        layout = adapters.layout(fake, input_ids=torch.zeros(2, 4, dtype=torch.long))
        assert layout.batch_size == 2 and layout.num_tokens == 6
    finally:
        unregister_plugin("fake-family")


def test_two_matching_adapters_raise(llava):
    plugin = _fake_family_plugin("llava_again", lambda m: m is llava)
    tokenprune.register_plugin(plugin, name="clashing-family")
    try:
        with pytest.raises(PluginError, match="'llava'.*'llava_again' \\(plugin 'clashing-family'\\)"):
            adapters.adapter_for(llava)
    finally:
        unregister_plugin("clashing-family")


def test_a_plugin_may_choose_the_adapter_itself(llava):
    class Chooser:
        @tokenprune.hookimpl(tryfirst=True)
        def tokenprune_adapter(self, model):
            if model is llava:
                return adapters.matching_adapter(llava.model)
            return None

    tokenprune.register_plugin(Chooser(), name="chooser")
    try:
        chosen = adapters.adapter_for(llava)
        assert chosen.name == "llava" and chosen.model is llava.model
    finally:
        unregister_plugin("chooser")


def test_adapters_must_be_classes():
    class Bad:
        @tokenprune.hookimpl
        def tokenprune_adapters(self):
            return [object()]

    with pytest.raises(PluginError, match="expected subclasses of tokenprune.Adapter"):
        tokenprune.register_plugin(Bad(), name="bad-adapter")


def test_missing_input_ids_raise(llava):
    with pytest.raises(LayoutError, match="input_ids: expected a \\(B, L\\) tensor"):
        adapters.layout(llava, inputs_embeds=torch.zeros(1, 3, 64))
    with pytest.raises(LayoutError, match="input_ids: expected shape \\(B, L\\), got \\(5,\\)"):
        adapters.layout(llava, input_ids=torch.zeros(5, dtype=torch.long))


def test_llava_token_count_must_be_whole_images(llava):
    batch = make_batch(llava, [[(336, 336)], [(336, 336)]])
    ids = batch.inputs["input_ids"].clone()
    ids[1, (ids[1] == IMAGE_TOKEN_ID).nonzero()[0]] = 5
    with pytest.raises(LayoutError, match="multiple of 576 .* got 575 in sample 1"):
        adapters.layout(llava, input_ids=ids)


def test_llava_next_needs_image_sizes(llava_next):
    batch = make_batch(llava_next, [[(500, 700)]])
    inputs = {k: v for k, v in batch.inputs.items() if k != "image_sizes"}
    with pytest.raises(LayoutError, match="image_sizes: expected the \\(height, width\\).*got None"):
        adapters.layout(llava_next, **inputs)


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        ([[700, 500]], "sample 0 has 2242 image tokens.*take \\[\\d+\\]"),
        ([[500, 700], [500, 700]], "image_sizes: expected 1 images .* got 2"),
        ([[500]], "image_sizes\\[0\\]: expected the \\(height, width\\)"),
        ([500, 700], "image_sizes\\[0\\]: .*got 500 \\(for a single image, pass \\[\\(height, width\\)\\]\\)"),
        (torch.tensor([500, 700]), "image_sizes: expected an integer tensor of shape \\(I, 2\\).*got torch.int64 \\(2,\\)"),
        (torch.tensor([[500.0, 700.0]]), "image_sizes: expected an integer tensor.*got torch.float32 \\(1, 2\\)"),
        (5, "image_sizes: expected an \\(I, 2\\) tensor or a sequence of \\(height, width\\).*got int"),
        ([(500.5, 700)], "image_sizes\\[0\\]: expected the \\(height, width\\) of a LLaVA-NeXT image, two ints >= 1"),
    ],
)
def test_llava_next_image_sizes_must_match_the_tokens(llava_next, sizes, match):
    batch = make_batch(llava_next, [[(500, 700)]])
    with pytest.raises(LayoutError, match=match):
        adapters.layout(llava_next, **{**batch.inputs, "image_sizes": sizes})


def test_llava_next_full_strategy_is_unsupported(llava_next):
    batch = make_batch(llava_next, [[(500, 700)]])
    llava_next.config.vision_feature_select_strategy = "full"
    try:
        with pytest.raises(UnsupportedModelError, match="vision_feature_select_strategy"):
            adapters.layout(llava_next, **batch.inputs)
    finally:
        llava_next.config.vision_feature_select_strategy = "default"


def test_llava_next_image_sizes_may_be_numpy(llava_next):
    batch = make_batch(llava_next, [[(500, 700)]])
    expected = adapters.layout(llava_next, **batch.inputs)
    for sizes in (np.array([[500, 700]]), [np.array([500, 700])], [(np.int64(500), np.int64(700))]):
        got = adapters.layout(llava_next, **{**batch.inputs, "image_sizes": sizes})
        assert torch.equal(got.coords.nan_to_num(-1), expected.coords.nan_to_num(-1))
