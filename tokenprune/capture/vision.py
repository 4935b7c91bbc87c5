"""Cue sources outside the language model: the vision tower's CLS attention (VisionZip)
and the prompt's text embeddings (text-guided methods such as CDPruner)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tokenprune.capture.base import Capture, CueSource
from tokenprune.errors import CueError

__all__ = ["ClsAttention", "InputEmbeddingsSource", "TextEmbeddings"]


def _by_sequence(values: Tensor, visual: Tensor, what: str) -> Tensor:
    """``(B, L)`` float: ``values (I, n)`` (per image, its candidate tokens in order)
    scattered over the visual positions of ``visual (B, L)`` in sequence order, the way
    the model fills its placeholders. ``generate()`` encodes each image once and repeats
    the features for beams / ``num_return_sequences``; such repeats are recognised."""
    flat = values.reshape(-1).float()
    total = int(visual.sum())
    batch = visual.shape[0]
    if total == flat.numel():
        rows = visual
    else:
        repeats = total // max(flat.numel(), 1)
        if repeats < 2 or total != repeats * flat.numel() or batch % repeats:
            raise CueError(
                f"{what}: expected the vision tower's last call to cover the prompt's "
                f"{total} visual tokens, got {flat.numel()} tokens; run the images through "
                f"the model (pixel_values) inside the prune block"
            )
        rows = visual[::repeats]
    out = torch.zeros(rows.shape, dtype=flat.dtype, device=visual.device)
    out[rows] = flat.to(visual.device)
    if rows is not visual:
        out = out.repeat_interleave(batch // rows.shape[0], dim=0)
    return out


class ClsAttention(CueSource):
    """VisionZip's dominant-token cue: in the vision tower layer whose output becomes the
    visual features, the attention of the CLS token to each of the image's tokens,
    post-softmax, mean over heads. Captured through the tower's own attention interface
    (no eager switch), so it exists at every prune point, for families whose adapter
    names a CLS-token tower (`tokenprune.Adapter.vision_cls_attention`)."""

    names = ("cls_attention",)
    description = "vision tower CLS token's attention to each candidate (VisionZip) (B, N)"

    def __init__(self) -> None:
        self._tap: Any = None
        self._last: Tensor | None = None

    def check(self, point: Any, adapter: Any) -> None:
        if adapter.vision_cls_attention() is None:
            raise CueError(
                f"cls_attention: needs a vision tower with a CLS token whose output feeds the "
                f"visual tokens, but the {adapter.name} adapter names none"
            )

    def open(self, adapter: Any) -> None:
        from tokenprune.engine.tap import AttentionTap

        module, config_key, self._tokens = adapter.vision_cls_attention()
        config = getattr(adapter.model.config, config_key)

        def listen(called: Any, query: Tensor, key: Tensor, scaling: float) -> None:
            if called is not module:
                return
            with torch.no_grad():
                # query, key: (I, H, P, d); the CLS token's row, mean over heads.
                scores = torch.einsum("ihd,ihpd->ihp", query[:, :, 0].float(), key.float())
                self._last = (scores * scaling).softmax(dim=-1).mean(dim=1)  # (I, P)

        self._tap = AttentionTap(adapter.model, config, config_key, listen, module)
        self._tap.open()

    def close(self) -> None:
        if self._tap is not None:
            self._tap.close()
            self._tap = None
        self._last = None

    def capture(self, capture: Capture) -> dict[str, Tensor]:
        if self._last is None:
            raise CueError(
                "cls_attention: the vision tower did not run in this block (pass pixel_values, "
                "not pre-computed image features, inside the prune block)"
            )
        input_ids = capture.inputs["input_ids"]
        visual = capture.adapter.visual_mask(input_ids)
        full = _by_sequence(self._last[:, self._tokens], visual, "cls_attention")
        seq = capture.seq_index.gather(1, capture.candidates.clamp(min=0))
        values = full.gather(1, seq.clamp(min=0))
        return {"cls_attention": values.masked_fill(capture.candidates < 0, 0.0)}


class InputEmbeddingsSource(CueSource):
    """Base of sources that read the language model's input embeddings of the prompt:
    `open` records the ``inputs_embeds`` of every language-model call, `prompt_inputs`
    returns the prefill's with its ``input_ids`` and real-token mask."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._embeds: Tensor | None = None

    def open(self, adapter: Any) -> None:
        def record(module: Any, args: tuple, kwargs: dict) -> None:
            embeds = kwargs.get("inputs_embeds")
            if embeds is not None:
                self._embeds = embeds.detach()

        self._handle = adapter.text.model.register_forward_pre_hook(record, with_kwargs=True)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._embeds = None

    def prompt_inputs(self, capture: Capture) -> tuple[Tensor, Tensor, Tensor]:
        """``embeds (B, L, H)``, ``input_ids (B, L)`` and ``real (B, L)`` bool (False for
        padding) of this prefill's prompt. Raises `CueError` without recorded embeddings."""
        embeds = self._embeds
        input_ids = capture.inputs["input_ids"]
        if embeds is None or embeds.shape[:2] != input_ids.shape:
            raise CueError(
                f"{self.names[0]}: expected the language model's inputs_embeds of this prompt, "
                "got none (the language model was not called with inputs_embeds)"
            )
        mask = capture.inputs.get("attention_mask")
        real = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
        return embeds, input_ids, real


class TextEmbeddings(InputEmbeddingsSource):
    """The prompt's text tokens as the language model receives them (its input
    embeddings), for text-guided scores: ``text_embeddings (B, T, H)`` in sequence order,
    zero-padded to the longest prompt, and ``text_mask (B, T)`` bool (False for padding).
    The same at every prune point (all text tokens survive pruning)."""

    names = ("text_embeddings", "text_mask")
    description = "the prompt's text-token input embeddings (B, T, H) and their mask (B, T)"
    per_candidate = False

    def capture(self, capture: Capture) -> dict[str, Tensor]:
        embeds, input_ids, real = self.prompt_inputs(capture)
        text = real & ~capture.adapter.visual_mask(input_ids)
        count = int(text.sum(dim=1).max())
        order = torch.where(text, torch.arange(text.shape[1], device=text.device), text.shape[1])
        slots = order.sort(dim=1).values[:, :count]
        valid = slots < text.shape[1]
        index = slots.clamp(max=text.shape[1] - 1)
        picked = embeds.gather(1, index[..., None].expand(-1, -1, embeds.shape[-1]))
        return {"text_embeddings": picked.masked_fill(~valid[..., None], 0), "text_mask": valid}
