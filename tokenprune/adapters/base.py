"""`Adapter`: every fact about one model family that the engine needs, in one class.

The engine names no family. For a model it asks the registry for an adapter (the
``tokenprune_adapter`` hook, see `tokenprune.hookspecs`) and then only calls the methods
below. A family subclasses `Adapter`, sets ``name`` and ``description``, implements
`Adapter.matches` and `Adapter.layout`, and overrides the defaults that do not fit it.
The defaults describe transformers' usual VLM: image placeholders in ``input_ids``, a
language model (``LlamaModel``-like) that receives ``inputs_embeds`` and has ``layers`` of
decoder layers with ``self_attn.k_proj``, and 1-D position ids ``(B, L)``.

Vocabulary (used across tokenprune):

- ``seq_index``: a token's index in the ``input_ids`` row (the sequence).
- ``coords``: a visual token's (row, col) in its region, see `tokenprune.Layout`.
- prune *point*: ``"input"`` (the visual embeddings before decoder layer 0) or an int, the
  first decoder layer that sees only the kept tokens.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from tokenprune.adapters.inputs import image_token_id
from tokenprune.errors import UnsupportedModelError

__all__ = ["Adapter", "Point", "TextStack"]

#: A prune point: ``"input"`` or a decoder layer index.
Point = int | str


class TextStack:
    """The language model of a VLM, as the engine sees it.

    Attributes:
        model: the language model (e.g. ``LlamaModel``): it receives ``inputs_embeds``
            (the visual embeddings already scattered into the placeholders).
        layers: its decoder layers, in order.
        config: the text config (shared by the language model and its layers).
        config_key: name of ``config`` among the VLM config's ``sub_configs``, for
            ``model.set_attn_implementation({config_key: ...})``.
    """

    def __init__(self, model: nn.Module, layers: nn.ModuleList, config: Any, config_key: str):
        self.model, self.layers, self.config, self.config_key = model, layers, config, config_key

    @property
    def num_layers(self) -> int:
        return len(self.layers)


class Adapter:
    """A model family. Bound to one model instance: ``adapter = Family(model)``.

    Subclass it and register the class from a plugin's ``tokenprune_adapters`` hook:

    ```python
    class MyFamily(tokenprune.Adapter):
        name = "my_family"
        description = "MyVLM: one 24x24 grid per image"

        @classmethod
        def matches(cls, model):
            return model.config.model_type == "my_vlm"

        def layout(self, **inputs):
            ...
    ```

    Class attributes:
        name: the registered name (an identifier), listed by ``tokenprune.available()``.
        description: one line for listings.
        points: the prune points the family supports: ``"input"`` and/or ``"layer"``
            (any decoder layer).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    points: ClassVar[frozenset[str]] = frozenset({"input", "layer"})

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, model={type(self.model).__name__})"

    # ----------------------------------------------------------------- matching
    @classmethod
    def matches(cls, model: Any) -> bool:
        """True if this family describes ``model`` (a full VLM or its bare base model)."""
        raise NotImplementedError

    # ------------------------------------------------------------------- layout
    def layout(self, **inputs: Any):
        """The `Layout` of the visual tokens of ``inputs["input_ids"] (B, L)``: sample b's
        visual tokens (those `visual_mask` marks) in ``input_ids`` order, padded with
        ``valid=False`` to the batch's most; N = 0 without any visual token.

        Args:
            **inputs: the model's forward / ``generate()`` inputs (unused keys ignored),
                after `recover_inputs`.
        """
        raise NotImplementedError

    def visual_mask(self, input_ids: Tensor) -> Tensor:
        """``(B, L)`` bool: the positions of ``input_ids (B, L)`` whose embeddings the model
        replaces with visual features (the prune candidates). Default: the image
        placeholder ``config.image_token_id`` (or ``image_token_index``)."""
        return input_ids == image_token_id(self.model)

    # --------------------------------------------------------- generate() inputs
    #: Recorders of inputs that ``generate()`` hides (`tokenprune.adapters.images.ImageInputs`
    #: or anything with ``open()``, ``close()`` and ``recover(inputs)``): the default `open`,
    #: `close` and `recover_inputs` run each in turn. Empty: nothing is hidden.
    recorders: tuple[Any, ...] = ()

    def open(self) -> None:
        """Called when a ``prune`` block is entered: install what `recover_inputs` needs
        (e.g. a recorder of inputs that ``generate()`` consumes before the prefill).
        Must be undone by `close`. Default: open every recorder."""
        for recorder in self.recorders:
            recorder.open()

    def close(self) -> None:
        """Undo `open` (idempotent; also called after an error in `open`)."""
        for recorder in self.recorders:
            recorder.close()

    def recover_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The prefill's forward inputs with what ``generate()`` hid from them restored
        (LLaVA-NeXT: ``image_sizes``, which ``generate()`` consumes when it encodes the
        images first). Default: each recorder's ``recover`` in turn (``inputs`` unchanged
        without recorders)."""
        for recorder in self.recorders:
            inputs = recorder.recover(inputs)
        return inputs

    # ----------------------------------------------------- language-model stack
    @functools.cached_property
    def text(self) -> TextStack:
        """The language model: the one module whose config is the VLM's text config and
        that has ``layers``. Raises `UnsupportedModelError` when there is none."""
        return _find_text_stack(self.model)

    def attention(self, layer: int) -> nn.Module:
        """The self-attention module of decoder layer ``layer``: the module that calls
        transformers' attention interface with post-RoPE ``query`` / ``key``."""
        return self.text.layers[layer].self_attn

    def key_projection(self, layer: int) -> nn.Module | None:
        """The key projection of layer ``layer`` (``(B, N, H) -> (B, N, D)``, heads
        concatenated), for the ``keys`` cue; None if the layer has none."""
        projection = getattr(self.attention(layer), "k_proj", None)
        return projection if isinstance(projection, nn.Module) else None

    # ----------------------------------------------------------- position ids
    def position_ids(self, kwargs: dict[str, Any], length: int, device: torch.device) -> Tensor:
        """The position ids the language model's layers use for a prompt of ``length``
        tokens: ``kwargs["position_ids"]`` as given (``(B or 1, L)`` for 1-D RoPE;
        ``(3, B, L)`` / ``(4, B, L)`` for M-RoPE), else ``arange(L)`` as ``(1, L)``.

        The engine shortens them along the last dimension, so each kept token keeps its
        own (original) position ids whatever their number of axes."""
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            position_ids = torch.arange(length, device=device).unsqueeze(0)
        return position_ids

    def mask_positions(self, position_ids: Tensor) -> Tensor:
        """``(B, L)`` text positions for transformers' causal-mask functions, from position
        ids as `position_ids` returns them. Default: 1-D ids as they are; for M-RoPE ids
        ``(A, B, L)`` row 0 (Qwen-VL passes its text positions as row 0 of ``(4, B, L)``)."""
        return position_ids if position_ids.dim() == 2 else position_ids[0]

    def compact_positions(self, kept: Tensor, position_ids: Tensor) -> Tensor:
        """Position ids that renumber the kept tokens (``positions="compact"``).

        Args:
            kept: ``(B, L')`` bool, the slots of the shortened prompt that hold a token
                (right-aligned: left padding first).
            position_ids: the kept tokens' original ids, shortened (shape ``(..., B, L')``).

        Returns:
            Tensor of the same shape, numbering each sample's kept tokens 0, 1, ... (padding
            1) as ``generate()`` numbers a left-padded prompt. M-RoPE families must
            override this (the base refuses ids with an axis dimension).
        """
        if position_ids.dim() != 2:
            raise UnsupportedModelError(
                f"positions: 'compact' renumbers 1-D position ids, but {self.name} uses "
                f"{tuple(position_ids.shape)} ids; use positions='original' (the default)"
            )
        numbered = kept.long().cumsum(dim=1) - 1
        return numbered.masked_fill(~kept, 1).to(position_ids.dtype)

    # ------------------------------------------------- extra per-token tensors
    def shorten_inputs(self, point: Point, kwargs: dict[str, Any], plan: Any) -> dict[str, Any]:
        """Replacements for family-specific per-token inputs when tokens are dropped.

        Called at the prune point with the keyword arguments of the module that is about
        to run on the shortened sequence (the language model at ``"input"``, the decoder
        layer at a layer point) and the `tokenprune.engine.compact.Compaction` ``plan``
        (``plan.source (B, L')``: the slot each kept token moves to; ``plan.gather(x,
        dim)`` shortens a tensor). The engine already shortens ``inputs_embeds`` /
        ``hidden_states``, ``attention_mask``, ``position_ids`` and the rotary
        ``position_embeddings``; return the others (Qwen3-VL: ``visual_pos_masks`` and
        ``deepstack_visual_embeds``). Default: none."""
        return {}

    def check_point(self, point: Point) -> None:
        """Raise `UnsupportedModelError` if this family cannot be pruned at ``point``
        exactly (e.g. a layer whose inputs the family adds to inside the language model's
        own loop). Default: ``points`` decides."""
        kind = "input" if point == "input" else "layer"
        if kind not in self.points:
            raise UnsupportedModelError(
                f"layer: {self.name} supports prune points {sorted(self.points)}, got {point!r}"
            )

    # ------------------------------------------------------------ vision tower
    def vision_tower(self) -> nn.Module | None:
        """The vision encoder (for cues read inside it), or None. Default: the base
        model's ``vision_tower``."""
        base = getattr(self.model, "model", self.model)
        return getattr(base, "vision_tower", None)

    def vision_cls_attention(self) -> tuple[nn.Module, str, slice] | None:
        """Where the ``cls_attention`` cue (VisionZip) is read, or None if the family's
        tower has no CLS token (the cue is then refused).

        Returns:
            (the vision tower's attention module of the layer whose output becomes the
            visual features, the VLM config's sub-config key of the tower, the tower
            tokens of one image that become its candidates, in candidate order; e.g.
            ``slice(1, None)`` when the CLS token is dropped). Each image's candidates
            must be exactly those tokens, images in ``input_ids`` order.
        """
        return None


