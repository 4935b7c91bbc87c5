"""Assemble one sample's `Layout` token by token, in the order the tokens appear in
``input_ids``; adapters describe images as a sequence of regions and place-less tokens.

The engine asks for the layout at every prefill, mostly of descriptions it has seen
before (the same number of images of the same sizes): `SampleBuilder.build` remembers
the validated layouts of the last `MAX_SAMPLES` descriptions and hands out copies of
their tensors, so a repeated description costs a few tensor copies instead of building
and validating the layout again.
"""

from __future__ import annotations

import math
import struct
import threading
from collections import OrderedDict

import torch
from torch import Tensor

from tokenprune.layout import Layout

__all__ = ["FULL_IMAGE", "MAX_SAMPLES", "SampleBuilder"]

#: (top, left, bottom, right): a region that covers its whole image.
FULL_IMAGE = (0.0, 0.0, 1.0, 1.0)
_UNKNOWN_BOX = (math.nan, math.nan, math.nan, math.nan)

#: Sample descriptions whose validated layouts are remembered, least recently used
#: dropped first; 0 remembers none. A LLaVA-1.5 image's layout keeps about 10 kB.
MAX_SAMPLES = 64

_built: OrderedDict[tuple, Layout] = OrderedDict()
_built_lock = threading.Lock()


class SampleBuilder:
    """The visual tokens of one sample, appended in sequence order."""

    def __init__(self) -> None:
        # ("region", height, width, image, box, separators, skip, frame) or ("unplaced", count)
        self._parts: list[tuple] = []
        self._num_tokens = 0

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

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
        box = _UNKNOWN_BOX if box is None else box
        self._parts.append(("region", height, width, image, box, separators, skip, frame))
        self._num_tokens += len(range(height * (width + bool(separators)))[skip:])

    def unplaced(self, count: int) -> None:
        """Append ``count`` tokens without a place (a CLS token, a lone separator)."""
        self._parts.append(("unplaced", count))
        self._num_tokens += count

    def build(self) -> Layout:
        """The sample as a batch-of-one `Layout` with ``region_boxes`` and ``region_images``
        (and ``region_frames`` when a region is a video frame); its tensors are the
        caller's own."""
        key = _exact(tuple(self._parts)) if MAX_SAMPLES > 0 else None
        if key is None:
            return _build(self._parts)
        with _built_lock:
            layout = _built.get(key)
            if layout is not None:
                _built.move_to_end(key)
        if layout is None:
            layout = _build(self._parts)
            with _built_lock:
                _built[key] = layout
                while len(_built) > MAX_SAMPLES:
                    _built.popitem(last=False)
        return layout.clone()  # a caller's in-place write cannot reach the remembered one


def _exact(value: object) -> object | None:
    """``value`` (a tuple of ints, bools, floats, strings and such tuples) as a key that
    equals another only for the same types and values: floats by their bits (0.0 is not
    -0.0, NaNs compare), True is not 1. None for anything else (not remembered)."""
    if isinstance(value, tuple):
        items = [_exact(v) for v in value]
        return None if any(item is None for item in items) else tuple(items)
    if type(value) in (int, bool, str):
        return type(value), value
    if type(value) is float:
        return struct.pack("<d", value)
    return None


def _build(parts: list[tuple]) -> Layout:
    """The validated batch-of-one layout of a sample's ``parts``."""
    coords_of: list[Tensor] = []
    regions_of: list[Tensor] = []
    shapes, boxes, images, frames = [], [], [], []
    for part in parts:
        if part[0] == "unplaced":
            count = part[1]
            coords_of.append(torch.full((count, 2), math.nan))
            regions_of.append(torch.full((count,), -1, dtype=torch.long))
            continue
        _, height, width, image, box, separators, skip, frame = part
        index = len(shapes)
        rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        coords = torch.stack([rows, cols], dim=-1).float()  # (h, w, 2)
        regions = torch.full((height, width), index, dtype=torch.long)
        if separators:
            coords = torch.cat([coords, torch.full((height, 1, 2), math.nan)], dim=1)
            regions = torch.cat([regions, torch.full((height, 1), -1, dtype=torch.long)], dim=1)
        coords_of.append(coords.reshape(-1, 2)[skip:])
        regions_of.append(regions.reshape(-1)[skip:])
        shapes.append((height, width))
        boxes.append(box)
        images.append(image)
        frames.append(frame)
    coords = torch.cat(coords_of) if coords_of else torch.zeros(0, 2)
    regions = torch.cat(regions_of) if regions_of else torch.zeros(0, dtype=torch.long)
    return Layout(
        coords=coords.unsqueeze(0),
        regions=regions.unsqueeze(0),
        region_shapes=torch.tensor(shapes, dtype=torch.long).reshape(1, -1, 2),
        valid=torch.ones(1, regions.numel(), dtype=torch.bool),
        region_boxes=torch.tensor(boxes, dtype=torch.float32).reshape(1, -1, 4),
        region_images=torch.tensor(images, dtype=torch.long).reshape(1, -1),
        region_frames=(
            torch.tensor(frames, dtype=torch.long).reshape(1, -1) if any(f >= 0 for f in frames) else None
        ),
    )
