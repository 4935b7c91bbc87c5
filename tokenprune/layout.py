"""Where every visual token sits: the `Layout` of a batch of candidate tokens.

A layout describes the N candidate (visual) tokens of each of B samples:

- ``coords (B, N, 2)`` float: (row, col) in cells of the token's region, NaN for a
  token with no place (e.g. LLaVA-NeXT row separators).
- ``regions (B, N)`` long: region id (tile, sub-image, base image), -1 = no place.
- ``region_shapes (B, R, 2)`` long: (height, width) of each region in cells; unused
  region slots (ragged batches) are (0, 0).
- ``valid (B, N)`` bool: False for padding in ragged batches.

Optional, for pictures and canvas-level strategies:

- ``region_boxes (B, R, 4)`` float: (top, left, bottom, right) of each region on its
  image, as fractions of the image's height and width; NaN where unknown.
- ``region_images (B, R)`` long: which image (or video) of the sample a region belongs to,
  -1 unused.

Optional, for videos:

- ``region_frames (B, R)`` long: the frame (temporal group) of a region within its video,
  -1 for regions that are not video frames. The frames of one video are the regions with
  the same ``region_images`` value (all of a sample's regions when ``region_images`` is
  None); ``soft_nms``'s ``temporal`` decay reaches across them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from tokenprune._batch_index import sample_slice
from tokenprune._values import is_int
from tokenprune.errors import LayoutError

__all__ = ["Layout"]


@dataclass(frozen=True, eq=False)
class Layout:
    """Coords, regions and validity of the N candidate tokens of B samples.

    Build one with `Layout.grid`, `Layout.regions_of`, `Layout.stack`, or directly
    from tensors (validated on construction; invalid layouts raise `LayoutError`).

    Attributes:
        coords: ``(B, N, 2)`` float, (row, col) of each token in cells of its region;
            NaN for a token with no place (LLaVA-NeXT's row separators).
        regions: ``(B, N)`` long, the region (image, tile, base or high-resolution
            grid) of each token; -1 for a token with no place.
        region_shapes: ``(B, R, 2)`` long, (height, width) of each region in cells;
            (0, 0) for unused region slots of ragged batches.
        valid: ``(B, N)`` bool, False for padding in ragged batches.
        region_boxes: ``(B, R, 4)`` float or None, (top, left, bottom, right) of each
            region on its image as fractions of the image's height and width; NaN where
            unknown. Used by pictures and canvas-level strategies.
        region_images: ``(B, R)`` long or None, which image of the sample each region
            belongs to; -1 for unused slots.
    """

    coords: Tensor
    regions: Tensor
    region_shapes: Tensor
    valid: Tensor
    region_boxes: Tensor | None = field(default=None)
    region_images: Tensor | None = field(default=None)
    region_frames: Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def trusted(cls, **tensors: Tensor | None) -> Layout:
        """Build without validation, from tensors derived from a valid layout (a device
        move, a sample, the engine's survivors): internal hand-offs add no host sync."""
        layout = object.__new__(cls)
        for f in fields(cls):
            object.__setattr__(layout, f.name, tensors.get(f.name))
        return layout

    # ----------------------------------------------------------------- properties
    @property
    def batch_size(self) -> int:
        """B."""
        return self.regions.shape[0]

    @property
    def num_tokens(self) -> int:
        """N, the padded number of candidate tokens per sample."""
        return self.regions.shape[1]

    @property
    def num_regions(self) -> int:
        """R, the padded number of regions per sample."""
        return self.region_shapes.shape[1]

    @property
    def device(self) -> torch.device:
        return self.regions.device

    @property
    def positions(self) -> Tensor:
        """Deprecated name of `coords`."""
        return self.coords

    @property
    def placed(self) -> Tensor:
        """``(B, N)`` bool: valid tokens that have a place on a region grid."""
        return self.valid & (self.regions >= 0)

    def num_valid(self) -> Tensor:
        """``(B,)`` long: number of valid candidate tokens per sample."""
        return self.valid.sum(dim=1)

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Layout:
        """``fn`` applied to every tensor of the layout (absent ones stay None); not
        re-validated, so ``fn`` must keep a valid layout valid."""
        return Layout.trusted(
            **{f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name))) for f in fields(self)}
        )

    def to(self, device: torch.device | str) -> Layout:
        """The same layout with every tensor on ``device``."""
        return self._map(lambda t: t.to(device))

    def clone(self) -> Layout:
        """The same layout with every tensor copied: a write to either leaves the other."""
        return self._map(Tensor.clone)

    def __getitem__(self, index: int | slice) -> Layout:
        """Sample ``index`` (kept as a batch of one) or a slice of samples."""
        index = sample_slice(index, self.batch_size)
        return self._map(lambda t: t[index])

    def take(self, index: Tensor) -> Layout:
        """The layout of a subset of the candidates, in the given order.

        Args:
            index: ``(B, M)`` long, candidate indices per sample, -1 for padding.

        Returns:
            Layout of M tokens per sample, padding invalid and without a place, the
            regions unchanged. Not re-validated (a subset of a valid layout is valid).
        """
        pad = index < 0
        safe = index.clamp(min=0)
        coords = self.coords.gather(1, safe.unsqueeze(-1).expand(-1, -1, 2))
        return Layout.trusted(
            coords=coords.masked_fill(pad.unsqueeze(-1), math.nan),
            regions=self.regions.gather(1, safe).masked_fill(pad, -1),
            region_shapes=self.region_shapes,
            valid=self.valid.gather(1, safe) & ~pad,
            region_boxes=self.region_boxes,
            region_images=self.region_images,
            region_frames=self.region_frames,
        )

    def __repr__(self) -> str:
        shapes = [tuple(s) for s in self.region_shapes[0].tolist()] if self.batch_size else []
        return (
            f"Layout(B={self.batch_size}, N={self.num_tokens}, R={self.num_regions}, "
            f"region_shapes[0]={shapes})"
        )

    # --------------------------------------------------------------- constructors
    @classmethod
    def grid(
        cls, height: int, width: int, batch: int = 1, device: torch.device | str | None = None
    ) -> Layout:
        """One ``height x width`` region, tokens row-major (LLaVA-1.5: ``grid(24, 24)``)."""
        _check_count("height", height, minimum=1)
        _check_count("width", width, minimum=1)
        return cls.regions_of([(height, width)], batch=batch, device=device)

    @classmethod
    def regions_of(
        cls,
        shapes: Sequence[tuple[int, int]],
        batch: int = 1,
        separators: bool = False,
        device: torch.device | str | None = None,
    ) -> Layout:
        """Several regions one after another, each row-major.

        Args:
            shapes: ``(height, width)`` of each region, in sequence order.
            batch: B, the same layout repeated.
            separators: if True, one token without a place follows every row of every
                region (the way LLaVA-NeXT lays out its high-resolution grid).
        """
        _check_count("batch", batch, minimum=1)
        if isinstance(shapes, (str, bytes)) or not isinstance(shapes, Sequence):
            raise LayoutError(f"shapes: expected a sequence of (height, width), got {shapes!r}")
        for i, shape in enumerate(shapes):
            if (
                not isinstance(shape, Sequence)
                or len(shape) != 2
                or not all(is_int(s) and s >= 1 for s in shape)
            ):
                raise LayoutError(
                    f"shapes[{i}]: expected (height, width), two ints >= 1, got {shape!r}"
                )
        shapes = [(int(h), int(w)) for h, w in shapes]
        rows, cols, regs = [], [], []
        for r, (h, w) in enumerate(shapes):
            for y in range(h):
                rows += [float(y)] * w
                cols += [float(x) for x in range(w)]
                regs += [r] * w
                if separators:
                    rows.append(math.nan)
                    cols.append(math.nan)
                    regs.append(-1)
        coords = torch.tensor([rows, cols], dtype=torch.float32).T
        coords = coords.reshape(1, -1, 2).expand(batch, -1, -1).contiguous()
        regions = torch.tensor(regs, dtype=torch.long).expand(batch, -1).contiguous()
        region_shapes = torch.tensor([list(s) for s in shapes], dtype=torch.long)
        region_shapes = region_shapes.reshape(1, -1, 2).expand(batch, -1, -1).contiguous()
        layout = cls(
            coords=coords,
            regions=regions,
            region_shapes=region_shapes,
            valid=torch.ones_like(regions, dtype=torch.bool),
        )
        return layout if device is None else layout.to(device)

    @classmethod
    def video(
        cls, frames: int, height: int, width: int, batch: int = 1, device: torch.device | str | None = None
    ) -> Layout:
        """One video: ``frames`` regions of ``height x width``, each a frame (row-major),
        frames in order (a Qwen-VL video of ``frames`` temporal groups)."""
        _check_count("frames", frames, minimum=1)
        _check_count("height", height, minimum=1)
        _check_count("width", width, minimum=1)
        layout = cls.regions_of([(height, width)] * int(frames), batch=batch)
        layout = cls(
            coords=layout.coords,
            regions=layout.regions,
            region_shapes=layout.region_shapes,
            valid=layout.valid,
            region_images=torch.zeros(batch, int(frames), dtype=torch.long),
            region_frames=torch.arange(int(frames)).expand(batch, -1).contiguous(),
        )
        return layout if device is None else layout.to(device)

    @classmethod
    def empty(cls, batch: int = 1, device: torch.device | str | None = None) -> Layout:
        """A layout with no candidate tokens (N = 0, R = 0): nothing to prune."""
        _check_count("batch", batch, minimum=1)
        device = torch.device("cpu") if device is None else torch.device(device)
        return cls(
            coords=torch.zeros(batch, 0, 2, device=device),
            regions=torch.zeros(batch, 0, dtype=torch.long, device=device),
            region_shapes=torch.zeros(batch, 0, 2, dtype=torch.long, device=device),
            valid=torch.zeros(batch, 0, dtype=torch.bool, device=device),
        )

    @classmethod
    def stack(cls, layouts: Sequence[Layout]) -> Layout:
        """Concatenate layouts along the batch, padding N and R (ragged batches).

        Padded tokens are invalid with no place; padded regions have shape (0, 0). Not
        re-validated: each layout was validated when it was built, and padding keeps
        every sample as valid as it was.
        """
        if not layouts:
            raise LayoutError("layouts: expected at least one Layout, got an empty sequence")
        for i, lay in enumerate(layouts):
            if not isinstance(lay, Layout):
                raise LayoutError(f"layouts[{i}]: expected a Layout, got {type(lay).__name__}")
        n = max(lay.num_tokens for lay in layouts)
        r = max(lay.num_regions for lay in layouts)
        device = layouts[0].device

        def pad(t: Tensor, size: int, dim: int, value: float) -> Tensor:
            extra = size - t.shape[dim]
            if extra == 0:
                return t
            shape = list(t.shape)
            shape[dim] = extra
            return torch.cat([t, t.new_full(shape, value)], dim=dim)

        has_boxes = any(lay.region_boxes is not None for lay in layouts)
        has_images = any(lay.region_images is not None for lay in layouts)
        has_frames = any(lay.region_frames is not None for lay in layouts)
        boxes, images, frames = [], [], []
        for lay in layouts:
            if has_boxes:
                b = lay.region_boxes
                if b is None:
                    b = torch.full((lay.batch_size, lay.num_regions, 4), math.nan, device=device)
                boxes.append(pad(b.to(device), r, 1, math.nan))
            if has_images:
                im = lay.region_images
                if im is None:
                    im = torch.zeros(lay.batch_size, lay.num_regions, dtype=torch.long, device=device)
                images.append(pad(im.to(device), r, 1, -1))
            if has_frames:
                fr = lay.region_frames
                if fr is None:
                    fr = torch.full((lay.batch_size, lay.num_regions), -1, dtype=torch.long, device=device)
                frames.append(pad(fr.to(device), r, 1, -1))
        return cls.trusted(
            coords=torch.cat([pad(lay.coords.to(device), n, 1, math.nan) for lay in layouts]),
            regions=torch.cat([pad(lay.regions.to(device), n, 1, -1) for lay in layouts]),
            region_shapes=torch.cat([pad(lay.region_shapes.to(device), r, 1, 0) for lay in layouts]),
            valid=torch.cat([pad(lay.valid.to(device), n, 1, False) for lay in layouts]),
            region_boxes=torch.cat(boxes) if has_boxes else None,
            region_images=torch.cat(images) if has_images else None,
            region_frames=torch.cat(frames) if has_frames else None,
        )


