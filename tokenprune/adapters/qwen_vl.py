"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: images and videos as grids of merged patches.

The vision tower cuts an image or video into ``patch_size`` px patches (14; Qwen3-VL: 16)
and ``temporal_patch_size`` (2) frames; ``grid_thw = (t, h, w)`` counts them. Its merger
joins each ``spatial_merge_size x spatial_merge_size`` (2 x 2) block of patches into one
token, so one visual gives ``t * (h / 2) * (w / 2)`` tokens: ``t`` frames (temporal
groups; a still image has t = 1), each a raster ``(h / 2, w / 2)`` grid. Images fill the
``image_token_id`` placeholders and videos the ``video_token_id`` ones, each in
``(B, L)`` order (``masked_scatter``); Qwen3-VL writes a timestamp between the frames of
a video, which changes nothing here.

Layout: one region per frame; ``region_images`` numbers the sample's images and videos
in sequence order, ``region_frames`` is the frame of a video's region (-1 for images).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from tokenprune.adapters.builder import FULL_IMAGE
from tokenprune.adapters.inputs import assign_images, input_ids_of, model_type, no_visual_tokens
from tokenprune.errors import LayoutError, UnsupportedModelError
from tokenprune.layout import Layout

__all__ = ["FAMILIES", "Grid", "grids_of", "layout", "matches", "merge_size", "tokens_of_grid"]

#: ``config.model_type`` of each family, with its name for messages.
FAMILIES = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}

#: (t, h, w): temporal groups and patch rows and columns of one image or video.
Grid = tuple[int, int, int]


def matches(model: Any) -> bool:
    return model_type(model) in FAMILIES


def family_name(model: Any) -> str:
    return FAMILIES.get(model_type(model) or "", type(model).__name__)


def merge_size(model: Any) -> int:
    """The merger's block side (``vision_config.spatial_merge_size``, 2)."""
    vision = getattr(model.config, "vision_config", None)
    size = getattr(vision, "spatial_merge_size", None)
    if not isinstance(size, int) or size < 1:
        raise UnsupportedModelError(
            f"model.config.vision_config.spatial_merge_size: expected an int >= 1 "
            f"({family_name(model)}), got {size!r}"
        )
    return size


def grids_of(value: Any, name: str, merge: int) -> list[Grid]:
    """``image_grid_thw`` / ``video_grid_thw`` (a ``(I, 3)`` tensor, or None) as a list,
    checked: every h and w a multiple of ``merge``."""
    if value is None:
        return []
    if type(value).__module__ == "numpy":
        value = torch.as_tensor(value)
    if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[1] != 3 or value.is_floating_point():
        got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise LayoutError(f"{name}: expected an integer tensor of shape (I, 3), one (t, h, w) per visual, got {got}")
    grids = [(int(t), int(h), int(w)) for t, h, w in value.tolist()]
    for i, (t, h, w) in enumerate(grids):
        if t < 1 or h < merge or w < merge or h % merge or w % merge:
            raise LayoutError(
                f"{name}[{i}]: expected t >= 1 and h, w positive multiples of the merge size "
                f"{merge}, got {(t, h, w)}"
            )
    return grids


