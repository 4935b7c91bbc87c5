"""The README's library example and the package docstring run as written."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import tokenprune

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quick_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    standalone = [b for b in blocks if "model.generate" not in b]
    assert standalone, "README lost its runnable example"
    for block in standalone:
        exec(compile(block, str(README), "exec"), {})
    assert "torch.Size([1, 57])" in capsys.readouterr().out


def test_package_docstring_example():
    result = doctest.testmod(tokenprune, verbose=False)
    assert result.attempted >= 4 and result.failed == 0
