"""tokenprune.lmms.options: ``--model_args`` of ``--model tokenprune`` as lmms-eval parses
them (bool / int / float / str values), checked before any model is loaded."""

from __future__ import annotations

import re

import pytest

from tokenprune.errors import SpecError
from tokenprune.lmms.options import BASES, parse

BASE = {"base": "llava_hf", "pretrained": "PATH", "keep": 0.1}


def test_own_keys_are_split_off_and_the_rest_goes_to_the_base():
    options = parse({**BASE, "recipe": "adaptprune", "layer": 2, "device_map": "cpu", "dtype": "float32"})
    assert (options.base, options.spec, options.keep, options.layer) == ("llava_hf", "adaptprune", 0.1, 2)
    assert (options.positions, options.seed) == ("original", 0)
    assert options.base_args == {"pretrained": "PATH", "device_map": "cpu", "dtype": "float32"}


def test_layer_defaults_to_2_and_takes_input():
    assert parse({**BASE, "recipe": "fastv"}).layer == 2
    options = parse({**BASE, "recipe": "visionzip", "layer": "input", "positions": "compact"})
    assert (options.layer, options.positions) == ("input", "compact")


def test_a_quoted_spec_keeps_its_commas_and_loses_its_quotes():
    # lmms-eval 0.7 keeps a quoted value whole, quotes included
    spec = '"attention | gaussian(sigma=12) | soft_nms(radius=5, spatial=1.5)"'
    assert parse({**BASE, "spec": spec}).spec == "attention | gaussian(sigma=12) | soft_nms(radius=5, spatial=1.5)"
    assert parse({**BASE, "spec": "'attention | top_k'"}).spec == "attention | top_k"
    assert parse({**BASE, "spec": "attention | top_k"}).spec == "attention | top_k"


def test_a_spec_file_holds_any_spec(tmp_path):
    path = tmp_path / "spec.txt"
    path.write_text("attention | gaussian(sigma=12)\n  | soft_nms(radius=5, spatial=1.5, similarity=0.05)\n")
    options = parse({**BASE, "spec_file": str(path)})
    assert options.spec == "attention | gaussian(sigma=12) | soft_nms(radius=5, spatial=1.5, similarity=0.05)"


def test_keep_as_lmms_eval_types_it():
    assert parse({**BASE, "recipe": "fastv", "keep": 57}).keep == 57  # "57": a count
    assert parse({**BASE, "recipe": "fastv", "keep": 1.0}).keep == 1.0  # "1.0": everything


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"base": "llava"}, f"base: expected one of {', '.join(sorted(BASES))}, got 'llava'"),
        ({"base": None}, "base: expected one of"),
        ({}, "recipe / spec / spec_file: expected exactly one of them"),
        ({"recipe": "fastv", "spec": "attention | top_k"}, "got ['recipe', 'spec']"),
        ({"recipe": "adaptprun"}, "adaptprun"),
        ({"recipe": "attention | top_k"}, "recipe: expected a recipe name such as 'adaptprune' (use spec= for a spec string)"),
        ({"spec": '"attention | top_k'}, "spec: expected a string in matching quotes"),
        ({"spec": "attention | nonsense(x=1)"}, "nonsense"),
        ({"spec_file": "/no/such/file"}, "spec_file: expected a readable file holding a spec string, got '/no/such/file'"),
        ({"recipe": "fastv", "keep": 0.0}, "keep: expected a fraction in (0, 1] (or a whole count such as 57), got 0.0"),
        ({"recipe": "fastv", "keep": 1.5}, "keep: expected a fraction in (0, 1]"),
        ({"recipe": "fastv", "keep": 0}, "keep: expected a count >= 1"),
        ({"recipe": "fastv", "keep": True}, "keep: expected a fraction in (0, 1] such as 0.1 or a count >= 1 such as 57, got True"),
        ({"recipe": "fastv", "keep": "most"}, "got 'most'"),
        ({"recipe": "fastv", "keep": None}, "keep: expected a fraction in (0, 1] such as 0.1 or a count >= 1 such as 57, got nothing"),
        ({"recipe": "fastv", "layer": -1}, "layer: expected a decoder layer index >= 0 or 'input', got -1"),
        ({"recipe": "fastv", "layer": 2.5}, "layer: expected a decoder layer index >= 0 or 'input', got 2.5"),
        ({"recipe": "fastv", "positions": "renumber"}, "positions: expected 'original' or 'compact', got 'renumber'"),
        ({"recipe": "fastv", "seed": -3}, "seed: expected an int >= 0, got -3"),
        ({"recipe": "fastv", "pretrained": None}, "pretrained: expected the checkpoint"),
    ],
)
def test_bad_arguments_are_refused_with_argument_expected_and_got(changes, message):
    args = {**BASE, **changes}
    args = {k: v for k, v in args.items() if v is not None or k == "keep"}
    if changes.get("keep", 0.1) is None:
        args.pop("keep")
    with pytest.raises(SpecError, match=re.escape(message)):
        parse(args)


def test_the_plugin_modules_import_without_lmms_eval():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['lmms_eval'] = None\n"
        "import tokenprune.lmms, tokenprune.lmms.options, tokenprune.lmms.batching, "
        "tokenprune.lmms.entry, tokenprune.lmms.shapes_pope\n"
        "try:\n    import tokenprune.lmms.model\nexcept ImportError:\n    print('model needs lmms-eval')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "model needs lmms-eval"
