"""`tokenprune demo` end to end on a smaller text model: the real model, engine and pictures."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from tokenprune import demo
from tokenprune.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo")
    out, err = io.StringIO(), io.StringIO()
    status = main(
        ["demo", "--model", "llava", "--out", str(out_dir), "--recipes", "fastv,adaptprune,last", "--keep", "0.1",
         "--layer", "2", "--repeats", "1", "--new-tokens", "3", "--text-layers", "4",
         "--hidden", "64"],
        stdout=out,
        stderr=err,
    )
    return status, out.getvalue(), err.getvalue(), out_dir


def test_demo_prints_the_table_and_the_notice(demo_run):
    status, out, err, _ = demo_run
    assert status == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and
            line.split()[0] in {"unpruned", "fastv", "adaptprune", "last"}}
    assert set(rows) == {"unpruned", "fastv", "adaptprune", "last"}
    assert "576/576" in rows["unpruned"]
    prompt = 1 + 5 + 576 + 10
    # Unpruned: every layer caches the prompt and 2 of the 3 new tokens.
    assert f"{prompt + 2} x4" in rows["unpruned"]
    for name in ("fastv", "adaptprune", "last"):
        assert "57/576" in rows[name]
        # Layers 0-1 keep everything; layers 2-3 keep 57 visual + 16 text + 2 new tokens.
        assert f"{prompt + 2} x2, {57 + 16 + 2} x2" in rows[name]
        assert re.search(r"\d+\.\d\dx", rows[name])
    assert "random weights" in out and "meaningless" in out


def test_demo_writes_a_picture_per_recipe(demo_run):
    _, _, _, out_dir = demo_run
    for name in ("fastv", "adaptprune", "last", "gaussian", "input", "selections"):
        with Image.open(out_dir / f"{name}.png") as picture:
            assert picture.width >= 336
    assert "meaningless" in (out_dir / "table.txt").read_text()


def test_last_recipe_keeps_the_bottom_rows_in_the_picture_data(demo_run):
    # The demo's Result carries the engine's selection: 'last' keeps tokens 519..575.
    results, _ = demo.run(
        demo.DemoConfig(recipes=("last",), repeats=1, new_tokens=1, text_layers=3, hidden=64, model="llava")
    )
    selection = results[1].selection
    assert selection.indices[0].tolist() == list(range(576 - 57, 576))


def test_demo_config_checks_its_arguments():
    with pytest.raises(demo.SpecError, match="layer"):
        demo.DemoConfig(layer=4, text_layers=4, model="llava")
    with pytest.raises(demo.SpecError, match="layer: expected a layer below the shapes model's 4"):
        demo.DemoConfig(layer=4)
    with pytest.raises(demo.SpecError, match="questions"):
        demo.DemoConfig(questions=-1)
    with pytest.raises(demo.SpecError, match="hidden"):
        demo.DemoConfig(hidden=60)
    with pytest.raises(demo.SpecError, match="keep: expected at most the number of valid candidates, got keep=1000"):
        demo.DemoConfig(keep=1000)
    with pytest.raises(demo.SpecError, match="layer: recipe 'fastv' needs the attention .* expected layer >= 1, got 0"):
        demo.DemoConfig(layer=0)
    assert demo.DemoConfig(layer=0, recipes=("last", "random")).layer == 0  # cue-free recipes may prune at 0


def test_demo_on_qwen2_5_vl_geometry(tmp_path):
    """`--model qwen2_5_vl`: a 28 x 28 patch grid merged to 196 tokens (14 x 14), the same
    table and pictures."""
    out, err = io.StringIO(), io.StringIO()
    status = main(
        ["demo", "--model", "qwen2_5_vl", "--out", str(tmp_path), "--recipes", "fastv",
         "--keep", "0.1", "--layer", "2", "--repeats", "1", "--new-tokens", "2",
         "--text-layers", "3", "--hidden", "64", "--no-progress"],
        stdout=out,
        stderr=err,
    )
    assert status == 0, err
    text = out.getvalue()
    assert "Qwen2.5-VL-7B geometry" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()}
    assert "196/196" in rows["unpruned"]
    assert "19/196" in rows["fastv"]
    prompt = 1 + 5 + 1 + 196 + 1 + 10
    # Layers 0-1 keep everything; layer 2 keeps 19 visual + 18 text tokens, + 1 new token.
    assert f"{prompt + 1} x2, {19 + 18 + 1}" in rows["fastv"]
    with Image.open(tmp_path / "fastv.png") as picture:
        assert picture.width >= 196


def test_demo_on_the_trained_shapes_model(tmp_path):
    """The default model: the trained shapes model answers held-out questions (an accuracy
    column), and its attention is drawn over the scene."""
    out, err = io.StringIO(), io.StringIO()
    status = main(
        ["demo", "--out", str(tmp_path), "--recipes", "fastv,last", "--keep", "0.1",
         "--repeats", "1", "--new-tokens", "1", "--questions", "8", "--no-progress"],
        stdout=out,
        stderr=err,
    )
    assert status == 0, err
    text = out.getvalue()
    assert "trained shapes model" in text and "8 held-out questions" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("recipe"))
    assert "accuracy" in header.split()
    rows = {line.split()[0]: line.split() for line in lines if line.split()}
    assert rows["unpruned"][1] == "576/576" and rows["fastv"][1] == "57/576"
    for name in ("unpruned", "fastv", "last"):
        assert re.fullmatch(r"\d+\.\d%", rows[name][2])
    # the committed model answers these 8 held-out questions right (benchmark: 99.3% on 1,200)
    assert rows["unpruned"][2] == "100.0%"
    for name in ("attention", "fastv", "last", "input", "selections"):
        with Image.open(tmp_path / f"{name}.png") as picture:
            assert picture.width >= 336
