"""LLaVA (``LlavaForConditionalGeneration``, llava-1.5): one square grid per image.

The vision tower sees a square image of ``image_size`` px in ``patch_size`` px patches
and returns ``[CLS] + patches`` (row-major); ``vision_feature_select_strategy="default"``
drops the first token (the CLS), ``"full"`` keeps it. Each image's features then fill its
placeholders in order (``masked_scatter``): 576 = 24 x 24 tokens at 336 / 14 px.
"""

from __future__ import annotations

from typing import Any

from tokenprune.adapters.base import Adapter
from tokenprune.adapters.builder import FULL_IMAGE, SampleBuilder
from tokenprune.adapters.inputs import (
    input_ids_of,
    model_type,
    no_visual_tokens,
    pair,
    visual_token_mask,
)
from tokenprune.errors import LayoutError, UnsupportedModelError
from tokenprune.layout import Layout

__all__ = ["Llava", "grid_side", "layout", "tower_tokens"]

#: Vision towers whose output starts with a CLS token, by ``vision_config.model_type``.
_TOWERS_WITH_CLS = {"clip_vision_model": True, "siglip_vision_model": False}


def grid_side(config: Any) -> tuple[int, int]:
    """(rows, cols) of patches of one tower image: ``image_size // patch_size``."""
    height, width = pair(config.vision_config.image_size)
    patch_h, patch_w = pair(config.vision_config.patch_size)
    return height // patch_h, width // patch_w


def tower_tokens(config: Any) -> tuple[int, int]:
    """(leading place-less tokens, dropped leading patches) of one image's features:
    the CLS if the tower has one and the strategy keeps it, and the first patch that
    ``"default"`` drops from a tower without CLS."""
    tower = config.vision_config.model_type
    if tower not in _TOWERS_WITH_CLS:
        raise UnsupportedModelError(
            f"model.config.vision_config.model_type: expected one of "
            f"{sorted(_TOWERS_WITH_CLS)} (towers with a known token order), got {tower!r}"
        )
    has_cls = _TOWERS_WITH_CLS[tower]
    drop_first = config.vision_feature_select_strategy == "default"
    return int(has_cls and not drop_first), int(drop_first and not has_cls)


def layout(model: Any, **inputs: Any) -> Layout:
    """The `Layout` of the image placeholders in ``inputs["input_ids"] (B, L)``.

    Every image is one region, ``(image_size // patch_size)`` square (24 x 24), its box
    the whole square image the tower sees. Images are told apart by counting tokens,
    so several images per sample and ragged batches work.
    """
    input_ids = input_ids_of(inputs)
    counts = visual_token_mask(model, input_ids).sum(dim=1).tolist()
    if sum(counts) == 0:
        return no_visual_tokens(input_ids)
    rows, cols = grid_side(model.config)
    cls, dropped = tower_tokens(model.config)
    per_image = cls + rows * cols - dropped

    samples = []
    for b, count in enumerate(counts):
        if count % per_image:
            raise LayoutError(
                f"input_ids: expected a multiple of {per_image} image tokens per sample "
                f"({per_image} per image), got {count} in sample {b}"
            )
        sample = SampleBuilder()
        for image in range(count // per_image):
            sample.unplaced(cls)
            sample.region(rows, cols, image=image, box=FULL_IMAGE, skip=dropped)
        samples.append(sample.build())
    return Layout.stack(samples).to(input_ids.device)


class Llava(Adapter):
    """LLaVA-1.5: image placeholders ``config.image_token_index``, a Llama-like language
    model, 1-D positions; every family fact beyond the layout is the `Adapter` default."""

    name = "llava"
    description = "LLaVA-1.5 (LlavaForConditionalGeneration): one 24x24 row-major grid per image"

    @classmethod
    def matches(cls, model: Any) -> bool:
        return model_type(model) == "llava"

    def layout(self, **inputs: Any) -> Layout:
        return layout(self.model, **inputs)

    def vision_cls_attention(self) -> tuple[Any, str, slice] | None:
        config = self.model.config
        cls, dropped = tower_tokens(config)
        feature_layer = config.vision_feature_layer
        tower = self.vision_tower()
        if dropped or not isinstance(feature_layer, int) or tower is None:
            return None  # no CLS token (SigLIP), or features from several layers
        # transformers 5 puts the encoder on the tower itself; older versions one level down.
        layers = getattr(tower, "vision_model", tower).encoder.layers
        # hidden_states[0] is the embedding output; hidden_states[i] is layer i - 1's.
        index = feature_layer % (len(layers) + 1) - 1
        if index < 0:
            return None
        return layers[index].self_attn, "vision_config", slice(1 - cls, None)
