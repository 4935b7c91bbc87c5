"""See every attention call of one sub-model (the language model, or the vision tower)
through transformers' `AttentionInterface`: a registered function that calls the
sub-model's own attention implementation and then shows its inputs to a listener.

The sub-model is switched to the registered name for the duration only; every other
sub-model keeps its own implementation.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from tokenprune.errors import UnsupportedModelError

__all__ = ["AttentionTap", "Listener"]

#: ``listener(module, query (B, Hq, Q, d), key (B, Hkv, L, d), scaling)``.
Listener = Callable[[nn.Module, Tensor, Tensor, float], None]

_ids = itertools.count()


class AttentionTap:
    """Install with `open`, undo with `close` (idempotent).

    Args:
        model: the VLM (its ``set_attn_implementation`` switches the sub-model).
        config: the sub-model's config (e.g. the `TextStack`'s, or ``vision_config``).
        config_key: its name among the VLM config's ``sub_configs``.
        listener: called after each attention call of the sub-model.
        attention: one of its attention modules (its modelling file has the eager
            function an ``"eager"`` sub-model falls back to).
    """

    def __init__(
        self,
        model: nn.Module,
        config: Any,
        config_key: str,
        listener: Listener,
        attention: nn.Module,
    ) -> None:
        self.model = model
        self.attention = attention
        self.config = config
        self.config_key = config_key
        self.listener = listener
        self.original = config._attn_implementation
        # Keep the original's name inside ours: transformers tests names for "flash".
        self.name = f"tokenprune-{next(_ids)}-{self.original}"
        self._installed = False

    def _original_function(self) -> Callable:
        if self.original == "eager":
            return eager_attention_of(self.attention)
        if self.original not in ALL_ATTENTION_FUNCTIONS:
            raise UnsupportedModelError(
                f"model: expected a registered attention implementation, got "
                f"{self.original!r} (registered: {sorted(ALL_ATTENTION_FUNCTIONS)})"
            )
        return ALL_ATTENTION_FUNCTIONS[self.original]

    def _original_mask(self) -> Callable | None:
        return ALL_MASK_ATTENTION_FUNCTIONS.get(self.original)

    def open(self) -> None:
        original = self._original_function()
        listener = self.listener

        def attention(
            module: nn.Module, query: Tensor, key: Tensor, value: Tensor, *args: Any, **kwargs: Any
        ):
            out = original(module, query, key, value, *args, **kwargs)
            listener(module, query, key, kwargs.get("scaling", getattr(module, "scaling", None)))
            return out

        AttentionInterface.register(self.name, attention)
        mask = self._original_mask()
        # Without a mask function of the same name transformers silently drops the mask;
        # implementations without one (custom kernels) get none either way.
        if mask is not None:
            AttentionMaskInterface.register(self.name, mask)
        self._installed = True
        self.model.set_attn_implementation({self.config_key: self.name})

    def close(self) -> None:
        if not self._installed:
            return
        try:
            if self.config._attn_implementation == self.name:
                self.model.set_attn_implementation({self.config_key: self.original})
        finally:
            # transformers has no unregister; `register` writes this class-level dict.
            AttentionInterface._global_mapping.pop(self.name, None)
            AttentionMaskInterface._global_mapping.pop(self.name, None)
            self._installed = False


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
