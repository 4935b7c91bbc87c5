"""See every decoder layer's post-RoPE queries and keys through transformers'
`AttentionInterface`: a registered function that calls the model's own attention
implementation and then shows its inputs to a listener.

The language model is switched to the registered name for the duration only; the
vision tower and every other sub-model keep theirs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from tokenprune.engine.anatomy import TextStack, eager_attention_of
from tokenprune.errors import UnsupportedModelError

__all__ = ["AttentionTap", "Listener"]

#: ``listener(module, query (B, Hq, Q, d), key (B, Hkv, L, d), scaling)``.
Listener = Callable[[nn.Module, Tensor, Tensor, float], None]

_ids = itertools.count()


class AttentionTap:
    """Install with `open`, undo with `close` (idempotent).

    Args:
        model: the VLM (its ``set_attn_implementation`` switches the language model).
        stack: the model's `TextStack`.
        listener: called after each attention call of the language model.
    """

    def __init__(self, model: nn.Module, stack: TextStack, listener: Listener) -> None:
        self.model = model
        self.stack = stack
        self.listener = listener
        self.original = stack.config._attn_implementation
        # Keep the original's name inside ours: transformers tests names for "flash".
        self.name = f"tokenprune-{next(_ids)}-{self.original}"
        self._installed = False

    def _original_function(self) -> Callable:
        if self.original == "eager":
            return eager_attention_of(self.stack.attention(0))
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
        self.model.set_attn_implementation({self.stack.config_key: self.name})

    def close(self) -> None:
        if not self._installed:
            return
        try:
            if self.stack.config._attn_implementation == self.name:
                self.model.set_attn_implementation({self.stack.config_key: self.original})
        finally:
            # transformers has no unregister; `register` writes this class-level dict.
            AttentionInterface._global_mapping.pop(self.name, None)
            AttentionMaskInterface._global_mapping.pop(self.name, None)
            self._installed = False
