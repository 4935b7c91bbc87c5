"""InternVL (``InternVLForConditionalGeneration``, InternVL2.5 / 3 in transformers format).

The processor resizes each image to a canvas of ``rows x cols`` tiles of 448 px (the
canvas whose aspect ratio is closest to the image's, with ``min_patches <= rows * cols
<= max_patches``), cuts it into tiles row-major and, when there is more than one tile,
appends a thumbnail of the whole image. The model turns each tile's 32 x 32 patches into
16 x 16 tokens by pixel shuffle (token (i, j) covers patches 2i..2i+1, 2j..2j+1), row-major.

The processor drops the canvas shape (a 7-tile image may be 2 x 3 or 3 x 2 plus the
thumbnail), so without the original image sizes every tile is its own 16 x 16 region
with an unknown place on the image; pass ``image_sizes`` to get each tile's box.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tokenprune._values import is_int
from tokenprune.adapters.base import Adapter
from tokenprune.adapters.builder import FULL_IMAGE, SampleBuilder
from tokenprune.adapters.inputs import (
    assign_images,
    image_sizes_of,
    input_ids_of,
    model_type,
    no_visual_tokens,
    pair,
    visual_token_mask,
)
from tokenprune.errors import LayoutError, UnsupportedModelError
from tokenprune.layout import Layout

__all__ = ["InternVL", "canvas", "layout", "tile_side", "tiles_per_image"]

#: The InternVL processor's defaults (``GotOcr2ImageProcessor``: min_patches, max_patches).
MIN_PATCHES, MAX_PATCHES = 1, 12


def tile_side(config: Any) -> tuple[int, int]:
    """(rows, cols) of tokens per tile: patches per side times ``downsample_ratio``."""
    if config.vision_feature_select_strategy != "default":
        raise UnsupportedModelError(
            "model.config.vision_feature_select_strategy: expected 'default' (the InternVL "
            "tower's CLS token must be dropped before pixel shuffle), got "
            f"{config.vision_feature_select_strategy!r}"
        )
    height, width = pair(config.vision_config.image_size)
    patch_h, patch_w = pair(config.vision_config.patch_size)
    ratio = config.downsample_ratio
    return int(height // patch_h * ratio), int(width // patch_w * ratio)


def canvas(
    image_size: tuple[int, int], tile: tuple[int, int], min_tiles: int, max_tiles: int
) -> tuple[int, int]:
    """(rows, cols) of tiles the InternVL processor resizes an image of ``image_size``
    (height, width) to.

    The processor's rule: among grids with ``min_tiles <= rows * cols <= max_tiles``,
    visited by increasing tile count, take the one whose aspect ratio ``cols / rows`` is
    closest to the image's; on a tie, a later grid wins while the image's area exceeds
    half the grid's area in pixels.
    """
    height, width = image_size
    aspect = width / height
    grids = [
        (cols, rows)
        for cols in range(1, max_tiles + 1)
        for rows in range(1, max_tiles + 1)
        if min_tiles <= cols * rows <= max_tiles
    ]
    grids.sort(key=lambda grid: grid[0] * grid[1])
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile[0] * tile[1] * cols * rows:
            best = (cols, rows)
    return best[1], best[0]


def tiles_per_image(grid: tuple[int, int]) -> int:
    """Tiles (pixel_values rows) of an image on a ``grid`` of (rows, cols): the thumbnail
    is added only when there is more than one tile."""
    count = grid[0] * grid[1]
    return count + 1 if count > 1 else 1


def layout(model: Any, **inputs: Any) -> Layout:
    """The `Layout` of the image placeholders in ``inputs["input_ids"] (B, L)``.

    One region per tile (16 x 16), tiles in sequence order, thumbnail last.

    Optional inputs beyond the model's own:
        image_sizes: (height, width) of every image of the batch in order (a sequence or
            a ``(I, 2)`` tensor): recomputes each image's canvas, checks its token count
            and fills ``region_boxes``.
        min_patches, max_patches: the processor's tiling limits (default 1 and 12).

    Without ``image_sizes``, each run of consecutive placeholders is one image (the
    processor wraps each in ``<img>``/``</img>``); only the thumbnail's and a lone
    tile's boxes are known then.
    """
    input_ids = input_ids_of(inputs)
    mask = visual_token_mask(model, input_ids)
    counts = mask.sum(dim=1).tolist()
    if sum(counts) == 0:
        return no_visual_tokens(input_ids)
    side = tile_side(model.config)
    per_tile = side[0] * side[1]
    if inputs.get("image_sizes") is None:
        samples = [_per_tile(row, side) for row in mask.cpu()]
    else:
        samples = _on_canvas(model, inputs, counts, side)
    for b, (sample, count) in enumerate(zip(samples, counts)):
        if sample.num_tokens != count:
            raise LayoutError(
                f"input_ids: expected whole tiles of {per_tile} image tokens per image, got "
                f"{count} image tokens in sample {b}"
            )
    return Layout.stack([s.build() for s in samples]).to(input_ids.device)


def _per_tile(mask: Tensor, side: tuple[int, int]) -> SampleBuilder:
    """One sample without image sizes: ``mask (L,)`` bool marks its placeholders."""
    per_tile = side[0] * side[1]
    sample = SampleBuilder()
    for image, length in enumerate(_runs(mask)):
        tiles = length // per_tile
        for t in range(tiles):
            # A lone tile and the thumbnail (last of several) show the whole image.
            known = tiles == 1 or t == tiles - 1
            sample.region(*side, image=image, box=FULL_IMAGE if known else None)
    return sample


def _runs(mask: Tensor) -> list[int]:
    """Lengths of the runs of True in ``mask (L,)``, in order."""
    edges = torch.diff(mask.long(), prepend=mask.new_zeros(1).long(), append=mask.new_zeros(1).long())
    starts = (edges == 1).nonzero().flatten()
    ends = (edges == -1).nonzero().flatten()
    return (ends - starts).tolist()


def _on_canvas(
    model: Any, inputs: dict[str, Any], counts: list[int], side: tuple[int, int]
) -> list[SampleBuilder]:
    """Every sample, with each image's canvas recomputed from its size."""
    config = model.config
    tile = pair(config.vision_config.image_size)
    low = inputs.get("min_patches", MIN_PATCHES)
    high = inputs.get("max_patches", MAX_PATCHES)
    low = MIN_PATCHES if low is None else low
    high = MAX_PATCHES if high is None else high
    if not (is_int(low) and is_int(high) and 1 <= low <= high):
        raise LayoutError(
            f"min_patches, max_patches: expected ints with 1 <= min_patches <= max_patches, "
            f"got {low!r}, {high!r}"
        )
    low, high = int(low), int(high)
    sizes = image_sizes_of(inputs["image_sizes"], "InternVL")
    # The processor tiles only when it may use more than one tile.
    grids = {s: canvas(s, tile, low, high) if high > 1 else (1, 1) for s in set(sizes)}
    per_tile = side[0] * side[1]

    def tokens(size: tuple[int, int]) -> int:
        return per_tile * tiles_per_image(grids[size])

    per_sample = assign_images(counts, sizes, tokens, "InternVL")
    pixel_values = inputs.get("pixel_values")
    tiles = sum(tiles_per_image(grids[s]) for s in sizes)
    if isinstance(pixel_values, Tensor) and pixel_values.shape[0] != tiles:
        raise LayoutError(
            f"pixel_values: expected {tiles} tiles for image_sizes {sizes} "
            f"(min_patches={low}, max_patches={high}), got {pixel_values.shape[0]}"
        )
    samples = []
    for images in per_sample:
        sample = SampleBuilder()
        for j, i in enumerate(images):
            rows, cols = grids[sizes[i]]
            for t in range(rows * cols):
                r, c = divmod(t, cols)
                box = (r / rows, c / cols, (r + 1) / rows, (c + 1) / cols)
                sample.region(*side, image=j, box=box)
            if rows * cols > 1:
                sample.region(*side, image=j, box=FULL_IMAGE)
        samples.append(sample)
    return samples


class InternVL(Adapter):
    """InternVL: a Qwen2 / Llama language model with 1-D positions; ``image_sizes``,
    ``min_patches`` and ``max_patches`` are optional extra inputs of the layout (the
    model itself does not take them)."""

    name = "internvl"
    description = (
        "InternVL (InternVLForConditionalGeneration): 16x16 tokens per 448 px tile, tiles "
        "row-major over the canvas, thumbnail last; one region per tile"
    )

    @classmethod
    def matches(cls, model: Any) -> bool:
        return model_type(model) == "internvl"

    def layout(self, **inputs: Any) -> Layout:
        return layout(self.model, **inputs)
