"""Refuse the ``generate()`` modes a pruned prefill cannot honour, before any work.

A prune selects from the whole prompt in one prefill forward and leaves layers with
caches of different lengths that only ever grow. Chunked prefill (``prefill_chunk_size``)
feeds the prompt in several forwards, so the first chunk would be pruned alone with a cue
from its own last token; prompt-lookup and assisted decoding (``prompt_lookup_num_tokens``,
``assistant_model``, ``assistant_early_exit``) roll the cache back with ``crop()``, which
cuts every layer to one length. Each is refused with a `TokenpruneError` naming it.

The guard shadows ``generate`` on the model instance (the one piece besides the image
recorder that is not a hook; ``close`` deletes the instance attribute).
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from tokenprune.errors import TokenpruneError

__all__ = ["GenerateGuard", "check_generate_options"]

#: generate() option -> why a pruned prefill cannot honour it.
REFUSED = {
    "prefill_chunk_size": "chunked prefill feeds the prompt in several forwards, and the prune "
    "selects from the whole prompt in one",
    "prompt_lookup_num_tokens": "prompt-lookup decoding rolls the KV cache back to one length, "
    "but a pruned cache holds fewer tokens in its pruned layers",
    "assistant_model": "assisted decoding rolls the KV cache back to one length, but a pruned "
    "cache holds fewer tokens in its pruned layers",
    "assistant_early_exit": "self-speculative decoding rolls the KV cache back to one length, but "
    "a pruned cache holds fewer tokens in its pruned layers",
}


def check_generate_options(model: nn.Module, kwargs: dict[str, Any]) -> None:
    """Raise `TokenpruneError` if ``generate(**kwargs)`` on ``model`` would use a mode in
    `REFUSED`, given as a keyword, in a ``generation_config`` argument, or in the model's
    own ``generation_config``."""
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    for name, why in REFUSED.items():
        value = kwargs[name] if name in kwargs else getattr(config, name, None)
        if value is not None:
            shown = type(value).__name__ if isinstance(value, nn.Module) else repr(value)
            raise TokenpruneError(
                f"{name}: expected None inside a tokenprune.prune block ({why}), got {shown}; "
                "generate without it, or outside the block"
            )


class GenerateGuard:
    """Checks every ``model.generate(...)`` call with `check_generate_options` while open."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._installed = False

    def open(self) -> None:
        original = getattr(self.model, "generate", None)
        if original is None or "generate" in vars(self.model):
            return
        model = self.model

        @functools.wraps(original)
        def generate(*args: Any, **kwargs: Any) -> Any:
            check_generate_options(model, kwargs)
            return original(*args, **kwargs)

        model.generate = generate
        self._installed = True

    def close(self) -> None:
        if self._installed:
            vars(self.model).pop("generate", None)
            self._installed = False
