"""The built-in cue sources, registered through the same hook as a plugin's."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tokenprune.capture.attention_math import last_query_attention, mean_query_attention
from tokenprune.capture.base import Capture, CueSource
from tokenprune.capture.vision import ClsAttention, InputEmbeddingsSource, TextEmbeddings
from tokenprune.errors import CueError
from tokenprune.hookspecs import hookimpl

__all__ = [
    "Attention",
    "ClsAttention",
    "FitPruneAttention",
    "Hidden",
    "Keys",
    "RaterAttention",
    "TextEmbeddings",
    "text_raters",
]


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


def text_raters(embeds: Tensor, visual: Tensor, real: Tensor) -> Tensor:
    """SparseVLM's text raters (Zhang et al., 2025, section 3.2, as the authors' code
    computes them from the language model's input embeddings).

    For each sample, the text tokens after its first visual token are scored by their
    relevance to the visual tokens: ``m = softmax_t(V T^T)`` (each visual token's softmax
    over those text tokens of the raw embedding dot products), averaged over the visual
    tokens. The raters are the text tokens with ``m`` above its mean; when none is (all
    equal), every one of them (the authors' code would average an empty set).

    Args:
        embeds: ``(B, L, H)`` the language model's input embeddings.
        visual: ``(B, L)`` bool, the visual tokens.
        real: ``(B, L)`` bool, False for padding.

    Returns:
        ``(B, L)`` bool, the raters; all False for a sample without a visual token or
        without text after it.
    """
    raters = torch.zeros_like(visual)
    positions = torch.arange(visual.shape[1], device=visual.device)
    for b in range(visual.shape[0]):
        seen = visual[b] & real[b]
        if not bool(seen.any()):
            continue
        after = real[b] & ~visual[b] & (positions > positions[seen][0])
        if not bool(after.any()):
            continue
        relevance = (embeds[b, seen].float() @ embeds[b, after].float().T).softmax(dim=-1).mean(dim=0)
        chosen = relevance > relevance.mean()
        raters[b, after] = chosen if bool(chosen.any()) else torch.ones_like(chosen)
    return raters


class RaterAttention(InputEmbeddingsSource):
    """SparseVLM's cue: the mean attention of the sample's text raters (`text_raters`,
    chosen once from the input embeddings) to every candidate, in the decoder layer
    before the point, post-softmax, mean over heads and raters."""

    names = ("rater_attention",)
    description = "SparseVLM: mean attention of the relevant text tokens (raters) to each candidate (B, N)"
    uses_attention = True

    def on_attention(self, capture: Capture, query: Tensor, key: Tensor, scaling: float) -> None:
        embeds, input_ids, real = self.prompt_inputs(capture)
        raters = text_raters(embeds, capture.adapter.visual_mask(input_ids), real)  # (B, L0)
        # Text tokens are never pruned: map the raters onto this point's slots.
        at_slots = raters.gather(1, capture.seq_index.clamp(min=0)) & (capture.seq_index >= 0)
        weights = at_slots.float()
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1)
        capture.store["rater_attention"] = mean_query_attention(
            query, key, capture.token_mask, weights[None], scaling
        )[0]

    def capture(self, capture: Capture) -> dict[str, Tensor]:
        return {"rater_attention": capture.per_candidate(capture.store["rater_attention"])}


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
    return [Attention, FitPruneAttention, RaterAttention, Hidden, Keys, ClsAttention, TextEmbeddings]
