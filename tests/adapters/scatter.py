"""Ground truth from the model's own code: where does each vision feature land?

`landed_codes` runs a model's real forward with its vision tower's output replaced by
codes (which tower image, which tower token) and its projector reduced to passing those
codes through, then reads the language model's ``inputs_embeds`` at the image
placeholders. Every step between (CLS dropping, LLaVA-NeXT's unpad / newline packing,
InternVL's pixel shuffle, ``masked_scatter`` over the padded batch) is transformers' own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

#: Channels of one code: (tower image + 1, tower token, marker 1.0).
CODE = 3
NEWLINE = -1.0


class _Stop(Exception):
    def __init__(self, embeds: Tensor) -> None:
        self.embeds = embeds


def _codes(n: int, tokens: int, width: int) -> Tensor:
    """``(n, tokens, width)``: channel 0 = tower image + 1, 1 = tower token, 2 = 1."""
    codes = torch.zeros(n, tokens, width)
    codes[..., 0] = torch.arange(1, n + 1, dtype=torch.float32)[:, None]
    codes[..., 1] = torch.arange(tokens, dtype=torch.float32)
    codes[..., 2] = 1.0
    return codes


@contextmanager
def _hooks(model: Any, channels: list[int]) -> Iterator[None]:
    inner = model.model
    text_width = model.config.text_config.hidden_size

    def tower(module: Any, args: Any, kwargs: Any, output: Any) -> Any:
        hidden = output.last_hidden_state
        codes = _codes(hidden.shape[0], hidden.shape[1], hidden.shape[2])
        output.last_hidden_state = codes
        # Every layer's hidden state is the code, whichever layer the model selects.
        output.hidden_states = (codes,) * (inner.vision_tower.config.num_hidden_layers + 1)
        return output

    def projector(module: Any, args: Any, output: Tensor) -> Tensor:
        out = torch.zeros(*output.shape[:-1], text_width)
        out[..., : len(channels)] = args[0][..., channels]
        return out

    def language(module: Any, args: Any, kwargs: Any) -> None:
        raise _Stop(kwargs["inputs_embeds"])

    handles = [
        inner.vision_tower.register_forward_hook(tower, with_kwargs=True),
        inner.multi_modal_projector.register_forward_hook(projector),
        inner.language_model.register_forward_pre_hook(language, with_kwargs=True),
    ]
    newline = getattr(inner, "image_newline", None)
    saved = None if newline is None else newline.detach().clone()
    if newline is not None:
        with torch.no_grad():
            newline.zero_()
            newline[:CODE] = NEWLINE
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if newline is not None:
            with torch.no_grad():
                newline.copy_(saved)


def landed_codes(
    model: Any, inputs: dict[str, Tensor], channels: list[int], mask: Tensor | None = None
) -> list[Tensor]:
    """Per sample, ``(N_b, len(channels))``: the codes the model put at its image
    placeholders (or at the positions of ``mask (B, L)``), in sequence order.

    Args:
        channels: which channels of the projector's input to pass through (for InternVL,
            the code channels of all four pixel-shuffled patches).
    """
    try:
        with _hooks(model, channels), torch.no_grad():
            model(**inputs)
    except _Stop as stop:
        embeds = stop.embeds
    else:
        raise AssertionError("the language model was never called")
    if mask is None:
        mask = inputs["input_ids"] == model.config.image_token_id
    return [embeds[b][mask[b], : len(channels)] for b in range(embeds.shape[0])]