def tokens_of_grid(grid: Grid, merge: int) -> int:
    """Placeholder tokens of one visual: ``t * (h / merge) * (w / merge)``."""
    t, h, w = grid
    return t * (h // merge) * (w // merge)


def layout(model: Any, **inputs: Any) -> Layout:
    """The `Layout` of the image and video placeholders in ``inputs["input_ids"] (B, L)``.

    Needs ``image_grid_thw`` when there are image placeholders and ``video_grid_thw``
    when there are video placeholders (the processor returns both). Every frame of every
    visual is one ``(h / 2, w / 2)`` region, its box the whole image.
    """
    input_ids = input_ids_of(inputs)
    config = model.config
    merge = merge_size(model)
    family = family_name(model)
    kinds = (("image", config.image_token_id), ("video", config.video_token_id))
    masks = {kind: input_ids == token for kind, token in kinds}
    if not any(bool(mask.any()) for mask in masks.values()):
        return no_visual_tokens(input_ids)
    per_sample: dict[str, list[list[Grid]]] = {}
    for kind, mask in masks.items():
        counts = mask.sum(dim=1).tolist()
        grids = grids_of(inputs.get(f"{kind}_grid_thw"), f"{kind}_grid_thw", merge)
        if sum(counts) and not grids:
            raise LayoutError(
                f"{kind}_grid_thw: expected the (t, h, w) of each {kind} ({family} has "
                f"{sum(counts)} {kind} placeholders), got None"
            )
        assigned = assign_images(counts, grids, lambda g: tokens_of_grid(g, merge), f"{family} {kind}")
        per_sample[kind] = [[grids[i] for i in mine] for mine in assigned]
    samples = [
        _sample(masks["image"][b], per_sample["image"][b], masks["video"][b], per_sample["video"][b], merge)
        for b in range(input_ids.shape[0])
    ]
    return Layout.stack(samples).to(input_ids.device)


def _visual_tokens(grids: Sequence[Grid], merge: int) -> Tensor:
    """``(N, 4)`` long (visual, frame, row, col) of the tokens of ``grids`` in order."""
    parts = []
    for v, (t, h, w) in enumerate(grids):
        f, r, c = torch.meshgrid(
            torch.arange(t), torch.arange(h // merge), torch.arange(w // merge), indexing="ij"
        )
        parts.append(torch.stack([torch.full_like(f, v), f, r, c], dim=-1).reshape(-1, 4))
    return torch.cat(parts) if parts else torch.zeros(0, 4, dtype=torch.long)


def _sample(
    image_mask: Tensor, images: list[Grid], video_mask: Tensor, videos: list[Grid], merge: int
) -> Layout:
    """One sample: its image and video tokens merged in sequence order."""
    image_tokens = _visual_tokens(images, merge)
    video_tokens = _visual_tokens(videos, merge)
    is_video = torch.cat([torch.zeros(len(image_tokens), dtype=torch.bool), torch.ones(len(video_tokens), dtype=torch.bool)])
    tokens = torch.cat([image_tokens, video_tokens])
    seq = torch.cat([image_mask.cpu().nonzero().flatten(), video_mask.cpu().nonzero().flatten()])
    order = seq.argsort()
    tokens, is_video = tokens[order], is_video[order]
    # A visual is (kind, index); number them, then their frames, by first appearance.
    visual_key = tokens[:, 0] * 2 + is_video.long()
    frame_key = visual_key * (int(tokens[:, 1].max()) + 1 if len(tokens) else 1) + tokens[:, 1]
    visual_ids = _first_appearance(visual_key)
    region_ids = _first_appearance(frame_key)
    count = int(region_ids.max()) + 1 if len(tokens) else 0
    first = torch.full((count,), len(tokens), dtype=torch.long).scatter_reduce(
        0, region_ids, torch.arange(len(tokens)), reduce="amin"
    )
    grids = {(False, i): g for i, g in enumerate(images)} | {(True, i): g for i, g in enumerate(videos)}
    shapes = [grids[(bool(is_video[i]), int(tokens[i, 0]))][1:] for i in first.tolist()]
    shapes = torch.tensor([[h // merge, w // merge] for h, w in shapes], dtype=torch.long).reshape(1, -1, 2)
    frames = torch.where(is_video[first], tokens[first, 1], -1)
    return Layout(
        coords=tokens[:, 2:].float().unsqueeze(0),
        regions=region_ids.unsqueeze(0),
        region_shapes=shapes,
        valid=torch.ones(1, len(tokens), dtype=torch.bool),
        region_boxes=torch.tensor([FULL_IMAGE] * count, dtype=torch.float32).reshape(1, -1, 4),
        region_images=visual_ids[first].unsqueeze(0),
        region_frames=frames.unsqueeze(0),
    )


def _first_appearance(keys: Tensor) -> Tensor:
    """``(N,)`` long: ``keys (N,)`` renumbered 0, 1, ... in order of first appearance."""
    unique, inverse = keys.unique(return_inverse=True)
    first = torch.full((len(unique),), len(keys), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(keys)), reduce="amin"
    )
    rank = torch.empty_like(first)
    rank[first.argsort()] = torch.arange(len(first))
    return rank[inverse]
