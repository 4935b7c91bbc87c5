"""The `tokenprune` command line: help, list, select round trips and one-line errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tokenprune
from tokenprune import viz
from tokenprune.cli import main
from tokenprune.registry import KINDS, get_registry

pytestmark = pytest.mark.usefixtures("eager_selectors")


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_python_m_help_runs_in_a_subprocess():
    done = subprocess.run(
        [sys.executable, "-m", "tokenprune", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for command in ("demo", "list", "select"):
        assert command in done.stdout


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("demo", ["--out", "--keep", "--recipes", "--layer", "--seed", "--no-progress"]),
        ("select", ["--recipe", "--keep", "--grid", "--out", "--picture", "--image", "--sample"]),
        ("list", ["--kind"]),
    ],
)
def test_every_command_explains_its_options(command, options):
    status, out, _ = run(command, "--help")
    assert status == 0
    for option in options:
        assert option in out


def test_list_shows_every_registered_name_with_kind_and_plugin():
    status, out, _ = run("list")
    assert status == 0
    lines = out.splitlines()
    registry = get_registry()
    for kind in KINDS:
        for entry in registry.entries(kind):
            row = [line for line in lines if line.split()[:2] == [kind, entry.name]]
            assert len(row) == 1, (kind, entry.name)
            assert entry.plugin in row[0] and entry.description in row[0]
    assert len(lines) == 1 + sum(len(registry.entries(k)) for k in KINDS)


def test_list_one_kind():
    status, out, _ = run("list", "--kind", "decay")
    assert status == 0
    assert {line.split()[1] for line in out.splitlines()[1:]} == set(get_registry().names("decay"))


def _cues(batch: int = 2) -> tokenprune.Cues:
    g = torch.Generator().manual_seed(0)
    layout = tokenprune.Layout.regions_of([(6, 6), (4, 5)], batch=batch, separators=True)
    n = layout.num_tokens
    return tokenprune.Cues(
        layout,
        attention=torch.rand(batch, n, generator=g),
        keys=torch.randn(batch, n, 8, generator=g),
    )


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("out_name", ["selection.json", "selection.pt"])
def test_select_round_trip_matches_the_pruner(tmp_path, suffix, out_name):
    cues = _cues()
    path = viz.save_cues(tmp_path / f"cues{suffix}", cues)
    status, out, err = run("select", str(path), "--recipe", "adaptprune", "--keep", "0.2",
                           "--out", str(tmp_path / out_name), "--sample", "1")
    assert status == 0, err
    expected = tokenprune.pruner("adaptprune", keep=0.2)(cues)
    if out_name.endswith(".json"):
        samples = json.loads((tmp_path / out_name).read_text())["samples"]
        assert [s["indices"] for s in samples] == [
            [i for i in row if i >= 0] for row in expected.indices.tolist()
        ]
    else:
        saved = torch.load(tmp_path / out_name)
        assert torch.equal(saved["mask"], expected.mask)
        assert torch.equal(saved["indices"], expected.indices)
    assert (tmp_path / "selection.png").is_file()
    assert "kept per sample" in out


def test_select_with_grid_and_image(tmp_path):
    torch.save({"attention": torch.rand(1, 576)}, tmp_path / "attention.pt")
    viz.synthetic_image().save(tmp_path / "image.png")
    status, _out, err = run(
        "select", str(tmp_path / "attention.pt"), "--grid", "24x24", "--recipe",
        "attention | gaussian | top_k", "--keep", "57", "--image", str(tmp_path / "image.png"),
        "--picture", str(tmp_path / "picture.png"), "--out", str(tmp_path / "s.json"),
    )
    assert status == 0, err
    samples = json.loads((tmp_path / "s.json").read_text())["samples"]
    assert len(samples[0]["indices"]) == 57
    assert (tmp_path / "picture.png").is_file()


def test_select_random_recipes_follow_the_seed(tmp_path):
    path = viz.save_cues(tmp_path / "c.pt", _cues(batch=1))
    picks = []
    for seed in ("1", "1", "2"):
        status, _, err = run("select", str(path), "--recipe", "random", "--seed", seed,
                             "--out", str(tmp_path / f"s{len(picks)}.json"))
        assert status == 0, err
        picks.append(json.loads((tmp_path / f"s{len(picks)}.json").read_text())["samples"])
    assert picks[0] == picks[1] and picks[0] != picks[2]


def _bad_files(tmp: Path) -> dict[str, Path]:
    torch.save({"attention": torch.rand(1, 576)}, tmp / "no_layout.pt")
    torch.save({"attention": torch.rand(1, 10), "atention": torch.rand(1, 10)}, tmp / "typo.pt")
    torch.save([1, 2, 3], tmp / "list.pt")
    torch.save({"attention": [0.1, 0.2]}, tmp / "not_tensor.pt")
    (tmp / "garbage.pt").write_bytes(b"not a torch file")
    (tmp / "cues.txt").write_text("attention")
    viz.save_cues(tmp / "good.pt", _cues(batch=1))
    return {p.stem: p for p in tmp.iterdir()}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["demo", "--keep", "0"], "--keep"),
        (["demo", "--keep", "1.5"], "--keep"),
        (["demo", "--keep", "lots"], "--keep"),
        (["demo", "--recipes", "fastvv"], "did you mean 'fastv'"),
        (["demo", "--layer", "9", "--text-layers", "4"], "layer"),
        (["demo", "--recipes", "fastv,fastv"], "once"),
        (["select", "{missing}"], "not found"),
        (["select", "{no_layout}"], "--grid"),
        (["select", "{no_layout}", "--grid", "20x20"], "grid"),
        (["select", "{no_layout}", "--grid", "24by24"], "--grid"),
        (["select", "{typo}"], "atention"),
        (["select", "{list}"], "dict"),
        (["select", "{garbage}"], "readable"),
        (["select", "{cues}"], ".pt or .safetensors"),
        (["select", "{good}", "--grid", "6x6"], "grid"),
        (["select", "{good}", "--recipe", "attention | nope"], "nope"),
        (["select", "{good}", "--keep", "1000"], "keep"),
        (["select", "{good}", "--sample", "3"], "--sample"),
        (["select", "{good}", "--image", "{missing}"], "--image"),
        (["select", "{good}", "--out", "{cues}"], ".json"),
        (["select", "{good}", "--picture", "{cues}"], ".png"),
        (["select", "{not_tensor}"], "got 'attention' -> list"),
        (["select", "{good}", "--out", "{missing}/s.json"], "--out: expected a file in an existing directory"),
        (["select", "{good}", "--picture", "{missing}/p.png"], "--picture: expected a file in an existing directory"),
        (["demo", "--out", "{cues}"], "--out: expected a directory (new or existing)"),
        (["demo", "--out", "{cues}/sub"], "is a file"),
        (["frobnicate"], "invalid choice"),
        ([], "COMMAND"),
    ],
)
def test_user_mistakes_print_one_line_and_exit_2(tmp_path, argv, needle):
    files = {name: str(path) for name, path in _bad_files(tmp_path).items()}
    files["missing"] = str(tmp_path / "missing.pt")
    status, _out, err = run(*[a.format(**files) for a in argv])
    assert status == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("tokenprune"), err
    assert "Traceback" not in err
    assert needle in err, err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc (unwritable even for root)")
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["demo", "--out", "/proc/tokenprune-test/out"], "--out: expected a directory we can create or write, got '/proc/tokenprune-test/out'"),
        (["select", "{good}", "--out", "/proc/self/s.json"], "--out: expected a writable file, got '/proc/self/s.json'"),
    ],
)
def test_an_unwritable_out_fails_before_the_work(tmp_path, monkeypatch, argv, needle):
    # Permission bits allow these paths to root; only trying to write tells.
    from tokenprune import demo

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before --out was checked")

    monkeypatch.setattr(demo, "run", no_work)
    files = {name: str(path) for name, path in _bad_files(tmp_path).items()}
    status, _out, err = run(*[a.format(**files) for a in argv])
    assert status == 2, err
    assert needle in err, err
