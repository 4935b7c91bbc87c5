"""Exceptions raised by tokenprune for bad input. All derive from `TokenpruneError` (a
`ValueError`), and every message names the argument, what was expected and what was
received. (Indexing a batch by sample raises Python's own `IndexError` / `TypeError`.)"""

from __future__ import annotations

__all__ = [
    "CueError",
    "LayoutError",
    "PictureError",
    "PluginError",
    "SpecError",
    "TokenpruneError",
    "UnsupportedModelError",
]


class TokenpruneError(ValueError):
    """Base class of every error tokenprune raises for bad input."""


class LayoutError(TokenpruneError):
    """A `Layout` is malformed, or does not match the tokens it describes."""


class CueError(TokenpruneError):
    """A cue is missing, has the wrong shape or dtype, or holds NaN / inf."""


class SpecError(TokenpruneError):
    """A pruner spec, strategy name, keyword argument or `keep` is invalid."""


class PluginError(TokenpruneError):
    """Plugins clash (two provide the same name) or return malformed registrations."""


class PictureError(TokenpruneError):
    """A picture or file argument of `tokenprune.viz` is invalid (not a tensor, an image
    or a positive size)."""


class UnsupportedModelError(TokenpruneError):
    """No adapter knows how to lay out this model's visual tokens."""
