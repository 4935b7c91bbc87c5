"""The transformers names the tests use, under the spelling of the installed version.

tokenprune is tested on transformers 5.17 and 5.24 (``nox -s tests`` / ``nox -s compat``).
Between them the KV cache argument and output field were renamed from ``past_key_values``
to ``cache`` (5.24 still accepts the old argument, deprecated; 5.17 silently ignores
``cache=``), and ``gradient_checkpointing_enable`` became ``activation_checkpointing_enable``
(5.24 keeps the old name as a deprecated alias). Each helper asks the model or output what
it offers instead of comparing version strings.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

__all__ = ["CHECKPOINT_REPLAYS_HOOKS", "cache_arg", "cache_kwargs", "cache_of", "checkpointing"]

#: True where a checkpointed decoder layer runs its forward hooks inside the checkpoint, so
#: backward's recompute calls them again (5.17 overrides ``__call__``; 5.24 wraps only
#: ``forward``, the hooks run once, outside).
CHECKPOINT_REPLAYS_HOOKS = "__call__" in vars(GradientCheckpointingLayer)


def cache_arg(model: nn.Module) -> str:
    """The keyword ``model.forward`` takes the KV cache under: ``"cache"`` or
    ``"past_key_values"``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_kwargs(model: nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model(**inputs, **cache_kwargs(model, cache))`` and
    ``model.generate(...)``."""
    return {cache_arg(model): cache}


def cache_of(output: Any) -> Any:
    """The KV cache of a model output (``output.cache`` or ``output.past_key_values``)."""
    return output["cache"] if "cache" in output else output["past_key_values"]


@contextmanager
def checkpointing(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with activation (gradient) checkpointing on, off again afterwards; both
    versions default to non-reentrant checkpointing."""
    if hasattr(model, "activation_checkpointing_enable"):
        enable, disable = model.activation_checkpointing_enable, model.activation_checkpointing_disable
    else:
        enable, disable = model.gradient_checkpointing_enable, model.gradient_checkpointing_disable
    enable()
    try:
        yield model
    finally:
        disable()
