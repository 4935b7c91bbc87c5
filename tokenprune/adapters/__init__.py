"""Model adapters: every fact about a model family, one `Adapter` subclass per family.

    >>> layout = tokenprune.adapters.layout(model, **inputs)   # doctest: +SKIP

One module per family (`llava`, `llava_next`, `internvl`), each an `Adapter` subclass
registered through the ``tokenprune_adapters`` plugin hook; `adapter_for` chooses one
through the ``tokenprune_adapter`` hook. Third-party plugins add families the same way.
"""

from __future__ import annotations

from typing import Any

from tokenprune.adapters.base import Adapter, TextStack
from tokenprune.errors import PluginError, UnsupportedModelError
from tokenprune.layout import Layout
from tokenprune.registry import get_registry

__all__ = ["Adapter", "TextStack", "adapter_for", "layout", "matching_adapter", "visual_token_mask"]

_HOW_TO_ADD = (
    "to add a family, register a plugin: subclass tokenprune.Adapter and return the class from "
    "`@tokenprune.hookimpl def tokenprune_adapters(): return [MyFamily]` (entry point group "
    "'tokenprune', or tokenprune.register_plugin(module) in a session)"
)


def matching_adapter(model: Any) -> Adapter | None:
    """An instance of the one registered adapter class whose ``matches(model)`` is True,
    or None if none matches.

    Raises:
        PluginError: several adapter classes match; names them and their plugins.
    """
    entries = get_registry().entries("adapter")
    found = [entry for entry in entries if entry.cls.matches(model)]
    if len(found) > 1:
        kind = getattr(getattr(model, "config", None), "model_type", None)
        clash = ", ".join(f"'{entry.name}' (plugin '{entry.plugin}')" for entry in found)
        raise PluginError(
            f"model: expected exactly one adapter to match {type(model).__name__} "
            f"(config.model_type={kind!r}), got {len(found)}: {clash}; uninstall or narrow one"
        )
    return found[0].cls(model) if found else None


def adapter_for(model: Any) -> Adapter:
    """The `Adapter` of ``model``, chosen by the ``tokenprune_adapter`` hook.

    Raises:
        UnsupportedModelError: no plugin claims the model; names the supported families.
        PluginError: several adapters match, or a plugin returned something else than an
            `Adapter` instance.
    """
    registry = get_registry()
    found = registry.manager.hook.tokenprune_adapter(model=model)
    if found is None:
        kind = getattr(getattr(model, "config", None), "model_type", None)
        supported = ", ".join(registry.names("adapter")) or "none"
        raise UnsupportedModelError(
            f"model: expected a model of a supported family ({supported}), got "
            f"{type(model).__name__} (config.model_type={kind!r}); {_HOW_TO_ADD}"
        )
    if not isinstance(found, Adapter):
        raise PluginError(
            f"tokenprune_adapter: expected a tokenprune.Adapter instance (or None), got {found!r}"
        )
    return found


def layout(model: Any, **model_inputs: Any) -> Layout:
    """Where every visual token of ``model_inputs["input_ids"] (B, L)`` sits.

    Args:
        model: a supported transformers VLM (see `adapter_for`).
        **model_inputs: the inputs as passed to ``model.generate`` / ``model(...)``
            (``input_ids``, ``attention_mask``, ``pixel_values``, ``image_sizes`` for
            LLaVA-NeXT), plus family extras (InternVL: ``image_sizes`` of the original
            images, ``min_patches``, ``max_patches``); unused keys are ignored.

    Returns:
        A `Layout` with N = the most visual tokens in a sample (sample ``b``'s visual
        tokens in ``input_ids`` order, padded with ``valid=False``; N = 0 without any).
    """
    return adapter_for(model).layout(**model_inputs)


def visual_token_mask(model: Any, input_ids: Any) -> Any:
    """``(B, L)`` bool: the visual-token (candidate) positions of ``input_ids (B, L)``,
    as ``model``'s adapter defines them."""
    return adapter_for(model).visual_mask(input_ids)
