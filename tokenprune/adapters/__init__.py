"""Model adapters: the `Layout` of the visual tokens of a transformers VLM's inputs.

    >>> layout = tokenprune.adapters.layout(model, **inputs)   # doctest: +SKIP

One module per model family (`llava`, `llava_next`, `internvl`), each registered as a
`tokenprune.Adapter` through the ``tokenprune_adapters`` plugin hook; third-party
plugins add families the same way.
"""

from __future__ import annotations

from typing import Any

from tokenprune.adapters.inputs import visual_token_mask
from tokenprune.errors import PluginError, UnsupportedModelError
from tokenprune.layout import Layout
from tokenprune.registry import Adapter, get_registry

__all__ = ["adapter_for", "layout", "visual_token_mask"]

_HOW_TO_ADD = (
    "to add a family, register a plugin: `@tokenprune.hookimpl def tokenprune_adapters(): "
    "return [tokenprune.Adapter(name, matches, layout, description)]` (entry point group "
    "'tokenprune', or tokenprune.register_plugin(module) in a session)"
)


def adapter_for(model: Any) -> Adapter:
    """The registered `Adapter` whose ``matches(model)`` is True.

    Raises:
        UnsupportedModelError: no adapter matches; names the supported families.
        PluginError: several adapters match; names them and their plugins.
    """
    entries = get_registry().entries("adapter")
    found = [entry for entry in entries if entry.matches(model)]
    if len(found) == 1:
        return found[0]
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if not found:
        supported = ", ".join(entry.name for entry in entries) or "none"
        raise UnsupportedModelError(
            f"model: expected a model of a supported family ({supported}), got "
            f"{type(model).__name__} (config.model_type={kind!r}); {_HOW_TO_ADD}"
        )
    clash = ", ".join(f"'{entry.name}' (plugin '{entry.plugin}')" for entry in found)
    raise PluginError(
        f"model: expected exactly one adapter to match {type(model).__name__} "
        f"(config.model_type={kind!r}), got {len(found)}: {clash}; uninstall or narrow one"
    )


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
    return adapter_for(model).layout(model, **model_inputs)

