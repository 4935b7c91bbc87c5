"""`CueSource`: how one cue is captured from a model during a prefill, and `Capture`,
what a source sees at a prune point.

A source is registered once (the ``tokenprune_cues`` hook) and instantiated for each
``prune`` block. At every prune point whose pruner requires one of its ``names``, the
engine:

1. when the block opens: calls `CueSource.check` with the point and the adapter (refuse
   a point where the cue does not exist), then `CueSource.open` (install hooks outside
   the language model, e.g. in the vision tower);
2. during the prefill, before the point: if ``uses_attention``, calls
   `CueSource.on_attention` with the post-RoPE queries and keys of the decoder layer just
   before the point (through transformers' attention interface; no eager switch);
3. at the point: calls `CueSource.capture`, which returns the cue tensors by name.

Sources never change what the model computes: they read tensors and store results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

if TYPE_CHECKING:
    from tokenprune.adapters.base import Adapter, Point

__all__ = ["Capture", "CueSource"]


@dataclass(eq=False)
class Capture:
    """The state of one prune point in one prefill, for B samples of L slots.

    The slots are the sequence the point sees: the whole prompt at the first point, the
    survivors of the earlier points (right-aligned, left padding first) later on.

    Attributes:
        point: ``"input"`` or the decoder layer index.
        adapter: the model's `tokenprune.Adapter`.
        inputs: the VLM's forward inputs of this prefill (``generate()``'s hidden inputs
            recovered).
        token_mask: ``(B, L)`` bool, False for padding slots.
        visual: ``(B, L)`` bool, the candidate slots (visual tokens still in the sequence).
        candidates: ``(B, N)`` long, the slot of each candidate in `Cues` order, -1 for
            padding candidates.
        seq_index: ``(B, L)`` long, each slot's index in the ``input_ids`` row, -1 padding.
        last: ``(B,)`` long, the slot of each sample's last real prompt token (the query of
            last-token attention cues).
        hidden: ``(B, L, H)`` at the point: the language model's ``inputs_embeds`` at
            ``"input"``, the hidden states entering decoder layer ``point`` otherwise.
            Set by the engine just before `CueSource.capture`.
        store: scratch space for sources that collect before the point (by source name).
    """

    point: Point
    adapter: Adapter
    inputs: dict[str, Any]
    token_mask: Tensor
    visual: Tensor
    candidates: Tensor
    seq_index: Tensor
    last: Tensor
    hidden: Tensor | None = None
    store: dict[str, Any] = field(default_factory=dict)

    def per_candidate(self, x: Tensor) -> Tensor:
        """``x (B, L, ...)`` at the candidates, ``(B, N, ...)``; zero at padding candidates."""
        index = self.candidates.clamp(min=0)
        index = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
        out = x.gather(1, index)
        pad = (self.candidates < 0).reshape(*index.shape[:2], *([1] * (x.dim() - 2)))
        return out.masked_fill(pad, 0)


class CueSource:
    """Base class of cue sources. Subclass, set the class attributes, override what the
    source uses, and return the class from a plugin's ``tokenprune_cues`` hook.

    Class attributes:
        names: the cue names it provides (what strategies list in ``requires`` and read
            with ``cues.require(name, by)``); identifiers, unique across plugins.
        description: one line for listings.
        per_candidate: True if every tensor it returns is ``(B, N, ...)``, aligned with
            the candidates (checked against the layout); False for per-sample cues such
            as the prompt's text embeddings ``(B, T, H)``.
        uses_attention: True if it reads the attention of the decoder layer before the
            point (`on_attention`); such a cue does not exist at ``"input"`` or layer 0.
    """

    names: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    per_candidate: ClassVar[bool] = True
    uses_attention: ClassVar[bool] = False

    def check(self, point: Point, adapter: Adapter) -> None:
        """Raise `tokenprune.CueError` (naming the cue, the point and why) if the cue
        cannot be captured at ``point`` of ``adapter``'s model. Called when the block is
        built. Default: an attention source needs a decoder layer before the point."""
        from tokenprune.errors import CueError

        if self.uses_attention and (point == "input" or point == 0):
            where = "layer=0" if point == 0 else 'layer="input"'
            raise CueError(
                f"{self.names[0]}: needs the attention of the decoder layer before the prune "
                f"point, but {where} has none; use a layer >= 1"
            )

    def open(self, adapter: Adapter) -> None:
        """Install hooks outside the language model (e.g. in the vision tower) when the
        block is entered. Must be undone by `close`."""

    def close(self) -> None:
        """Undo `open` (idempotent; also called after an error in `open`)."""

    def on_attention(self, capture: Capture, query: Tensor, key: Tensor, scaling: float) -> None:
        """Read the attention of the decoder layer before the point (only if
        ``uses_attention``).

        Args:
            capture: the point's `Capture` (``hidden`` not yet set); keep results in
                ``capture.store``.
            query: ``(B, Hq, L, d)`` post-RoPE queries; key: ``(B, Hkv, L, d)`` post-RoPE
                keys (grouped-query heads shared), over the point's slots.
            scaling: the softmax scale the layer uses.
        """

    def capture(self, capture: Capture) -> dict[str, Tensor]:
        """The cue tensors by name (a subset of ``names``: those it could capture).

        Per-candidate tensors are ``(B, N, ...)`` in candidate order, zero (or any finite
        value) at padding candidates; floating point, on the model's device."""
        raise NotImplementedError

