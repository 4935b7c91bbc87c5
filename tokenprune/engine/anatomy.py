"""Find the parts of a transformers VLM the engine hooks: its language model, decoder
layers and the sub-config that sets the language model's attention implementation."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from tokenprune.errors import UnsupportedModelError

__all__ = ["TextStack", "text_stack"]


@dataclass(frozen=True)
class TextStack:
    """The language model of a VLM.

    Attributes:
        model: the language model (e.g. ``LlamaModel``), whose config is ``config``.
        layers: its decoder layers, in order.
        config: the text config (shared by the language model and its layers).
        config_key: name of ``config`` among the VLM config's ``sub_configs``.
    """

    model: nn.Module
    layers: nn.ModuleList
    config: Any
    config_key: str

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def attention(self, layer: int) -> nn.Module:
        """The self-attention module of decoder layer ``layer``."""
        return self.layers[layer].self_attn


def text_stack(model: nn.Module) -> TextStack:
    """The `TextStack` of ``model``.

    Raises:
        UnsupportedModelError: the model has no text sub-config, no language model with
            ``layers`` of ``self_attn`` modules, or layers that are not all full attention.
    """
    config = getattr(model, "config", None)
    get_text_config = getattr(config, "get_text_config", None)
    text_config = get_text_config() if get_text_config else None
    keys = [
        key
        for key in getattr(config, "sub_configs", {})
        if text_config is not None and getattr(config, key, None) is text_config
    ]
    if not keys:
        raise UnsupportedModelError(
            f"model: expected a vision-language model whose config has a text sub-config, "
            f"got {type(model).__name__}"
        )
    stacks = [
        module
        for module in model.modules()
        if getattr(module, "config", None) is text_config
        and isinstance(getattr(module, "layers", None), nn.ModuleList)
    ]
    if len(stacks) != 1 or not all(hasattr(layer, "self_attn") for layer in stacks[0].layers):
        raise UnsupportedModelError(
            f"model: expected one language model with `layers` of decoder layers that have "
            f"`self_attn`, got {len(stacks)} candidate(s) in {type(model).__name__}"
        )
    layer_types = getattr(text_config, "layer_types", None) or []
    other = sorted({kind for kind in layer_types if kind != "full_attention"})
    if other:
        raise UnsupportedModelError(
            f"model: expected full-attention decoder layers (the engine rebuilds one causal "
            f"mask for the pruned layers), got layer types {other} in config.layer_types"
        )
    return TextStack(stacks[0], stacks[0].layers, text_config, keys[0])


def eager_attention_of(attention: nn.Module) -> Callable:
    """The eager attention function the module's own modelling file falls back to."""
    module = sys.modules.get(type(attention).__module__)
    function = getattr(module, "eager_attention_forward", None)
    if function is None:
        raise UnsupportedModelError(
            f"model: expected `eager_attention_forward` in {type(attention).__module__} "
            f"(the eager attention of {type(attention).__name__}), found none"
        )
    return function
