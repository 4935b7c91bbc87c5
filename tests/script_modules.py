"""The repository's scripts (``benchmarks/*.py``, ``docs/pictures.py``) imported as
modules by the tests that check them."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

__all__ = ["ROOT", "script_module"]

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def script_module(path: Path, name: str) -> Iterator[ModuleType]:
    """The script at ``path`` executed as module ``name``, registered in ``sys.modules``
    while the block runs (its dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]
