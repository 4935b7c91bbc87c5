"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): anyres images, pooled videos.

Per image, ``pack_image_features`` lays out (like LLaVA-NeXT):

1. the base image: one ``S x S`` grid (S = image_size // patch_size: 27 at 384 / 14), no
   separators;
2. the high-resolution tiles of ``select_best_resolution(image_size, image_grid_pinpoints)``
   stitched into one grid, cropped by ``unpad_image``, then, if it still holds more than
   1.1 x ``anyres_max_N`` tiles' worth of tokens, resized (bilinear) down to about N
   tiles' worth; one ``image_newline`` token (no place) after every row.

An image of a sample with several images (``batch_num_images > 1``) is its base grid and
one trailing newline. Per video, every frame is pooled to ``ceil(S / 2)`` square (14 x 14)
and the frames follow each other, with one newline after the last.

Layout: base grid and high-resolution grid are two regions of the image; each video frame
is a region with its ``region_frames`` index; newlines have no place.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tokenprune.adapters.base import Adapter
from tokenprune.adapters.builder import FULL_IMAGE, SampleBuilder
from tokenprune.adapters.images import ImageInputs
from tokenprune.adapters.inputs import (
    assign_images,
    image_or_video_mask,
    image_sizes_of,
    input_ids_of,
    model_type,
    no_visual_tokens,
)
from tokenprune.adapters.llava import grid_side, tower_tokens
from tokenprune.errors import LayoutError, UnsupportedModelError
from tokenprune.layout import Layout

__all__ = ["LlavaOnevision", "high_res_shape", "image_tokens", "layout", "matches", "video_frame_side"]


def matches(model: Any) -> bool:
    return model_type(model) == "llava_onevision"


def _max_tiles(aspect: Any) -> int:
    if not isinstance(aspect, str) or not aspect.startswith("anyres_max_") or not aspect[11:].isdigit():
        raise UnsupportedModelError(
            f"vision_aspect_ratio: expected 'anyres_max_N' (LLaVA-OneVision), got {aspect!r}"
        )
    return int(aspect[11:])


def high_res_shape(config: Any, image_size: tuple[int, int], aspect: str) -> tuple[int, int]:
    """(height, width) in tokens of the high-resolution grid of an image of ``image_size``
    (height, width) after unpadding and the ``anyres_max_N`` downscale."""
    # Imported here: the registry loads every adapter, and transformers is optional.
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        get_anyres_image_grid_shape,
        unpad_image,
    )

    side = grid_side(config)[0]
    tiles_h, tiles_w = get_anyres_image_grid_shape(
        list(image_size), config.image_grid_pinpoints, config.vision_config.image_size
    )
    cropped = unpad_image(torch.empty(0, tiles_h * side, tiles_w * side), list(image_size))
    height, width = int(cropped.shape[1]), int(cropped.shape[2])
    ratio = math.sqrt(height * width / (_max_tiles(aspect) * side**2))
    if ratio > 1.1:
        height, width = int(height // ratio), int(width // ratio)
    return height, width


def image_tokens(config: Any, image_size: tuple[int, int], aspect: str, anyres: bool) -> int:
    """Placeholder tokens of one image: base grid, then the high-resolution rows each with
    a newline (``anyres``), or one newline."""
    side = grid_side(config)[0]
    if not anyres:
        return side * side + 1
    height, width = high_res_shape(config, image_size, aspect)
    return side * side + height * (width + 1)


def video_frame_side(config: Any) -> int:
    """Side of a pooled video frame: ``ceil(S / 2)``."""
    return -(-grid_side(config)[0] // 2)


def layout(model: Any, **inputs: Any) -> Layout:
    """The `Layout` of the image and video placeholders in ``inputs["input_ids"] (B, L)``.

    Needs ``image_sizes`` with images (the processor returns it); reads
    ``batch_num_images`` (images per sample) when given, as the model does, and the
    frame count from ``pixel_values_videos (V, F, C, H, W)`` when given (else from the
    token counts). With pre-encoded ``mm_encoder_outputs`` (as ``generate()`` passes
    them) each image's token count tells whether it was tiled and each video's its
    frames.
    """
    input_ids = input_ids_of(inputs)
    config = model.config
    image_mask = input_ids == config.image_token_id
    video_mask = input_ids == config.video_token_id
    if not bool(image_mask.any()) and not bool(video_mask.any()):
        return no_visual_tokens(input_ids)
    strategy = inputs.get("vision_feature_select_strategy") or config.vision_feature_select_strategy
    if grid_side(config)[0] != grid_side(config)[1] or tower_tokens(_with_strategy(config, strategy)) != (0, 0):
        raise UnsupportedModelError(
            f"vision_feature_select_strategy: LLaVA-OneVision packs one token per patch of a square "
            f"grid; expected a strategy that keeps exactly the patches of tower "
            f"{config.vision_config.model_type!r}, got {strategy!r}"
        )
    aspect = inputs.get("vision_aspect_ratio") or config.vision_aspect_ratio
    _max_tiles(aspect)
    images = _images(config, inputs, image_mask.sum(dim=1).tolist(), aspect)
    videos = _videos(config, inputs, video_mask.sum(dim=1).tolist())
    samples = []
    for b in range(input_ids.shape[0]):
        visuals = _in_sequence_order(image_mask[b], images[b], video_mask[b], videos[b], config, aspect, b)
        samples.append(_sample(visuals, config, aspect))
    return Layout.stack(samples).to(input_ids.device)


def _in_sequence_order(
    image_mask: Tensor, images: list[tuple], video_mask: Tensor, videos: list[int], config: Any, aspect: str, b: int
) -> list[tuple[str, Any]]:
    """One sample's images and videos ordered by where their placeholder runs start;
    refuses runs that interleave (no processor writes them)."""
    frame = video_frame_side(config) ** 2
    runs = []
    for kind, mask, items, count in (
        ("image", image_mask, images, lambda item: image_tokens(config, item[0], aspect, item[1])),
        ("video", video_mask, videos, lambda frames: frames * frame + 1),
    ):
        positions = mask.nonzero().flatten().tolist()
        start = 0
        for item in items:
            runs.append((positions[start], kind, item, count(item)))
            start += count(item)
    runs.sort(key=lambda run: run[0])
    expected = [kind for _, kind, _, n in runs for _ in range(n)]
    found = ["image" if is_image else "video" for is_image in image_mask[image_mask | video_mask].tolist()]
    if expected != found:
        raise LayoutError(
            f"input_ids: expected each LLaVA-OneVision image's and video's placeholders in one "
            f"run, got image and video placeholders interleaved in sample {b}"
        )
    return [(kind, item) for _, kind, item, _ in runs]


def _sample(visuals: list[tuple[str, Any]], config: Any, aspect: str) -> Layout:
    side = grid_side(config)[0]
    frame = video_frame_side(config)
    sample = SampleBuilder()
    for visual, (kind, item) in enumerate(visuals):
        if kind == "image":
            size, anyres = item
            sample.region(side, side, image=visual, box=FULL_IMAGE)
            if anyres:
                shape = high_res_shape(config, size, aspect)
                sample.region(*shape, image=visual, box=FULL_IMAGE, separators=True)
            else:
                sample.unplaced(1)
        else:
            for f in range(item):
                sample.region(frame, frame, image=visual, box=FULL_IMAGE, frame=f)
            sample.unplaced(1)
    return sample.build()


def _with_strategy(config: Any, strategy: str) -> Any:
    class _View:
        vision_config = config.vision_config
        vision_feature_select_strategy = strategy

    return _View()


def _first(mask: Tensor) -> int:
    hits = mask.nonzero()
    return int(hits[0, 0]) if len(hits) else mask.numel()


def _images(config: Any, inputs: dict[str, Any], counts: list[int], aspect: str) -> list[list[tuple]]:
    """Per sample, its images as ((height, width), anyres)."""
    if not sum(counts):
        return [[] for _ in counts]
    if inputs.get("image_sizes") is None:
        raise LayoutError(
            "image_sizes: expected the (height, width) of each of the batch's images "
            "(LLaVA-OneVision's processor returns it as a (I, 2) tensor), got None"
        )
    sizes = image_sizes_of(inputs["image_sizes"], "LLaVA-OneVision")
    per_image = inputs.get("batch_num_images")
    encoded = _encoded(inputs, "image")
    side = grid_side(config)[0]
    if isinstance(encoded, (list, tuple)) and len(encoded) == len(sizes):
        # A base grid with one newline is an untiled image; a tiled one never has that length.
        anyres = [int(feature.shape[0]) != side * side + 1 for feature in encoded]
    elif per_image is None:
        anyres = [True] * len(sizes)
    else:
        numbers = [int(n) for n in torch.as_tensor(per_image).flatten().tolist()]
        anyres = [n == 1 for n in numbers for _ in range(n)]
        if len(anyres) != len(sizes):
            raise LayoutError(
                f"batch_num_images: expected counts summing to the {len(sizes)} images of "
                f"image_sizes, got {numbers}"
            )
    items = list(zip(sizes, anyres))
    assigned = assign_images(
        counts, items, lambda item: image_tokens(config, item[0], aspect, item[1]), "LLaVA-OneVision image"
    )
    return [[items[i] for i in mine] for mine in assigned]


def _videos(config: Any, inputs: dict[str, Any], counts: list[int]) -> list[list[int]]:
    """Per sample, the frame count of each of its videos."""
    frame = video_frame_side(config) ** 2
    pixels = inputs.get("pixel_values_videos")
    encoded = _encoded(inputs, "video")
    if isinstance(encoded, Tensor) and encoded.dim() == 3 and (encoded.shape[1] - 1) % frame == 0:
        videos = [(int(encoded.shape[1]) - 1) // frame] * int(encoded.shape[0])
        assigned = assign_images(counts, videos, lambda f: f * frame + 1, "LLaVA-OneVision video")
        return [[videos[i] for i in mine] for mine in assigned]
    if isinstance(pixels, Tensor):
        if pixels.dim() != 5:
            raise LayoutError(
                f"pixel_values_videos: expected shape (V, F, C, H, W), got {tuple(pixels.shape)}"
            )
        videos = [int(pixels.shape[1])] * int(pixels.shape[0])
        assigned = assign_images(counts, videos, lambda f: f * frame + 1, "LLaVA-OneVision video")
        return [[videos[i] for i in mine] for mine in assigned]
    out = []
    for b, count in enumerate(counts):
        if count and (count - 1) % frame:
            raise LayoutError(
                f"input_ids: expected {frame} video tokens per frame plus one newline per video "
                f"in sample {b}, got {count} (pass pixel_values_videos to tell several videos apart)"
            )
        out.append([(count - 1) // frame] if count else [])
    return out


def _encoded(inputs: dict[str, Any], modality: str) -> Any:
    """The pooled features of ``modality`` in ``inputs["mm_encoder_outputs"]``, or None."""
    outputs = inputs.get("mm_encoder_outputs")
    output = outputs.get(modality) if isinstance(outputs, dict) else None
    return getattr(output, "pooler_output", None)


ADAPTER_DESCRIPTION = (
    "LLaVA-OneVision (LlavaOnevisionForConditionalGeneration): base grid + unpadded anyres "
    "grid with row newlines per image; one pooled region per video frame"
)


class LlavaOnevision(Adapter):
    """LLaVA-OneVision: images (base + anyres grid) and videos (pooled frames); 1-D
    positions. ``generate()`` encodes the visuals before the prefill and drops
    ``image_sizes``; they are recovered from the encoder call it made."""

    name = "llava_onevision"
    description = ADAPTER_DESCRIPTION

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.recorders = (ImageInputs(model),)

    @classmethod
    def matches(cls, model: Any) -> bool:
        return matches(model)

    def layout(self, **inputs: Any) -> Layout:
        return layout(self.model, **inputs)

    def visual_mask(self, input_ids: Tensor) -> Tensor:
        return image_or_video_mask(self.model, input_ids)
