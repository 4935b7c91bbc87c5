"""The whole plugin surface of tokenprune, declared once.

Built-in strategies, recipes and adapters register through these same hooks. A
third-party plugin is a module with ``@tokenprune.hookimpl`` functions, exposed as a
setuptools entry point of group ``tokenprune`` (in its ``pyproject.toml``):

```toml
[project.entry-points.tokenprune]
my_plugin = "my_package.plugin"
```

After ``pip install``, its names work in spec strings and in `tokenprune.available()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from tokenprune.registry import Adapter, Recipe, Strategy
    from tokenprune.strategies.base import Stage

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "tokenprune"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Decorator for a plugin's hook functions (``@tokenprune.hookimpl``), pluggy's
``HookimplMarker`` for the project ``tokenprune``: it accepts pluggy's options
(``tryfirst``, ``trylast``, ``wrapper``)."""


@hookspec
def tokenprune_strategies() -> list[Strategy | Recipe | type[Stage]]:
    """Called once when the registry is (re)built.

    Return the strategies and recipes this plugin provides: stage classes (subclasses
    of `tokenprune.Score`, `Transform`, `Selector` or `Decay` with a ``name``; kind and
    description come from the class, see `tokenprune.Stage`; `tokenprune.stages_in`
    lists a module's), `tokenprune.Strategy` entries for factories that are not stage
    classes, and `tokenprune.Recipe` entries (a named spec string). Names must be unique
    per kind across all plugins; a clash raises `PluginError` naming both plugins.
    """


@hookspec
def tokenprune_adapters() -> list[Adapter]:
    """Called once when the registry is (re)built.

    Return the model adapters this plugin provides: `tokenprune.Adapter` entries that
    recognise a model (``matches(model) -> bool``) and lay out its visual tokens
    (``layout(model, **model_inputs) -> Layout``). Exactly one adapter must match a model.
    """
