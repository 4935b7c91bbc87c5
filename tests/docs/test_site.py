"""The documentation site: tables match the registry, pictures exist and are current,
benchmark placeholders are in place, and ``mkdocs build --strict`` passes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image, ImageChops
from script_modules import script_module

from tokenprune.registry import get_registry

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _builtin_recipes() -> dict[str, str]:
    return {
        e.name: e.spec for e in get_registry().entries("recipe") if e.plugin == "tokenprune.strategies"
    }


def test_recipe_table_matches_the_registry():
    text = (DOCS / "strategies.md").read_text().split("## Recipes", 1)[1]
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", text, re.M))
    documented = {name: spec.replace("\\|", "|") for name, spec in rows.items()}
    assert documented == _builtin_recipes()


def test_every_builtin_strategy_is_documented():
    text = (DOCS / "strategies.md").read_text()
    for kind in ("score", "transform", "selector", "decay"):
        for entry in get_registry().entries(kind):
            if entry.plugin == "tokenprune.strategies":
                assert f"`{entry.name}" in text, f"{kind} {entry.name} missing from strategies.md"


def test_every_picture_link_resolves_and_every_picture_is_used():
    linked = set()
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (DOCS / target).is_file(), f"{page.name}: missing picture {target}"
            linked.add((DOCS / target).resolve())
    on_disk = {p.resolve() for p in (DOCS / "img").glob("*.png")}
    assert on_disk - linked == set(), "pictures in docs/img that no page shows"


def test_pictures_are_small():
    assert sum(p.stat().st_size for p in (DOCS / "img").glob("*.png")) < 400_000


@pytest.mark.usefixtures("eager_selectors")
def test_committed_pictures_are_what_pictures_py_draws(tmp_path):
    with script_module(DOCS / "pictures.py", "docs_pictures") as pictures:
        written = pictures.draw(tmp_path)
    assert {p.name for p in written} == {p.name for p in (DOCS / "img").glob("*.png")}
    for path in written:
        with Image.open(path) as new, Image.open(DOCS / "img" / path.name) as old:
            assert new.size == old.size, path.name
            diff = ImageChops.difference(new.convert("RGB"), old.convert("RGB"))
            assert diff.getbbox() is None, f"{path.name} is stale: run python docs/pictures.py"


def test_benchmark_placeholders_are_marked():
    text = (DOCS / "benchmarks.md").read_text()
    for name in ("selectors", "prefill"):
        assert f"<!-- benchmark:{name} -->" in text
        assert f"<!-- /benchmark:{name} -->" in text


def test_snippets_point_at_existing_files():
    for page in DOCS.glob("*.md"):
        for target in re.findall(r'--8<-- "([^"]+)"', page.read_text()):
            assert (ROOT / target).is_file(), f"{page.name}: snippet {target} does not exist"


def test_mkdocs_build_strict(built_site):
    assert (built_site / "strategies" / "index.html").is_file()