def _find_text_stack(model: nn.Module) -> TextStack:
    config = getattr(model, "config", None)
    get_text_config = getattr(config, "get_text_config", None)
    text_config = get_text_config() if get_text_config else None
    keys = [
        key
        for key in getattr(config, "sub_configs", {})
        if text_config is not None and getattr(config, key, None) is text_config
    ]
    if not keys:
        raise UnsupportedModelError(
            f"model: expected a vision-language model whose config has a text sub-config, "
            f"got {type(model).__name__}"
        )
    stacks = [
        module
        for module in model.modules()
        if getattr(module, "config", None) is text_config
        and isinstance(getattr(module, "layers", None), nn.ModuleList)
    ]
    if len(stacks) != 1 or not all(hasattr(layer, "self_attn") for layer in stacks[0].layers):
        raise UnsupportedModelError(
            f"model: expected one language model with `layers` of decoder layers that have "
            f"`self_attn`, got {len(stacks)} candidate(s) in {type(model).__name__}"
        )
    layer_types = getattr(text_config, "layer_types", None) or []
    other = sorted({kind for kind in layer_types if kind != "full_attention"})
    if other:
        raise UnsupportedModelError(
            f"model: expected full-attention decoder layers (the engine rebuilds one causal "
            f"mask for the pruned layers), got layer types {other} in config.layer_types"
        )
    return TextStack(stacks[0], stacks[0].layers, text_config, keys[0])
