"""Assemble one sample's `Layout` token by token, in the order the tokens appear in
``input_ids``; adapters describe images as a sequence of regions and place-less tokens."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tokenprune.layout import Layout

__all__ = ["FULL_IMAGE", "SampleBuilder"]

#: (top, left, bottom, right): a region that covers its whole image.
FULL_IMAGE = (0.0, 0.0, 1.0, 1.0)
_UNKNOWN_BOX = (math.nan, math.nan, math.nan, math.nan)


class SampleBuilder:
    """The visual tokens of one sample, appended in sequence order."""

    def __init__(self) -> None:
        self._coords: list[Tensor] = []
        self._regions: list[Tensor] = []
        self._shapes: list[tuple[int, int]] = []
        self._boxes: list[tuple[float, float, float, float]] = []
        self._images: list[int] = []
        self._frames: list[int] = []

    @property
    def num_tokens(self) -> int:
        return sum(r.numel() for r in self._regions)

    def region(
        self,
        height: int,
        width: int,
        *,
        image: int,
        box: tuple[float, float, float, float] | None = None,
        separators: bool = False,
        skip: int = 0,
        frame: int = -1,
    ) -> None:
        """Append a ``height x width`` region, row-major; with ``separators`` one
        place-less token follows every row (LLaVA-NeXT's ``image_newline``).

        Args:
            image: index of the region's image within the sample.
            box: (top, left, bottom, right) on the image as fractions; None = unknown.
            skip: leading tokens of the region that the model dropped.
            frame: the region's frame within its video (``image``), -1 for no video frame.
        """
        index = len(self._shapes)
        rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        coords = torch.stack([rows, cols], dim=-1).float()  # (h, w, 2)
        regions = torch.full((height, width), index, dtype=torch.long)
        if separators:
            coords = torch.cat([coords, torch.full((height, 1, 2), math.nan)], dim=1)
            regions = torch.cat([regions, torch.full((height, 1), -1, dtype=torch.long)], dim=1)
        self._coords.append(coords.reshape(-1, 2)[skip:])
        self._regions.append(regions.reshape(-1)[skip:])
        self._shapes.append((height, width))
        self._boxes.append(_UNKNOWN_BOX if box is None else box)
        self._images.append(image)
        self._frames.append(frame)

    def unplaced(self, count: int) -> None:
        """Append ``count`` tokens without a place (a CLS token, a lone separator)."""
        self._coords.append(torch.full((count, 2), math.nan))
        self._regions.append(torch.full((count,), -1, dtype=torch.long))

    def build(self) -> Layout:
        """The sample as a batch-of-one `Layout` with ``region_boxes`` and ``region_images``
        (and ``region_frames`` when a region is a video frame)."""
        coords = torch.cat(self._coords) if self._coords else torch.zeros(0, 2)
        regions = torch.cat(self._regions) if self._regions else torch.zeros(0, dtype=torch.long)
        return Layout(
            coords=coords.unsqueeze(0),
            regions=regions.unsqueeze(0),
            region_shapes=torch.tensor(self._shapes, dtype=torch.long).reshape(1, -1, 2),
            valid=torch.ones(1, regions.numel(), dtype=torch.bool),
            region_boxes=torch.tensor(self._boxes, dtype=torch.float32).reshape(1, -1, 4),
            region_images=torch.tensor(self._images, dtype=torch.long).reshape(1, -1),
            region_frames=(
                torch.tensor(self._frames, dtype=torch.long).reshape(1, -1)
                if any(f >= 0 for f in self._frames)
                else None
            ),
        )
