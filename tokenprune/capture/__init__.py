"""Cue sources: how each cue a strategy may read is captured from a model.

`CueSource` (the base class a plugin subclasses) and `Capture` (what a source sees at a
prune point) live in `tokenprune.capture.base`; the built-in sources (``attention``,
``text_attention`` / ``self_attention``, ``hidden``, ``keys`` in
`tokenprune.capture.builtin`; ``cls_attention``, ``text_embeddings`` / ``text_mask`` in
`tokenprune.capture.vision`), registered through the same ``tokenprune_cues`` hook as a
plugin's.
"""

from tokenprune.capture.base import Capture, CueSource

__all__ = ["Capture", "CueSource"]
