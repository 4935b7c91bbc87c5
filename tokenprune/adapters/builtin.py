"""Built-in adapters, registered through the same hook as third-party ones."""

from __future__ import annotations

from tokenprune.hookspecs import hookimpl
from tokenprune.registry import Adapter


@hookimpl
def tokenprune_adapters() -> list[Adapter]:
    return []
