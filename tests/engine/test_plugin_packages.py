"""Third-party plugins used through ``prune()``, each a real package with an entry point:
a model family tokenprune does not ship (VipLlava, tests/family_pkg) and a new cue with a
strategy that reads it (``values`` / ``value_norm``, tests/plugin_pkg).

Each package is pip-installed into a temporary directory put on ``sys.path`` (CI's nox
session also installs both; the shared development environment stays untouched)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import IMAGE_TOKEN_ID, _clip_vision, _llama_text

import tokenprune

from .reference import keep_mask, masked_reference

TESTS = Path(__file__).resolve().parents[1]
PACKAGES = {"tokenprune_vipllava": TESTS / "family_pkg", "tokenprune_example_plugin": TESTS / "plugin_pkg"}


def _purge() -> None:
    for name in PACKAGES:
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Both plugin packages installed (by pip, with their entry points) and loaded."""
    target = tmp_path_factory.mktemp("site")
    for source in PACKAGES.values():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--target", str(target), str(source)],
            check=True,
        )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    _purge()
    tokenprune.reload()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        importlib.invalidate_caches()
        _purge()
        tokenprune.reload()


@pytest.fixture(scope="module")
def vipllava():
    from transformers import VipLlavaConfig, VipLlavaForConditionalGeneration

    torch.manual_seed(0)
    config = VipLlavaConfig(
        vision_config=_clip_vision(),
        text_config=_llama_text(),
        image_token_index=IMAGE_TOKEN_ID,
        vision_feature_layers=[-2, -1],
    )
    return VipLlavaForConditionalGeneration(config).eval()


def _batch(model, images_per_sample=(1, 2), seed=3):
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for images in images_per_sample:
        text = torch.randint(3, 110, (3,), generator=generator).tolist()
        rows.append([1, *text[:2], *([IMAGE_TOKEN_ID] * 576 * images), text[2]])
    length = max(map(len, rows))
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, length - len(row):] = torch.tensor(row)
        mask[b, length - len(row):] = 1
    pixels = torch.randn(sum(images_per_sample), 3, 336, 336, generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


GREEDY = {"max_new_tokens": 3, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}


def test_a_family_plugin_is_found_through_its_entry_point(installed, vipllava):
    assert "vipllava" in tokenprune.available("adapter")
    adapter = tokenprune.adapters.adapter_for(vipllava)
    assert adapter.name == "vipllava" and type(adapter).__module__ == "tokenprune_vipllava"


def test_family_plugin_keep_one_is_bitwise(installed, vipllava):
    inputs = _batch(vipllava)
    with torch.no_grad():
        expected = vipllava.generate(**inputs, **GREEDY)
    for layer in (2, "input"):
        pruner = "fastv" if layer == 2 else "random | top_k"
        with tokenprune.prune(vipllava, pruner, keep=1.0, layer=layer) as run, torch.no_grad():
            out = vipllava.generate(**inputs, **GREEDY)
        assert run.selection.counts.tolist() == [576, 1152]
        assert torch.equal(out.sequences, expected.sequences)
        assert torch.equal(torch.stack(out.logits), torch.stack(expected.logits))


def test_family_plugin_pruned_equals_the_masked_reference(installed, vipllava):
    inputs = _batch(vipllava)
    with tokenprune.prune(vipllava, "adaptprune", keep=0.1, layer=2) as run, torch.no_grad():
        out = vipllava.generate(**inputs, **GREEDY)
    assert run.selection.counts.tolist() == [57, 115]
    keep = keep_mask(inputs["input_ids"], run)
    with masked_reference(vipllava, 2, keep), torch.no_grad():
        expected = vipllava.generate(**inputs, **GREEDY)
    assert torch.equal(out.sequences, expected.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(expected.logits), atol=1e-5, rtol=0)


def test_a_cue_plugin_adds_a_cue_and_a_strategy_reading_it(installed, llava, batches):
    inputs = batches["llava"].inputs
    assert "values" in tokenprune.available("cue")
    seen = {}

    def on_layer(module, args, kwargs):
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]

    handle = llava.model.language_model.layers[2].register_forward_pre_hook(on_layer, with_kwargs=True)
    try:
        with tokenprune.prune(llava, "value_norm | top_k", keep=0.25, layer=2) as run, torch.no_grad():
            llava(**inputs)
    finally:
        handle.remove()
    # By hand: layer 2's v_proj of its input at every visual token, top 25% by norm.
    values = llava.model.language_model.layers[2].self_attn.v_proj(seen["hidden"])
    norms = values.norm(dim=-1)
    for b, sample in enumerate(run.samples):
        visual = (inputs["input_ids"][b] == IMAGE_TOKEN_ID).nonzero().flatten()
        top = visual[norms[b, visual].argsort(descending=True, stable=True)[: visual.numel() // 4]]
        assert torch.equal(sample.kept_seq_index, top.sort().values)


def test_a_cue_plugin_refuses_points_without_its_cue(installed, llava):
    with pytest.raises(tokenprune.CueError, match="values: needs a decoder layer"):
        tokenprune.prune(llava, "value_norm | top_k", keep=0.25, layer="input")
