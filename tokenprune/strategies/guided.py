"""Scores from cues outside the language model's attention: the vision tower's CLS
attention (VisionZip) and the relevance to the prompt's text (CDPruner)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenprune.cues import Cues
from tokenprune.strategies.base import Score

__all__ = ["Relevance", "VisionAttention"]


@dataclass(frozen=True, repr=False)
class VisionAttention(Score):
    """The vision tower's CLS attention to each candidate (VisionZip's dominant tokens).

    The ``cls_attention`` cue: post-softmax, mean over heads, in the tower layer whose
    output becomes the visual features.
    """

    name = "vision_attention"
    requires = frozenset({"cls_attention"})

    def __call__(self, cues: Cues) -> Tensor:
        return cues.require("cls_attention", self.name)


@dataclass(frozen=True, repr=False)
class Relevance(Score):
    """CDPruner's instruction relevance: cosine of each candidate to the prompt's text, min-max scaled.

    ``r_i`` is the mean over the prompt's text tokens of ``cos(hidden_i, text_t)`` (the
    ``hidden`` and ``text_embeddings`` cues: at ``layer="input"`` both are language-model
    input embeddings), negated when ``negate`` (as the authors' LLaVA code does), then
    ``(r - min + 1e-6) / (max - min)`` over each sample's valid candidates.
    """

    negate: bool = True
    name = "relevance"
    requires = frozenset({"hidden", "text_embeddings", "text_mask"})

    def __call__(self, cues: Cues) -> Tensor:
        hidden = cues.require("hidden", self.name)
        text = cues.require("text_embeddings", self.name)
        mask = cues.require("text_mask", self.name)
        dtype = torch.promote_types(torch.promote_types(hidden.dtype, text.dtype), torch.float32)
        h = torch.nn.functional.normalize(hidden.to(dtype), dim=-1, eps=1e-12)
        t = torch.nn.functional.normalize(text.to(dtype), dim=-1, eps=1e-12)
        cosine = torch.bmm(h, t.transpose(1, 2))  # (B, N, T)
        weights = mask.to(dtype) / mask.sum(dim=1, keepdim=True).clamp(min=1).to(dtype)
        relevance = torch.bmm(cosine, weights.unsqueeze(2)).squeeze(2)
        if self.negate:
            relevance = -relevance
        valid = cues.layout.valid
        low = relevance.masked_fill(~valid, float("inf")).amin(dim=1, keepdim=True)
        high = relevance.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
        scaled = (relevance - low + 1e-6) / (high - low).clamp(min=1e-12)
        return torch.where(valid, scaled, torch.zeros_like(scaled))
