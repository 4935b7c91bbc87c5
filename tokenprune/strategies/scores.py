"""Scores: cues -> ``(B, N)`` importance of each candidate token (higher = keep)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenprune.cues import Cues
from tokenprune.strategies.base import Score

__all__ = [
    "AttentionScore",
    "FitPruneScore",
    "LastScore",
    "NormScore",
    "RandomScore",
    "RaterAttentionScore",
    "TextAttentionScore",
    "UniformScore",
]


@dataclass(frozen=True, repr=False)
class AttentionScore(Score):
    """FastV's cue: attention of the last prompt token to each candidate, mean over heads."""

    name = "attention"
    requires = frozenset({"attention"})

    def __call__(self, cues: Cues) -> Tensor:
        return cues.require("attention", self.name)


@dataclass(frozen=True, repr=False)
class RandomScore(Score):
    """Uniform random scores in [0, 1) from ``cues.generator`` (global RNG if None)."""

    name = "random"

    def __call__(self, cues: Cues) -> Tensor:
        return torch.rand(
            cues.batch_size, cues.num_tokens, generator=cues.generator, device=cues.device
        )


@dataclass(frozen=True, repr=False)
class LastScore(Score):
    """The token's index: selecting the top k keeps the last k tokens of the sequence."""

    name = "last"

    def __call__(self, cues: Cues) -> Tensor:
        n = cues.num_tokens
        return torch.arange(n, device=cues.device, dtype=torch.float32).expand(cues.batch_size, n)


@dataclass(frozen=True, repr=False)
class NormScore(Score):
    """L2 norm of each candidate's hidden state (a cheap, attention-free cue)."""

    name = "norm"
    requires = frozenset({"hidden"})

    def __call__(self, cues: Cues) -> Tensor:
        hidden = cues.require("hidden", self.name)
        return torch.linalg.vector_norm(hidden, dim=-1, dtype=torch.promote_types(hidden.dtype, torch.float32))


@dataclass(frozen=True, repr=False)
class FitPruneScore(Score):
    """Single-layer FitPrune: image-text cross attention times image self attention."""

    name = "fitprune"
    requires = frozenset({"text_attention", "self_attention"})

    def __call__(self, cues: Cues) -> Tensor:
        text = cues.require("text_attention", self.name)
        image = cues.require("self_attention", self.name)
        dtype = torch.promote_types(torch.promote_types(text.dtype, image.dtype), torch.float32)
        return text.to(dtype) * image.to(dtype)


@dataclass(frozen=True, repr=False)
class UniformScore(Score):
    """Every candidate scores 1: for selectors that choose by their own criterion (``divprune``)."""

    name = "uniform"

    def __call__(self, cues: Cues) -> Tensor:
        return torch.ones(cues.batch_size, cues.num_tokens, device=cues.device)


@dataclass(frozen=True, repr=False)
class TextAttentionScore(Score):
    """Text guidance: attention of every text token of the prompt to each candidate.

    The ``text_attention`` cue: post-softmax attention at the layer before pruning, mean
    over heads and over the prompt's text tokens (not only the last one, as ``attention``;
    FitPrune's cross-attention half). SparseVLM averages over chosen text tokens only:
    ``rater_attention``.
    """

    name = "text_attention"
    requires = frozenset({"text_attention"})

    def __call__(self, cues: Cues) -> Tensor:
        return cues.require("text_attention", self.name)


@dataclass(frozen=True, repr=False)
class RaterAttentionScore(Score):
    """SparseVLM's text guidance: attention of the text raters to each candidate.

    The ``rater_attention`` cue: post-softmax attention at the layer before pruning, mean
    over heads and over the raters, the text tokens after the image whose relevance to the
    visual input embeddings is above the mean (`tokenprune.capture.builtin.text_raters`).
    """

    name = "rater_attention"
    requires = frozenset({"rater_attention"})

    def __call__(self, cues: Cues) -> Tensor:
        return cues.require("rater_attention", self.name)
