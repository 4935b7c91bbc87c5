"""Independent references for the engine tests: a masked (not shortened) model run and a
score stage that records the cues it is given."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor

import tokenprune
from tokenprune.strategies.base import Score


class Record(Score):
    """A score that keeps the `Cues` it saw and scores by attention (or zeros)."""

    name = "record"

    def __init__(self, requires: frozenset[str]) -> None:
        self.requires = frozenset(requires)
        self.cues = None

    def __call__(self, cues):
        self.cues = cues
        if cues.attention is not None:
            return cues.attention
        return torch.zeros(cues.batch_size, cues.num_tokens, device=cues.device)


def recording_pruner(requires: set[str], keep=0.5) -> tuple[Record, tokenprune.Pruner]:
    record = Record(frozenset(requires))
    top_k = tokenprune.pruner("fastv", keep=keep).selector
    return record, tokenprune.Pruner(record, (), top_k, keep=keep)


def keep_mask(input_ids: Tensor, run) -> Tensor:
    """``(B, L)`` bool: text tokens and the visual tokens ``run`` kept."""
    keep = input_ids != run.model.config.image_token_id
    for b, sample in enumerate(run.selections):
        keep[b, sample.kept_positions] = True
    return keep


@contextmanager
def masked_reference(model, layer: int, keep: Tensor):
    """The model with eager attention whose layers ``layer..`` attend only to prompt
    tokens where ``keep (B, L)`` is True (and to every generated token); layers below
    see everything. Nothing is shortened: dropped tokens still run, masked as keys."""
    text = model.model.language_model
    key = "text_config"
    original = model.config.text_config._attn_implementation
    seen: dict[str, Tensor] = {}

    def on_call(module, args, kwargs):
        seen["mask"] = kwargs["attention_mask"]

    def on_layer(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        mask2d = seen["mask"].bool()
        queries, total = hidden.shape[1], mask2d.shape[1]
        past = total - queries
        extended = torch.cat([keep, keep.new_ones(keep.shape[0], total - keep.shape[1])], dim=1)
        row = torch.arange(queries).unsqueeze(1) + past
        allowed = (torch.arange(total).unsqueeze(0) <= row)[None] & (mask2d & extended)[:, None]
        additive = torch.zeros(allowed.shape, dtype=hidden.dtype).masked_fill(
            ~allowed, torch.finfo(hidden.dtype).min
        )
        return args, {**kwargs, "attention_mask": additive[:, None]}

    model.set_attn_implementation({key: "eager"})
    handles = [model.register_forward_pre_hook(on_call, with_kwargs=True)]
    handles += [
        text.layers[i].register_forward_pre_hook(on_layer, with_kwargs=True)
        for i in range(layer, len(text.layers))
    ]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        model.set_attn_implementation({key: original})
