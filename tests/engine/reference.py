"""Independent references for the engine tests: a masked (not shortened) model run and a
score stage that records the cues it is given."""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
from torch import Tensor
from transformers_compat import cache_kwargs

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


def keep_mask(input_ids: Tensor, run, stage: int = -1) -> Tensor:
    """``(B, L)`` bool: text tokens and the visual tokens ``run`` kept (at ``stage``)."""
    keep = input_ids != run.model.config.image_token_id
    for b, sample in enumerate(run.records[stage].samples):
        keep[b, sample.kept_seq_index] = True
    return keep


@contextmanager
def masked_reference(model, layer: int, keep: Tensor, *more: tuple[int, Tensor], window: int | None = None):
    """The model with eager attention whose layers ``layer..`` attend only to prompt
    tokens where ``keep (B, L)`` is True (and to every generated token); layers below
    see everything. Nothing is shortened: dropped tokens still run, masked as keys.
    ``more``: further ``(layer, keep)`` stages, each applied from its layer on.
    With ``window``, layers ``layer..`` also see only keys fewer than ``window`` sequence
    indices back (transformers' sliding window, counted over the full sequence)."""
    text = model.model.language_model
    stages = sorted([(layer, keep), *more], key=lambda s: s[0])
    key = "text_config"
    original = model.config.text_config._attn_implementation
    seen: dict[str, Tensor] = {}

    def on_call(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None:  # generate() may leave out an all-ones mask
            ids = kwargs.get("input_ids")
            batch, new = ids.shape if ids is not None else kwargs["inputs_embeds"].shape[:2]
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = cache.get_seq_length() if cache is not None else 0
            mask = torch.ones(batch, past + new, dtype=torch.long)
        seen["mask"] = mask

    def on_layer(index, module, args, kwargs):
        keep = stages[0][1]
        for start, more_keep in stages[1:]:
            if index >= start:
                keep = keep & more_keep
        hidden = args[0] if args else kwargs["hidden_states"]
        mask2d = seen["mask"].bool()
        queries, total = hidden.shape[1], mask2d.shape[1]
        past = total - queries
        extended = torch.cat([keep, keep.new_ones(keep.shape[0], total - keep.shape[1])], dim=1)
        row = torch.arange(queries).unsqueeze(1) + past
        column = torch.arange(total).unsqueeze(0)
        allowed = (column <= row)[None] & (mask2d & extended)[:, None]
        if window is not None:
            allowed &= (row - column < window)[None]
            # A sliding-window cache holds only the last keys: the columns it has.
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if cache is not None:
                length, offset = cache.layers[index].get_mask_sizes(queries)
                allowed = allowed[..., offset : offset + length]
        additive = torch.zeros(allowed.shape, dtype=hidden.dtype).masked_fill(
            ~allowed, torch.finfo(hidden.dtype).min
        )
        return args, {**kwargs, "attention_mask": additive[:, None]}

    model.set_attn_implementation({key: "eager"})
    handles = [model.register_forward_pre_hook(on_call, with_kwargs=True)]
    handles += [
        text.layers[i].register_forward_pre_hook(functools.partial(on_layer, i), with_kwargs=True)
        for i in range(stages[0][0], len(text.layers))
    ]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        model.set_attn_implementation({key: original})


class HiddenNorm(Score):
    """Scores each candidate by the L2 norm of its ``hidden`` cue (any point)."""

    name = "hidden_norm"
    requires = frozenset({"hidden"})

    def __call__(self, cues):
        return cues.hidden.float().norm(dim=-1)


def hidden_norm_pruner(keep) -> tokenprune.Pruner:
    top_k = tokenprune.pruner("fastv", keep=keep).selector
    return tokenprune.Pruner(HiddenNorm(), (), top_k, keep=keep)


def language_model_inputs(model, inputs) -> dict[str, Tensor]:
    """The keyword arguments the language model receives in an unpruned forward
    (``inputs_embeds`` with the visual features scattered in, ``attention_mask``)."""
    seen = {}

    def on_call(module, args, kwargs):
        seen.update(kwargs)

    handle = model.model.language_model.register_forward_pre_hook(on_call, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen


def greedy_from_embeddings(model, embeds, mask, positions, steps):
    """Greedy decoding of the plain model (no tokenprune) from ``embeds (B, L, H)`` with
    the 2D ``mask (B, L)`` and ``positions (B, L)``, each step at the next position of
    each sample's own clock. Returns the tokens ``(B, steps)`` and the logits of each
    step ``(steps, B, V)``."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config.text_config)
    tokens, logits = [], []
    mask = mask.long()
    with torch.no_grad():
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, **cache_kwargs(model, cache))
        for _ in range(steps):
            step = out.logits[:, -1]
            logits.append(step)
            token = step.argmax(dim=-1)
            tokens.append(token)
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = model(
                inputs_embeds=model.get_input_embeddings()(token[:, None]),
                attention_mask=mask,
                position_ids=positions,
                **cache_kwargs(model, cache),
            )
    return torch.stack(tokens, dim=1), torch.stack(logits)