def _validate(layout: Layout) -> None:
    """Check shapes, dtypes and the geometric invariants; raise `LayoutError` otherwise."""
    p, g, s, v = layout.coords, layout.regions, layout.region_shapes, layout.valid
    for name, t in (("coords", p), ("regions", g), ("region_shapes", s), ("valid", v)):
        if not isinstance(t, Tensor):
            raise LayoutError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if g.dim() != 2:
        raise LayoutError(f"regions: expected shape (B, N), got {tuple(g.shape)}")
    b, n = g.shape
    if g.dtype != torch.long:
        raise LayoutError(f"regions: expected dtype torch.int64, got {g.dtype}")
    if p.shape != (b, n, 2) or not p.is_floating_point():
        raise LayoutError(
            f"coords: expected a float tensor of shape (B, N, 2) = ({b}, {n}, 2), "
            f"got {p.dtype} {tuple(p.shape)}"
        )
    if v.shape != (b, n) or v.dtype != torch.bool:
        raise LayoutError(
            f"valid: expected a bool tensor of shape (B, N) = ({b}, {n}), got {v.dtype} {tuple(v.shape)}"
        )
    if s.dim() != 3 or s.shape[0] != b or s.shape[2] != 2 or s.dtype != torch.long:
        raise LayoutError(
            f"region_shapes: expected a long tensor of shape (B, R, 2) with B = {b}, "
            f"got {s.dtype} {tuple(s.shape)}"
        )
    devices = {t.device for t in (p, g, s, v)}
    if len(devices) != 1:
        raise LayoutError(f"layout tensors: expected one device, got {sorted(map(str, devices))}")
    r = s.shape[1]
    boxes, images = layout.region_boxes, layout.region_images
    if boxes is not None and (
        not isinstance(boxes, Tensor) or boxes.shape != (b, r, 4) or not boxes.is_floating_point()
    ):
        raise LayoutError(
            f"region_boxes: expected a float tensor of shape (B, R, 4) = ({b}, {r}, 4), got {_describe(boxes)}"
        )
    if images is not None and (
        not isinstance(images, Tensor) or images.shape != (b, r) or images.dtype != torch.long
    ):
        raise LayoutError(
            f"region_images: expected a long tensor of shape (B, R) = ({b}, {r}), got {_describe(images)}"
        )
    frames = layout.region_frames
    if frames is not None and (
        not isinstance(frames, Tensor) or frames.shape != (b, r) or frames.dtype != torch.long
    ):
        raise LayoutError(
            f"region_frames: expected a long tensor of shape (B, R) = ({b}, {r}), got {_describe(frames)}"
        )
    extra_devices = {t.device for t in (boxes, images, frames) if t is not None} - devices
    if extra_devices:
        raise LayoutError(
            f"region_boxes/region_images/region_frames: expected device {next(iter(devices))}, "
            f"got {sorted(map(str, extra_devices))}"
        )
    if images is not None and images.numel() and int(images.min()) < -1:
        raise LayoutError(f"region_images: expected image indices >= -1, got min {int(images.min())}")
    if frames is not None and frames.numel():
        if int(frames.min()) < -1:
            raise LayoutError(f"region_frames: expected frame indices >= -1, got min {int(frames.min())}")
        videos = images if images is not None else torch.zeros_like(frames)
        same = (videos.unsqueeze(2) == videos.unsqueeze(1)) & (frames.unsqueeze(2) == frames.unsqueeze(1))
        same &= (frames >= 0).unsqueeze(2) & ~torch.eye(r, dtype=torch.bool, device=frames.device)
        if bool(same.any()):
            raise LayoutError("region_frames: expected each frame index at most once per video, got duplicates")
    if n == 0:
        return
    if bool((s < 0).any()):
        raise LayoutError(f"region_shapes: expected non-negative sizes, got min {int(s.min())}")
    if bool(((g < -1) | (g >= r)).any()):
        raise LayoutError(
            f"regions: expected ids in [-1, R) = [-1, {r}), got range [{int(g.min())}, {int(g.max())}]"
        )
    placed = v & (g >= 0)
    pos_placed = p[placed]
    if not bool(torch.isfinite(pos_placed).all()):
        raise LayoutError("coords: expected finite (row, col) for every token with a region >= 0, got NaN/inf")
    if not bool((pos_placed == pos_placed.round()).all()):
        raise LayoutError("coords: expected whole cell indices for tokens with a region, got fractions")
    if not bool(torch.isnan(p[v & (g < 0)]).all()):
        raise LayoutError("coords: expected NaN for valid tokens without a region (regions == -1)")
    shape_of = torch.stack([region_values(layout, s[..., 0]), region_values(layout, s[..., 1])], -1)
    shape_of = shape_of[placed].to(p.dtype)
    if bool(((pos_placed < 0) | (pos_placed >= shape_of)).any()):
        raise LayoutError("coords: expected 0 <= (row, col) < region_shapes[region] for every placed token")
    cell = _cell_ids(layout)[placed]
    sample = torch.arange(b, device=g.device).unsqueeze(1).expand(b, n)[placed]
    key = sample * (int(cell.max()) + 1 if cell.numel() else 1) + cell
    if key.numel() != key.unique().numel():
        raise LayoutError("coords: expected at most one token per (region, row, col) cell, got duplicates")


