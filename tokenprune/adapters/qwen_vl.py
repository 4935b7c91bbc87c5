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

from tokenprune.adapters.base import Adapter, Point
from tokenprune.adapters.builder import FULL_IMAGE
from tokenprune.adapters.images import ImageInputs
from tokenprune.adapters.inputs import (
    assign_images,
    image_or_video_mask,
    input_ids_of,
    model_type,
    no_visual_tokens,
)
from tokenprune.errors import LayoutError, UnsupportedModelError
from tokenprune.layout import Layout

__all__ = ["FAMILIES", "Grid", "QwenVL", "grids_of", "layout", "matches", "merge_size", "tokens_of_grid"]

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


# ---------------------------------------------------------------- the adapter class
class QwenVL(Adapter):
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL: images and videos, original M-RoPE positions.

    - Candidates: the image and the video placeholders.
    - Position ids: the language model receives M-RoPE ids ``(3, B, L)`` (or ``(4, B, L)``
      from ``generate()``, row 0 the text positions for the mask); kept tokens keep their
      original (t, h, w) ids at every prune point, and decoding continues with the
      model's own ``rope_deltas`` (the attention mask keeps the prompt's length).
    - ``generate()`` encodes the visuals before the prefill and drops ``image_grid_thw``
      / ``video_grid_thw``; they are recovered from the encoder calls it made.
    - Qwen3-VL adds deepstack features to the visual positions after decoder layers
      0..2; they are shortened with the tokens (``"input"``: the language model's own
      inputs; a layer: the model's ``_deepstack_process``, wrapped while the block is open).
    """

    name = "qwen_vl"
    description = (
        "Qwen2-VL / Qwen2.5-VL / Qwen3-VL: one (h/2, w/2) region per image and per video "
        "frame (temporal group); original M-RoPE positions"
    )

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.recorders = tuple(
            ImageInputs(model, modality=kind, key=f"{kind}_grid_thw") for kind in ("image", "video")
        )
        self._deepstack = _Deepstack(self.text.model) if model_type(model) == "qwen3_vl" else None

    @classmethod
    def matches(cls, model: Any) -> bool:
        return matches(model)

    def layout(self, **inputs: Any) -> Layout:
        return layout(self.model, **inputs)

    def visual_mask(self, input_ids: Tensor) -> Tensor:
        return image_or_video_mask(self.model, input_ids)

    def open(self) -> None:
        super().open()
        if self._deepstack is not None:
            self._deepstack.open()

    def close(self) -> None:
        super().close()
        if self._deepstack is not None:
            self._deepstack.close()

    def mask_positions(self, position_ids: Tensor) -> Tensor | None:
        """Row 0 of ``(4, B, L)`` ids (the text positions); None for ``(3, B, L)`` ids,
        from which the model itself builds no mask either."""
        if position_ids.dim() == 2:
            return position_ids
        return position_ids[0] if position_ids.shape[0] == 4 else None

    def shorten_inputs(self, point: Point, kwargs: dict[str, Any], plan: Any) -> dict[str, Any]:
        if point == "input":
            position_ids = kwargs.get("position_ids")
            if position_ids is None or position_ids.dim() != 3:
                raise UnsupportedModelError(
                    f"position_ids: {family_name(self.model)} needs its M-RoPE positions (3 or 4, B, L) "
                    f"to prune at layer='input', got {None if position_ids is None else tuple(position_ids.shape)}; "
                    f"pass mm_token_type_ids (the processor returns it) so the model computes them"
                )
            masks, embeds = kwargs.get("visual_pos_masks"), kwargs.get("deepstack_visual_embeds")
            if masks is None or embeds is None:
                return {}
            short_masks, index = _kept_visual(masks, plan.source)
            return {"visual_pos_masks": short_masks, "deepstack_visual_embeds": [e[index] for e in embeds]}
        if self._deepstack is not None:
            self._deepstack.shorten(plan.source)
        return {}


def _kept_visual(masks: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
    """The visual-position mask ``masks (B, L)`` after a compaction that takes slot
    ``source (B, L')`` (-1: padding), and the index of each kept visual token among the
    original ones (row-major order, as the deepstack features are stored)."""
    order = masks.flatten().long().cumsum(0).view_as(masks) - 1
    safe = source.clamp(min=0)
    short = masks.gather(1, safe) & (source >= 0)
    return short, order.gather(1, safe)[short]


class _Deepstack:
    """Shortens Qwen3-VL's deepstack inputs inside the language model's layer loop.

    The text model adds ``deepstack_visual_embeds[i]`` at ``visual_pos_masks`` after
    layer i (i < 3) through its own ``_deepstack_process``; after a layer prune point
    the hidden states are shorter than that mask. While open, the method is wrapped
    (an instance attribute, deleted on close): when the hidden states are shorter, the
    mask and features are taken at the kept slots of the compactions recorded since the
    language model was called.
    """

    def __init__(self, text_model: Any) -> None:
        self.text_model = text_model
        self.source: Tensor | None = None
        self._handle = None

    def open(self) -> None:
        if "_deepstack_process" in vars(self.text_model):
            return
        original = self.text_model._deepstack_process

        def process(hidden_states: Tensor, visual_pos_masks: Tensor, visual_embeds: Tensor) -> Tensor:
            if self.source is not None and hidden_states.shape[1] != visual_pos_masks.shape[1]:
                visual_pos_masks, index = _kept_visual(visual_pos_masks.to(self.source.device), self.source)
                visual_embeds = visual_embeds[index.to(visual_embeds.device)]
            return original(hidden_states, visual_pos_masks, visual_embeds)

        self.text_model._deepstack_process = process
        self._handle = self.text_model.register_forward_pre_hook(self._reset)

    def close(self) -> None:
        vars(self.text_model).pop("_deepstack_process", None)
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.source = None

    def _reset(self, module: Any, args: tuple) -> None:
        self.source = None

    def shorten(self, source: Tensor) -> None:
        """Record a compaction of the current slots: ``source (B, L')``, -1 padding."""
        if self.source is None:
            self.source = source
        else:
            self.source = self.source.gather(1, source.clamp(min=0)).masked_fill(source < 0, -1)
