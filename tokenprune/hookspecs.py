"""The whole plugin surface of tokenprune, declared once.

Built-in strategies, recipes, adapters and cue sources register through these same
hooks. A third-party plugin is a module with ``@tokenprune.hookimpl`` functions, exposed as a
setuptools entry point of group ``tokenprune`` (in its ``pyproject.toml``):

```toml
[project.entry-points.tokenprune]
my_plugin = "my_package.plugin"
```

After ``pip install``, its names work in spec strings and in `tokenprune.available()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from tokenprune.adapters.base import Adapter
    from tokenprune.capture.base import CueSource
    from tokenprune.registry import Recipe, Strategy
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
def tokenprune_adapters() -> list[type[Adapter]]:
    """Called once when the registry is (re)built.

    Return the model families this plugin provides: subclasses of `tokenprune.Adapter`
    (classes, not instances), each with a unique ``name``, a ``description``, a
    ``matches(model)`` classmethod and a ``layout(**inputs)`` method, plus overrides of
    the defaults that do not fit the family (language-model stack, key projection,
    position ids, ``generate()``'s hidden inputs, extra per-token tensors; see
    `tokenprune.adapters.base`). They are listed by ``tokenprune.available("adapter")``
    and chosen for a model by `tokenprune_adapter`.
    """


@hookspec(firstresult=True)
def tokenprune_adapter(model: Any) -> Adapter | None:
    """Called when tokenprune needs the adapter of ``model`` (``prune()``,
    ``tokenprune.adapters.layout``); the first non-None result wins.

    Return an `Adapter` instance bound to ``model``, or None to let other plugins
    decide. The built-in implementation runs last (``trylast``): it instantiates the one
    registered adapter class whose ``matches(model)`` is True (and raises `PluginError`
    if several match). Implement this hook (e.g. with ``tryfirst=True``) to choose
    between families yourself, say by a checkpoint's name.
    """


@hookspec
def tokenprune_cues() -> list[type[CueSource]]:
    """Called once when the registry is (re)built.

    Return the cue sources this plugin provides: subclasses of `tokenprune.CueSource`
    (classes), each naming the cues it provides (``names``, unique across plugins; these
    are the names strategies list in ``requires`` and read with ``cues.require``), the
    prune points where they exist (``check(point, adapter)``) and how they are captured
    (``on_attention`` for the attention of the layer before the point, ``capture`` at the
    point, ``open`` / ``close`` for hooks elsewhere, e.g. the vision tower). See
    `tokenprune.capture.base` for the order of calls. Built-ins: ``attention``,
    ``text_attention`` / ``self_attention`` (FitPrune), ``hidden``, ``keys``,
    ``cls_attention`` (the vision tower's CLS row, VisionZip), ``text_embeddings`` /
    ``text_mask`` (the prompt's text tokens).
    """
