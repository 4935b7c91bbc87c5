"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``, llava-v1.6): base grid + anyres grid.

Per image, ``pack_image_features`` lays out, in order:

1. the base image (resized to one tile): a 24 x 24 grid, no separators (region ``2i``);
2. the high-resolution tiles chosen by ``select_best_resolution(image_size,
   image_grid_pinpoints)``, stitched into one ``(rows * 24, cols * 24)`` grid, cropped by
   ``unpad_image`` to the image's aspect ratio, with one ``image_newline`` token (no place)
   after every row (region ``2i + 1``).

A 500 (h) x 700 (w) image at the llava-v1.6 pinpoints: 576 + 34 * (48 + 1) = 2242 tokens.
The geometry comes from transformers' own helpers, so it follows the installed version.
"""

from __future__ import annotations

from typing import Any

import torch

from tokenprune.adapters.base import Adapter
from tokenprune.adapters.builder import FULL_IMAGE, SampleBuilder
from tokenprune.adapters.images import ImageInputs
from tokenprune.adapters.inputs import (
    assign_images,
    image_sizes_of,
    input_ids_of,
    model_type,
    no_visual_tokens,
    visual_token_mask,
)
from tokenprune.adapters.llava import grid_side, tower_tokens
from tokenprune.errors import LayoutError, UnsupportedModelError
from tokenprune.layout import Layout

__all__ = ["LlavaNext", "high_res_shape", "layout", "tokens_per_image"]


def high_res_shape(config: Any, image_size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) in tokens of the unpadded high-resolution grid of an image of
    ``image_size`` (height, width); a very thin image may keep 0 rows or columns."""
    # Imported here: the registry loads every adapter, and transformers is optional.
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
        unpad_image,
    )

    tile = config.vision_config.image_size
    tiles_h, tiles_w = get_anyres_image_grid_shape(list(image_size), config.image_grid_pinpoints, tile)
    rows, cols = grid_side(config)
    # unpad_image only slices, so an empty-channel stand-in gives the cropped shape.
    cropped = unpad_image(torch.empty(0, tiles_h * rows, tiles_w * cols), list(image_size))
    return int(cropped.shape[1]), int(cropped.shape[2])


def tokens_per_image(config: Any, image_size: tuple[int, int]) -> int:
    """Placeholder tokens of one image: base grid + high-res rows each with a separator."""
    rows, cols = grid_side(config)
    height, width = high_res_shape(config, image_size)
    return rows * cols + height * (width + 1)


def layout(model: Any, **inputs: Any) -> Layout:
    """The `Layout` of the image placeholders in ``inputs["input_ids"] (B, L)``.

    Needs ``inputs["image_sizes"]``: the (height, width) of every image of the batch in
    order, a ``(I, 2)`` tensor as the processor returns it. Two regions per image: the
    base grid and the unpadded high-resolution grid (separators have no place); both
    boxes are the whole image.
    """
    input_ids = input_ids_of(inputs)
    counts = visual_token_mask(model, input_ids).sum(dim=1).tolist()
    if sum(counts) == 0:
        return no_visual_tokens(input_ids)
    config = model.config
    if tower_tokens(config) != (0, 0):
        raise UnsupportedModelError(
            f"model.config.vision_feature_select_strategy: expected a value that gives "
            f"exactly one token per patch for tower {config.vision_config.model_type!r} "
            f"(pack_image_features needs it), got {config.vision_feature_select_strategy!r}"
        )
    if inputs.get("image_sizes") is None:
        raise LayoutError(
            "image_sizes: expected the (height, width) of each of the batch's images "
            "(LLaVA-NeXT's processor returns it as a (I, 2) tensor), got None"
        )
    sizes = image_sizes_of(inputs["image_sizes"], "LLaVA-NeXT")
    shapes = {size: high_res_shape(config, size) for size in set(sizes)}
    counts_of = {size: tokens_per_image(config, size) for size in shapes}
    rows, cols = grid_side(config)

    samples = []
    for images in assign_images(counts, sizes, counts_of.__getitem__, "LLaVA-NeXT"):
        sample = SampleBuilder()
        for j, i in enumerate(images):
            sample.region(rows, cols, image=j, box=FULL_IMAGE)
            sample.region(*shapes[sizes[i]], image=j, box=FULL_IMAGE, separators=True)
        samples.append(sample.build())
    return Layout.stack(samples).to(input_ids.device)


class LlavaNext(Adapter):
    """LLaVA-NeXT: the layout needs ``image_sizes``, which ``generate()`` consumes when it
    encodes the images before the prefill; `open` installs a recorder that maps the
    encoded features back to their sizes (`tokenprune.adapters.images`)."""

    name = "llava_next"
    description = (
        "LLaVA-NeXT (LlavaNextForConditionalGeneration): base 24x24 grid, then the unpadded "
        "anyres grid with a separator after each row; two regions per image"
    )

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.recorders = (ImageInputs(model),)

    @classmethod
    def matches(cls, model: Any) -> bool:
        return model_type(model) == "llava_next"

    def layout(self, **inputs: Any) -> Layout:
        return layout(self.model, **inputs)

