"""Batch ``generate()`` calls that a model class makes one sample at a time.

lmms-eval's Hugging Face classes for LLaVA and InternVL refuse ``--batch_size`` above 1.
The plugin lets the base class build each sample's inputs as usual (prompt, chat template,
processor) but records the ``generate(**kwargs)`` call instead of running it; this module
merges recorded calls into one left-padded batch and hands each sample its own output back,
as ``generate()`` on that sample alone would have returned it (its prompt, then its new
tokens up to and including the first end-of-sequence token).

A call's kwargs are split into tensors (`Call.inputs`, a batch of one) and options (the
rest: ``max_new_tokens``, ``do_sample``, ``eos_token_id``, ...); only calls with equal
options are merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokenprune.errors import TokenpruneError

__all__ = ["Call", "batches", "merge", "split", "split_call"]

#: ``(1, L)`` per-token inputs, left-padded when merged (``input_ids`` with the pad id,
#: the others with 0: masked out, or "text" for ``mm_token_type_ids``).
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
#: Per-image / per-video inputs, concatenated along dim 0 in sample order.
#: ``pixel_values`` of LLaVA-NeXT are ``(1, P, 3, H, W)``: padded to the batch's largest P
#: first (the model reads each image's own patch count from ``image_sizes``).
CONCAT_KEYS = (
    "pixel_values",
    "image_sizes",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
    "batch_num_images",
)


@dataclass
class Call:
    """One recorded ``generate(**kwargs)`` call of one sample.

    Attributes:
        inputs: the tensor kwargs, each a batch of one (``input_ids (1, L)``, ...).
        options: every other kwarg.
    """

    inputs: dict[str, Tensor]
    options: dict[str, Any]

    @property
    def length(self) -> int:
        """Prompt length L."""
        return self.inputs["input_ids"].shape[1]


def split_call(kwargs: dict[str, Any]) -> Call:
    """A `Call` from ``generate``'s kwargs; refuses what cannot be merged exactly."""
    inputs = {k: v for k, v in kwargs.items() if isinstance(v, Tensor)}
    options = {k: v for k, v in kwargs.items() if not isinstance(v, Tensor)}
    unknown = sorted(set(inputs) - set(SEQUENCE_KEYS) - set(CONCAT_KEYS))
    if unknown:
        raise TokenpruneError(
            f"generate inputs: expected tensors among {', '.join(SEQUENCE_KEYS + CONCAT_KEYS)}, "
            f"got {', '.join(unknown)} (no rule to batch them)"
        )
    ids = inputs.get("input_ids")
    if ids is None or ids.dim() != 2 or ids.shape[0] != 1:
        shape = None if ids is None else tuple(ids.shape)
        raise TokenpruneError(f"input_ids: expected one sample (1, L), got shape {shape}")
    for key in SEQUENCE_KEYS:
        if key in inputs and inputs[key].shape != ids.shape:
            raise TokenpruneError(f"{key}: expected the shape of input_ids {tuple(ids.shape)}, got {tuple(inputs[key].shape)}")
    if options.get("num_return_sequences", 1) != 1:
        raise TokenpruneError(f"num_return_sequences: expected 1, got {options['num_return_sequences']!r}")
    if "attention_mask" not in inputs:
        inputs["attention_mask"] = torch.ones_like(ids)
    return Call(inputs, options)


def batches(calls: Sequence[Call], size: int) -> list[list[int]]:
    """Indices of ``calls`` in batches of at most ``size``: runs of consecutive calls
    with equal options and equal input keys, in order."""
    out: list[list[int]] = []
    for i, call in enumerate(calls):
        if out:
            last = calls[out[-1][0]]
            same = last.options == call.options and last.inputs.keys() == call.inputs.keys()
            if same and len(out[-1]) < size:
                out[-1].append(i)
                continue
        out.append([i])
    return out


def merge(calls: Sequence[Call]) -> dict[str, Tensor]:
    """One left-padded batch of ``calls`` (equal options and keys): ``input_ids``,
    ``attention_mask`` ... ``(B, L_max)``, per-image tensors concatenated."""
    length = max(call.length for call in calls)
    pad_id = calls[0].options.get("pad_token_id")
    if isinstance(pad_id, (list, tuple)):
        pad_id = pad_id[0]
    merged: dict[str, Tensor] = {}
    for key in calls[0].inputs:
        parts = [call.inputs[key] for call in calls]
        if key in SEQUENCE_KEYS:
            value = pad_id if key == "input_ids" and pad_id is not None else 0
            merged[key] = torch.cat([_left_pad(p, length, value) for p in parts])
        elif parts[0].dim() == 5:
            patches = max(p.shape[1] for p in parts)
            merged[key] = torch.cat([_pad_dim1(p, patches) for p in parts])
        else:
            merged[key] = torch.cat(parts)
    return merged


def split(output: Tensor, calls: Sequence[Call], eos: int | Sequence[int] | None) -> list[Tensor]:
    """Each sample's output ``(1, L_i + T_i)`` from a merged batch's ``output
    (B, L_max + T)``: its own prompt, then its new tokens up to and including the first
    of ``eos`` (later tokens are the batch's padding; a single run stops there)."""
    if output.shape[0] != len(calls):
        raise TokenpruneError(f"generate output: expected {len(calls)} rows, got {output.shape[0]}")
    length = max(call.length for call in calls)
    stops = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    out = []
    for row, call in zip(output, calls):
        new = row[length:]
        ends = [i for i, token in enumerate(new.tolist()) if token in stops]
        if ends:
            new = new[: ends[0] + 1]
        out.append(torch.cat([call.inputs["input_ids"][0].to(new.device), new])[None])
    return out


def _left_pad(x: Tensor, length: int, value: int) -> Tensor:
    pad = x.new_full((x.shape[0], length - x.shape[1]), value)
    return torch.cat([pad, x], dim=1)


def _pad_dim1(x: Tensor, size: int) -> Tensor:
    pad = x.new_zeros((x.shape[0], size - x.shape[1], *x.shape[2:]))
    return torch.cat([x, pad], dim=1)
