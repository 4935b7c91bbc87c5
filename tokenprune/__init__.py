"""tokenprune: training-free visual-token pruning for vision-language models.

    >>> import torch, tokenprune
    >>> layout = tokenprune.Layout.grid(24, 24)
    >>> cues = tokenprune.Cues(layout, attention=torch.rand(1, 576), keys=torch.randn(1, 576, 64))
    >>> selection = tokenprune.pruner("adaptprune", keep=0.1)(cues)
    >>> selection.indices.shape
    torch.Size([1, 57])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenprune.adapters.base import Adapter
from tokenprune.capture.base import CueSource
from tokenprune.compile import compile_enabled, set_compile
from tokenprune.cues import Cues
from tokenprune.errors import (
    CueError,
    LayoutError,
    PictureError,
    PluginError,
    SpecError,
    TokenpruneError,
    UnsupportedModelError,
)
from tokenprune.hookspecs import hookimpl
from tokenprune.layout import Layout
from tokenprune.pruner import Pruner, pruner
from tokenprune.registry import (
    Recipe,
    Strategy,
    available,
    register_plugin,
    reload,
    stages_in,
    unregister_plugin,
)
from tokenprune.selection import Selection
from tokenprune.strategies.base import Decay, DecayContext, Score, Selector, Stage, Transform

if TYPE_CHECKING:
    from tokenprune.engine import prune

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "CueError",
    "CueSource",
    "Cues",
    "Decay",
    "DecayContext",
    "Layout",
    "LayoutError",
    "PictureError",
    "PluginError",
    "Pruner",
    "Recipe",
    "Score",
    "Selection",
    "Selector",
    "SpecError",
    "Stage",
    "Strategy",
    "TokenpruneError",
    "Transform",
    "UnsupportedModelError",
    "available",
    "compile_enabled",
    "hookimpl",
    "prune",
    "pruner",
    "register_plugin",
    "reload",
    "set_compile",
    "stages_in",
    "unregister_plugin",
]


def __getattr__(name: str) -> Any:
    # The engine imports transformers; load it only when a user asks for it.
    if name == "prune":
        from tokenprune.engine import prune

        return prune
    raise AttributeError(f"module 'tokenprune' has no attribute {name!r}")
