"""Built-in strategies and recipes, registered through the public hook."""

from __future__ import annotations

from tokenprune.hookspecs import hookimpl


@hookimpl
def tokenprune_strategies() -> list:
    return []
