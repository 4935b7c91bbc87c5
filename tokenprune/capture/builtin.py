"""The built-in cue sources, registered through the same hook as a plugin's."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tokenprune.capture.attention_math import last_query_attention, mean_query_attention
from tokenprune.capture.base import Capture, CueSource
from tokenprune.capture.vision import ClsAttention, TextEmbeddings
from tokenprune.errors import CueError
from tokenprune.hookspecs import hookimpl

__all__ = ["Attention", "ClsAttention", "FitPruneAttention", "Hidden", "Keys", "TextEmbeddings"]


class Attention(CueSource):
    """FastV's cue: the attention of each sample's last real prompt token to every
    candidate in the decoder layer before the point, post-softmax, mean over heads."""

    names = ("attention",)
    description = "last prompt token's attention to each candidate, layer before the point (B, N)"
    uses_attention = True

    def on_attention(self, capture: Capture, query: Tensor, key: Tensor, scaling: float) -> None:
        capture.store["attention"] = last_query_attention(
            query, key, capture.token_mask, scaling, capture.last
        )

    def capture(self, capture: Capture) -> dict[str, Tensor]:
        return {"attention": capture.per_candidate(capture.store["attention"])}


class FitPruneAttention(CueSource):
    """FitPrune's two cues: the mean attention of the text tokens (image-text cross
    attention) and of the visual tokens (image self attention) to every candidate, in
    the decoder layer before the point, mean over heads."""

    names = ("text_attention", "self_attention")
    description = "mean text-to-candidate and visual-to-candidate attention (FitPrune) (B, N)"
    uses_attention = True

    def on_attention(self, capture: Capture, query: Tensor, key: Tensor, scaling: float) -> None:
        text = capture.token_mask & ~capture.visual
        weights = torch.stack([text, capture.visual]).float()
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1)
        text_attention, self_attention = mean_query_attention(
            query, key, capture.token_mask, weights, scaling
        )
        capture.store["fitprune"] = (text_attention, self_attention)

    def capture(self, capture: Capture) -> dict[str, Tensor]:
        text_attention, self_attention = capture.store["fitprune"]
        return {
            "text_attention": capture.per_candidate(text_attention),
            "self_attention": capture.per_candidate(self_attention),
        }


class Hidden(CueSource):
    """The hidden states of the candidates at the point: the projected visual
    embeddings at ``"input"``, the input of the decoder layer ``point`` otherwise."""

    names = ("hidden",)
    description = "candidates' hidden states entering the point (embeddings at input) (B, N, H)"

    def capture(self, capture: Capture) -> dict[str, Tensor]:
        return {"hidden": capture.per_candidate(capture.hidden)}


class Keys(CueSource):
    """AdaptPrune's key cue: the point layer's key projection applied to its raw input
    (no input norm, no RoPE; heads concatenated), as the authors' code does. At
    ``"input"`` there is no layer yet: the keys are the embeddings themselves."""

    names = ("keys",)
    description = "point layer's k_proj of its raw input (the embeddings at input) (B, N, D)"

    def check(self, point: Any, adapter: Any) -> None:
        if point != "input" and adapter.key_projection(point) is None:
            raise CueError(
                f"keys: needs the key projection of layer {point}, but its attention "
                f"{type(adapter.attention(point)).__name__} has no `k_proj`"
            )

    def capture(self, capture: Capture) -> dict[str, Tensor]:
        candidates = capture.per_candidate(capture.hidden)
        if capture.point == "input":
            return {"keys": candidates}
        return {"keys": capture.adapter.key_projection(capture.point)(candidates)}


@hookimpl
def tokenprune_cues() -> list[type[CueSource]]:
    return [Attention, FitPruneAttention, Hidden, Keys, ClsAttention, TextEmbeddings]