def _check_count(name: str, value: object, minimum: int) -> None:
    if not is_int(value) or int(value) < minimum:  # type: ignore[call-overload]
        raise LayoutError(f"{name}: expected an int >= {minimum}, got {value!r}")


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} {tuple(value.shape)}"
    return type(value).__name__


def region_values(layout: Layout, values: Tensor) -> Tensor:
    """``(B, N)``: ``values (B, R)`` of each token's region, 0 for tokens without one.

    Safe for R = 0 (every token unplaced), where a plain gather would index out of range.
    """
    b, r = values.shape
    padded = torch.cat([values, values.new_zeros(b, 1)], dim=1)  # slot R: "no region"
    index = torch.where(layout.regions >= 0, layout.regions, torch.full_like(layout.regions, r))
    return torch.gather(padded, 1, index)


def _cell_ids(layout: Layout) -> Tensor:
    """``(B, N)`` long: a token's cell in the flattened concatenation of its sample's
    region grids (row-major per region, regions in id order); -1 without a place."""
    s = layout.region_shapes
    area = s[..., 0] * s[..., 1]
    base = torch.cumsum(area, dim=1) - area
    width = region_values(layout, s[..., 1])
    cell = region_values(layout, base) + (
        torch.nan_to_num(layout.coords[..., 0]).long() * width
        + torch.nan_to_num(layout.coords[..., 1]).long()
    )
    return torch.where(layout.valid & (layout.regions >= 0), cell, torch.full_like(cell, -1))
