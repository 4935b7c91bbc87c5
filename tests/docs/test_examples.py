"""Every ```python block of docs/*.md runs, so the examples cannot rot.

The blocks of one page run in order in one namespace (like a notebook), in a temporary
working directory. A block right after ``<!-- skip: reason -->`` is not run (it needs a
downloaded checkpoint); pages whose blocks include mkdocs snippets (``--8<--``) are
covered by `test_site.py` instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"(?P<skip><!-- skip:[^>]*-->\s*\n)?```python[^\n]*\n(?P<code>.*?)```", re.S)


def python_blocks(page: Path) -> list[tuple[int, str, bool]]:
    """(line, code, skipped) of every ```python block of ``page``."""
    text = page.read_text()
    return [
        (text.count("\n", 0, m.start("code")) + 1, m.group("code"), m.group("skip") is not None)
        for m in FENCE.finditer(text)
    ]


PAGES = sorted(DOCS.glob("*.md"))


def test_the_docs_have_examples_to_run():
    runnable = [b for page in PAGES for b in python_blocks(page) if not b[2] and "--8<--" not in b[1]]
    assert len(runnable) >= 10
    skipped = [b for page in PAGES for b in python_blocks(page) if b[2]]
    assert len(skipped) <= 2, "only examples that need a downloaded checkpoint may be skipped"


pytestmark = pytest.mark.usefixtures("eager_selectors")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_examples_of_page_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for line, code, skipped in python_blocks(page):
        if skipped or "--8<--" in code:
            continue
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{page.name}, block at line {line} failed: {exc!r}") from exc
