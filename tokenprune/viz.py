"""Pictures of selections and per-token values, and files for offline inspection.

Pure functions from a `Layout` (one sample of it) and a `Selection` or ``(B, N)``
values to a PIL image. Every region of the sample is drawn as its grid of cells:

- regions whose ``region_boxes`` cover part of an image (InternVL tiles) are placed
  together on one canvas per image, where their boxes say;
- every other region (a LLaVA-1.5 grid, LLaVA-NeXT's base and unpadded high-resolution
  grids, an InternVL thumbnail, a tile of unknown place) is a panel of its own;
- tokens without a place that follow a row (LLaVA-NeXT's separators) are drawn as a
  narrow column right of their region, or left out with ``separators=False``.

With an image, kept cells show it and dropped cells are darkened (like Figure 6 of the
AdaptPrune paper); without one, kept cells are orange and dropped cells grey.

`save_cues` / `load_cues` write and read cues as ``.pt`` or ``.safetensors`` files (the
input of ``tokenprune select``); `save_selection` writes a selection as ``.pt`` or JSON.

    >>> import torch, tokenprune
    >>> from tokenprune import viz
    >>> layout = tokenprune.Layout.grid(24, 24)
    >>> cues = tokenprune.Cues(layout, attention=torch.rand(1, 576))
    >>> selection = tokenprune.pruner("fastv", keep=0.1)(cues)
    >>> viz.draw_selection(layout, selection, viz.synthetic_image()).size
    (336, 336)
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tokenprune.cues import CUE_NAMES, Cues
from tokenprune.errors import CueError, LayoutError, PictureError, TokenpruneError
from tokenprune.layout import Layout
from tokenprune.selection import Selection

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "LAYOUT_KEYS",
    "draw_selection",
    "draw_values",
    "load_cues",
    "save_cues",
    "save_selection",
    "synthetic_image",
    "tile_pictures",
]

#: Layout tensors a cue file may hold (the first four are required together).
LAYOUT_KEYS = (
    "coords", "regions", "region_shapes", "valid", "region_boxes", "region_images", "region_frames"
)

KEPT = (255, 160, 30)
DROPPED = (214, 214, 214)
EMPTY = (248, 248, 248)
INK = (30, 30, 30)
BACKGROUND = (255, 255, 255)
#: Anchors of a perceptually ordered colour map (viridis' ends and three stops between).
_COLORMAP = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
_GAP = 10
_LABEL = 22
#: Text size of titles, labels and legends, in pixels.
_TEXT = 15
_SEPARATOR_GAP = 2


# ------------------------------------------------------------------------- geometry
@dataclass
class _Region:
    """One region of one sample in drawing terms: cell values and separator values."""

    index: int
    height: int
    width: int
    box: tuple[float, float, float, float] | None
    image: int
    cells: list[list[float | None]] = field(default_factory=list)
    separators: list[float | None] = field(default_factory=list)


@dataclass
class _Panel:
    """Regions drawn together: one region, or the tiles of one image on a canvas."""

    label: str
    rows: int
    cols: int
    image: int | None
    regions: list[tuple[_Region, int, int]]  # (region, top cell, left cell)


def _check_sample(layout: Layout, sample: int) -> None:
    if not isinstance(layout, Layout):
        raise LayoutError(f"layout: expected a tokenprune.Layout, got {type(layout).__name__}")
    if isinstance(sample, bool) or not isinstance(sample, int) or not 0 <= sample < layout.batch_size:
        raise LayoutError(f"sample: expected an int in [0, {layout.batch_size}), got {sample!r}")


def _regions(layout: Layout, sample: int, values: Tensor) -> list[_Region]:
    """Regions of ``sample`` with the value of each cell (None where no token sits).

    ``values (N,)`` float; NaN marks a token not to colour (invalid).
    """
    shapes = layout.region_shapes[sample].tolist()
    boxes = None if layout.region_boxes is None else layout.region_boxes[sample].tolist()
    images = None if layout.region_images is None else layout.region_images[sample].tolist()
    out = []
    for r, (h, w) in enumerate(shapes):
        # Without region_boxes (Layout.grid, a file saved without them) a region shows
        # its whole image; a NaN box means the place is unknown (an InternVL tile).
        box = (0.0, 0.0, 1.0, 1.0) if boxes is None else None
        if boxes is not None and all(math.isfinite(v) for v in boxes[r]):
            box = tuple(boxes[r])
        region = _Region(r, h, w, box, images[r] if images is not None else 0)
        region.cells = [[None] * w for _ in range(h)]
        region.separators = [None] * h
        out.append(region)
    regions = layout.regions[sample].tolist()
    coords = layout.coords[sample].tolist()
    valid = layout.valid[sample].tolist()
    vals = values.tolist()
    # A place-less token right after the last cell of a row may be that row's separator
    # (LLaVA-NeXT's image_newline). It is drawn as one only where every row of the
    # region has one; other place-less tokens (a CLS) are not drawn.
    after_row_end: dict[int, dict[int, float]] = {}
    previous: tuple[int, int, int] | None = None  # (region, row, col) of the last valid token
    for g, (y, x), ok, v in zip(regions, coords, valid, vals):
        if not ok:
            continue
        if g >= 0:
            out[g].cells[int(y)][int(x)] = v
            previous = (g, int(y), int(x))
            continue
        if previous is not None and previous[2] == out[previous[0]].width - 1:
            after_row_end.setdefault(previous[0], {}).setdefault(previous[1], v)
        previous = None
    for g, rows in after_row_end.items():
        if len(rows) == out[g].height:
            out[g].separators = [rows[y] for y in range(out[g].height)]
    return [r for r in out if r.height > 0 and r.width > 0]


def _panels(regions: list[_Region]) -> list[_Panel]:
    """Group regions into panels, in the order of their first region."""
    panels: list[_Panel] = []
    canvases: dict[int, _Panel] = {}
    for region in regions:
        box = region.box
        partial = box is not None and (box[2] - box[0]) * (box[3] - box[1]) < 0.999
        if not partial:
            label = f"region {region.index}: {region.height}x{region.width}"
            panels.append(_Panel(label, region.height, region.width, region.image if box else None, [(region, 0, 0)]))
            continue
        top, left, bottom, right = box
        rows = round(region.height / (bottom - top))
        cols = round(region.width / (right - left))
        panel = canvases.get(region.image)
        if panel is None:
            panel = _Panel(f"image {region.image}: tiles", rows, cols, region.image, [])
            canvases[region.image] = panel
            panels.append(panel)
        panel.rows, panel.cols = max(panel.rows, rows), max(panel.cols, cols)
        panel.regions.append((region, round(top * rows), round(left * cols)))
    for panel in canvases.values():
        first = panel.regions[0][0]
        panel.label = f"image {panel.image}: {len(panel.regions)} tiles of {first.height}x{first.width}"
    return panels


def _has_separators(panel: _Panel) -> bool:
    return len(panel.regions) == 1 and any(v is not None for v in panel.regions[0][0].separators)


# ------------------------------------------------------------------------ rendering
def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:  # pragma: no cover - pillow is in the viz extra
        raise ImportError("tokenprune.viz needs pillow: pip install 'tokenprune[viz]'") from exc
    return Image, ImageDraw, ImageFont


def _font():
    """Pillow's built-in font at a readable size (a scalable one where Pillow has FreeType)."""
    _, _, ImageFont = _pil()
    try:
        return ImageFont.load_default(size=_TEXT)
    except (TypeError, ImportError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _images_of(image: PILImage.Image | Sequence[PILImage.Image] | None) -> list[PILImage.Image]:
    if image is None:
        return []
    Image, _, _ = _pil()
    if isinstance(image, (str, bytes, Path)):
        raise PictureError(
            f"image: expected a PIL.Image.Image or a sequence of them, got the path {str(image)!r} "
            "(open it with PIL.Image.open first)"
        )
    if not isinstance(image, (Image.Image, Sequence)):
        raise PictureError(f"image: expected a PIL.Image.Image or a sequence of them, got {type(image).__name__}")
    images = [image] if isinstance(image, Image.Image) else list(image)
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise PictureError(f"image[{i}]: expected a PIL.Image.Image, got {type(im).__name__}")
    return [im.convert("RGB") for im in images]


def _cell_size(panels: list[_Panel], cell: int | None) -> int:
    if cell is not None:
        if isinstance(cell, bool) or not isinstance(cell, int) or cell < 1:
            raise PictureError(f"cell: expected an int >= 1 (pixels per cell) or None, got {cell!r}")
        return cell
    largest = max((max(p.rows, p.cols) for p in panels), default=1)
    return max(3, min(16, 336 // largest))


#: ``paint(value, over_image) -> (rgb, alpha)``: a cell's colour and how much of it covers
#: the image under it (255: all colour, 0: the image as it is).
Paint = Callable[[float | None, bool], tuple[tuple[int, int, int], int]]


def _paint_region(
    region: _Region, paint: Paint, underlay: PILImage.Image | None, c: int, rows: list[list[float | None]]
) -> PILImage.Image:
    """The pixels of ``rows`` (a region's cells, or its separator column) at ``c`` px per cell."""
    Image, _, _ = _pil()
    h, w = len(rows), len(rows[0])
    painted = [paint(v, underlay is not None) for row in rows for v in row]
    colours = Image.new("RGB", (w, h))
    colours.putdata([rgb for rgb, _ in painted])
    alpha = Image.new("L", (w, h))
    alpha.putdata([a for _, a in painted])
    size = (w * c, h * c)
    base = underlay if underlay is not None else Image.new("RGB", size, EMPTY)
    return Image.composite(
        colours.resize(size, Image.NEAREST), base, alpha.resize(size, Image.NEAREST)
    )


def _render(
    layout: Layout,
    values: Tensor,
    paint: Paint,
    image: PILImage.Image | Sequence[PILImage.Image] | None,
    sample: int,
    cell: int | None,
    separators: bool,
    title: str | None,
    footer: Callable[[int], PILImage.Image] | None = None,
    cell_borders: bool = False,
) -> PILImage.Image:
    """Draw every panel of ``sample``: each cell painted by ``paint``; ``footer(width)``,
    if given, returns a strip to put under the panels."""
    Image, ImageDraw, _ = _pil()
    images = _images_of(image)
    panels = _panels(_regions(layout, sample, values))
    c = _cell_size(panels, cell)
    sizes = []
    for p in panels:
        extra = _SEPARATOR_GAP + c if separators and _has_separators(p) else 0
        sizes.append((p.cols * c + extra, p.rows * c))
    top = _LABEL if title else 0
    # One panel needs no label of its own (a title, if any, says what it shows).
    label = _LABEL if len(panels) > 1 else 0
    width = sum(w for w, _ in sizes) + _GAP * max(len(sizes) - 1, 0)
    height = top + label + max((h for _, h in sizes), default=0)
    if footer is not None:
        strip = footer(width)
        width, height = max(width, strip.width), height + strip.height + 4
    canvas = Image.new("RGB", (max(width, 1), max(height, 1)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((0, 2), title, fill=INK, font=_font())
    x = 0
    for panel, (w, _h) in zip(panels, sizes):
        if label:
            draw.text((x, top + 2), panel.label, fill=INK, font=_font())
        y = top + label
        underlay = None
        if panel.image is not None and panel.image < len(images):
            underlay = images[panel.image].resize((panel.cols * c, panel.rows * c), Image.BILINEAR)
        for region, r0, c0 in panel.regions:
            left, upper = c0 * c, r0 * c
            under = None
            if underlay is not None:
                under = underlay.crop((left, upper, left + region.width * c, upper + region.height * c))
            canvas.paste(_paint_region(region, paint, under, c, region.cells), (x + left, y + upper))
            if cell_borders and under is None and c >= 6:
                _cell_borders(draw, x + left, y + upper, region.height, region.width, c)
            if separators and _has_separators(panel):
                column = [[v] for v in region.separators]
                sx = x + region.width * c + _SEPARATOR_GAP
                canvas.paste(_paint_region(region, paint, None, c, column), (sx, y))
                if cell_borders and c >= 6:
                    _cell_borders(draw, sx, y, region.height, 1, c)
        if c >= 6 and (underlay is None or len(panel.regions) > 1):
            for region, r0, c0 in panel.regions:
                rect = (x + c0 * c, y + r0 * c, x + (c0 + region.width) * c - 1, y + (r0 + region.height) * c - 1)
                draw.rectangle(rect, outline=(160, 160, 160))
        x += w + _GAP
    if footer is not None:
        canvas.paste(strip, (0, height - strip.height))
    return canvas


def _cell_borders(draw, x: int, y: int, rows: int, cols: int, c: int) -> None:
    """A 1 px white frame inside every cell of a ``rows x cols`` block at (x, y)."""
    for j in range(cols):
        for edge in (x + j * c, x + j * c + c - 1):
            draw.line((edge, y, edge, y + rows * c - 1), fill=BACKGROUND)
    for i in range(rows):
        for edge in (y + i * c, y + i * c + c - 1):
            draw.line((x, edge, x + cols * c - 1, edge), fill=BACKGROUND)


def _paint_selection(value: float | None, over_image: bool) -> tuple[tuple[int, int, int], int]:
    if value is None or math.isnan(value):
        return EMPTY, 255
    if value > 0.5:
        return KEPT, 0 if over_image else 255
    return ((40, 40, 40), 191) if over_image else (DROPPED, 255)


def _colormap(t: float) -> tuple[int, int, int]:
    t = min(max(t, 0.0), 1.0) * (len(_COLORMAP) - 1)
    i = min(int(t), len(_COLORMAP) - 2)
    f = t - i
    a, b = _COLORMAP[i], _COLORMAP[i + 1]
    return tuple(round(a[k] + (b[k] - a[k]) * f) for k in range(3))


def _colourbar(vmin: float, vmax: float, width: int) -> PILImage.Image:
    Image, ImageDraw, _ = _pil()
    width = max(width, 200)
    bar = Image.new("RGB", (width, 32), BACKGROUND)
    draw = ImageDraw.Draw(bar)
    for px in range(width):
        draw.line((px, 0, px, 10), fill=_colormap(px / max(width - 1, 1)))
    font = _font()
    draw.text((0, 13), f"{vmin:.4g}", fill=INK, font=font)
    draw.text((width, 13), f"{vmax:.4g}", fill=INK, font=font, anchor="ra")
    return bar


def _legend(over_image: bool, bare: bool, width: int) -> PILImage.Image:
    """What the colours of a selection picture mean: swatches with their words, in rows
    that fit ``width`` (cells over the image, and ``bare`` cells drawn without one)."""
    Image, ImageDraw, _ = _pil()
    font = _font()
    items = []
    if over_image:
        # A kept cell shows the image as it is; a dropped one is the same pixels darkened
        # (75% of (40, 40, 40) over them, as `_paint_selection` paints).
        sample = (150, 190, 235)
        dark = tuple(round(0.25 * v + 0.75 * 40) for v in sample)
        items += [(sample, "kept (image shown)"), (dark, "dropped (darkened)")]
    if bare or not over_image:
        suffix = " (no image)" if over_image else ""
        items += [(KEPT, "kept" + suffix), (DROPPED, "dropped" + suffix)]
    spans = [21 + round(font.getlength(words)) for _, words in items]
    width = max(width, *spans)
    rows: list[list[int]] = [[]]
    x = 0
    for i, span in enumerate(spans):
        if rows[-1] and x + span > width:
            rows.append([])
            x = 0
        rows[-1].append(i)
        x += span + 18
    strip = Image.new("RGB", (width, 24 * len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        x, y = 0, 24 * r
        for i in row:
            colour, words = items[i]
            draw.rectangle((x, y + 4, x + 15, y + 19), fill=colour, outline=(120, 120, 120))
            draw.text((x + 21, y + 3), words, fill=INK, font=font)
            x += spans[i] + 18
    return strip


def _batch_row(name: str, tensor: Tensor, layout: Layout, sample: int) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise PictureError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != (layout.batch_size, layout.num_tokens):
        raise LayoutError(
            f"{name}: expected shape (B, N) = ({layout.batch_size}, {layout.num_tokens}) to "
            f"match the layout, got {tuple(tensor.shape)}"
        )
    return tensor[sample].detach().to("cpu", torch.float64)


def draw_selection(
    layout: Layout,
    selection: Selection,
    image: PILImage.Image | Sequence[PILImage.Image] | None = None,
    *,
    sample: int = 0,
    cell: int | None = None,
    separators: bool = True,
    title: str | None = None,
    legend: bool = True,
) -> PILImage.Image:
    """Picture of the tokens ``selection`` keeps in sample ``sample`` of ``layout``, with a
    legend underneath (kept cells show the image, dropped cells are darkened; without an
    image, kept cells are orange and dropped cells grey).

    Args:
        layout: B samples of N candidate tokens.
        selection: its ``mask (B, N)`` says which tokens are kept.
        image: the sample's image (or a sequence, one per image of the sample, in the
            order of ``layout.region_images``); drawn under regions whose box is known,
            and under every region when the layout has no ``region_boxes`` at all.
        cell: pixels per cell side; None picks one so the largest panel is ~336 px.
        separators: draw tokens without a place (LLaVA-NeXT's row separators) as a
            column right of their region.
        title: a line of text above the panels.
        legend: draw the legend under the panels.

    Returns:
        an RGB ``PIL.Image.Image``.
    """
    _check_sample(layout, sample)
    if not isinstance(selection, Selection):
        raise PictureError(f"selection: expected a tokenprune.Selection, got {type(selection).__name__}")
    kept = _batch_row("selection.mask", selection.mask, layout, sample)
    kept = torch.where(layout.valid[sample].cpu(), kept, torch.full_like(kept, math.nan))
    images = _images_of(image)
    panels = _panels(_regions(layout, sample, kept))
    # Cells drawn without the image under them: separators, and regions of no known image.
    bare = any(
        (separators and _has_separators(p)) or p.image is None or p.image >= len(images) for p in panels
    )

    def footer(width: int) -> PILImage.Image:
        return _legend(bool(images), bare, width)

    return _render(
        layout, kept, _paint_selection, image, sample, cell, separators, title,
        footer=footer if legend else None, cell_borders=True,
    )


def draw_values(
    layout: Layout,
    values: Tensor,
    image: PILImage.Image | Sequence[PILImage.Image] | None = None,
    *,
    sample: int = 0,
    cell: int | None = None,
    separators: bool = True,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> PILImage.Image:
    """Heat map of per-token ``values (B, N)`` (scores, attention, `gaussian_map`) for
    sample ``sample``, with a colour bar; with an image, the colours are blended over it.

    Args:
        layout: B samples of N candidate tokens.
        values: ``(B, N)`` float, one value per candidate.
        image: drawn under the colours, as in `draw_selection`.
        sample: which sample to draw.
        cell: pixels per cell side; None picks one so the largest panel is ~336 px.
        separators: draw tokens without a place as a column right of their region.
        title: a line of text above the panels.
        vmin: the low end of the colour scale; None takes the sample's finite minimum
            over its valid tokens.
        vmax: the high end; None takes the finite maximum.
    """
    _check_sample(layout, sample)
    row = _batch_row("values", values, layout, sample)
    valid = layout.valid[sample].cpu()
    finite = row[valid & torch.isfinite(row)]
    lo = float(finite.min()) if vmin is None and finite.numel() else (0.0 if vmin is None else float(vmin))
    hi = float(finite.max()) if vmax is None and finite.numel() else (1.0 if vmax is None else float(vmax))
    span = hi - lo if hi > lo else 1.0
    row = torch.where(valid, row, torch.full_like(row, math.nan))

    def paint(value: float | None, over_image: bool) -> tuple[tuple[int, int, int], int]:
        if value is None or math.isnan(value):
            return EMPTY, 255
        rgb = _colormap((value - lo) / span) if math.isfinite(value) else (0, 0, 0)
        return rgb, 153 if over_image else 255

    def bar(width: int) -> PILImage.Image:
        return _colourbar(lo, hi, width)

    return _render(layout, row, paint, image, sample, cell, separators, title, footer=bar)


def tile_pictures(
    pictures: Sequence[tuple[str, PILImage.Image]], columns: int = 3
) -> PILImage.Image:
    """Several ``(caption, picture)`` pairs on one sheet, row-major, captions above
    (no caption row when every caption is empty)."""
    Image, ImageDraw, _ = _pil()
    if not pictures:
        raise PictureError("pictures: expected at least one (caption, picture) pair, got none")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise PictureError(f"columns: expected an int >= 1, got {columns!r}")
    caption_row = _LABEL if any(caption for caption, _ in pictures) else 0
    w = max(p.width for _, p in pictures)
    h = max(p.height for _, p in pictures) + caption_row
    cols = min(columns, len(pictures))
    rows = math.ceil(len(pictures) / cols)
    sheet = Image.new("RGB", (cols * w + (cols - 1) * _GAP, rows * h + (rows - 1) * _GAP), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, (caption, picture) in enumerate(pictures):
        x, y = (i % cols) * (w + _GAP), (i // cols) * (h + _GAP)
        draw.text((x, y + 2), caption, fill=INK, font=_font())
        sheet.paste(picture, (x, y + caption_row))
    return sheet


def synthetic_image(height: int = 336, width: int = 336, seed: int = 0) -> PILImage.Image:
    """A deterministic test scene (sky, sun, hills, a house, trees, a sign with text), so
    pictures of selections have something recognisable under the grid."""
    Image, ImageDraw, _ = _pil()
    if min(height, width) < 16:
        raise PictureError(f"height, width: expected both >= 16 px, got {height}, {width}")
    rng = random.Random(seed)
    im = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(im)
    horizon = int(height * 0.62)
    for y in range(horizon):
        t = y / max(horizon - 1, 1)
        draw.line((0, y, width, y), fill=(int(70 + 110 * t), int(130 + 90 * t), int(220 + 30 * t)))
    draw.rectangle((0, horizon, width, height), fill=(86, 150, 70))
    for _ in range(3):
        cx, r = rng.uniform(0, width), rng.uniform(0.2, 0.45) * width
        draw.ellipse((cx - r, horizon - r * 0.35, cx + r, horizon + r * 0.35), fill=(70, 128, 58))
    sx, sy, sr = rng.uniform(0.1, 0.3) * width, 0.16 * height, 0.07 * min(height, width)
    draw.ellipse((sx - sr, sy - sr, sx + sr, sy + sr), fill=(255, 214, 60))
    hx, hw, hh = rng.uniform(0.45, 0.55) * width, 0.26 * width, 0.2 * height
    base = horizon + 0.08 * height
    draw.rectangle((hx - hw / 2, base - hh, hx + hw / 2, base), fill=(200, 80, 60))
    draw.polygon([(hx - hw * 0.6, base - hh), (hx + hw * 0.6, base - hh), (hx, base - hh * 1.8)], fill=(110, 60, 50))
    draw.rectangle((hx - hw * 0.1, base - hh * 0.55, hx + hw * 0.1, base), fill=(90, 50, 30))
    for _ in range(4):
        tx = rng.choice([rng.uniform(0.03, 0.3), rng.uniform(0.75, 0.97)]) * width
        ty, tr = horizon + rng.uniform(0.0, 0.2) * height, rng.uniform(0.04, 0.07) * width
        draw.rectangle((tx - tr * 0.15, ty, tx + tr * 0.15, ty + tr * 1.6), fill=(100, 70, 40))
        draw.ellipse((tx - tr, ty - tr * 1.6, tx + tr, ty + tr * 0.2), fill=(40, 110, 50))
    px, py = 0.7 * width, 0.86 * height
    draw.rectangle((px, py, px + 0.26 * width, py + 0.1 * height), fill=(250, 250, 240), outline=(40, 40, 40))
    draw.text((px + 4, py + 0.02 * height), "TOKEN", fill=(20, 20, 20))
    return im


# --------------------------------------------------------------------------- files
def _suffix(path: Path, allowed: tuple[str, ...], arg: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise TokenpruneError(f"{arg}: expected a file name ending in {' or '.join(allowed)}, got {str(path)!r}")
    return suffix


def save_cues(path: str | Path, cues: Cues) -> Path:
    """Write ``cues`` (its tensor cues and layout tensors) to a ``.pt`` or
    ``.safetensors`` file that `load_cues` and ``tokenprune select`` read.

    Keys: the present cues of ``attention (B, N)``, ``keys (B, N, D)``, ``hidden
    (B, N, H)``, ``text_attention``, ``self_attention``, and the layout's
    ``coords``, ``regions``, ``region_shapes``, ``valid`` (and ``region_boxes``,
    ``region_images`` when set). The generator is not saved.
    """
    if not isinstance(cues, Cues):
        raise CueError(f"cues: expected tokenprune.Cues, got {type(cues).__name__}")
    path = Path(path)
    suffix = _suffix(path, (".pt", ".safetensors"), "path")
    tensors = {name: getattr(cues, name) for name in CUE_NAMES if getattr(cues, name) is not None}
    for name in LAYOUT_KEYS:
        value = getattr(cues.layout, name)
        if value is not None:
            tensors[name] = value
    tensors = {k: _own_storage(v) for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".pt":
        torch.save(tensors, path)
    else:
        from safetensors.torch import save_file

        save_file(tensors, str(path))
    return path


def _own_storage(tensor: Tensor) -> Tensor:
    """A CPU copy with storage of its own: ``torch.save`` of a view (``cues[3]``) would
    write the whole batch's storage, and safetensors refuses tensors that share memory."""
    return tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def _read_tensors(path: Path) -> dict[str, Tensor]:
    suffix = _suffix(path, (".pt", ".safetensors"), "cues file")
    if not path.is_file():
        raise TokenpruneError(f"cues file: expected an existing file, got {str(path)!r} (not found)")
    try:
        if suffix == ".pt":
            data = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file

            data = load_file(str(path))
    except Exception as exc:
        raise TokenpruneError(f"cues file: expected a readable {suffix} file, got {str(path)!r} ({exc})") from None
    if not isinstance(data, dict):
        raise CueError(f"cues file: expected a dict of name -> tensor, got {type(data).__name__} in {str(path)!r}")
    for name, value in data.items():
        if not isinstance(value, Tensor):
            raise CueError(
                f"cues file: expected a dict of name -> tensor, got {name!r} -> {type(value).__name__} "
                f"in {str(path)!r}"
            )
    return data


def load_cues(
    path: str | Path, grid: tuple[int, int] | None = None, generator: torch.Generator | None = None
) -> Cues:
    """Read cues written by `save_cues` (or by hand: a dict of tensors saved with
    ``torch.save`` or safetensors).

    Args:
        path: a ``.pt`` or ``.safetensors`` file.
        grid: (height, width) of one row-major region, for files without layout tensors;
            N must equal ``height * width``.
        generator: for random strategies.

    Raises:
        TokenpruneError: a missing or unreadable file, unknown keys, a missing or
            conflicting layout, or shapes that do not match (`CueError`, `LayoutError`).
    """
    path = Path(path)
    data = _read_tensors(path)
    if "positions" in data and "coords" not in data:  # files saved before the rename
        data["coords"] = data.pop("positions")
    unknown = sorted(set(data) - set(CUE_NAMES) - set(LAYOUT_KEYS))
    if unknown:
        raise CueError(
            f"cues file: unexpected key(s) {', '.join(unknown)} in {str(path)!r}; expected cue "
            f"names ({', '.join(CUE_NAMES)}) and layout tensors ({', '.join(LAYOUT_KEYS)})"
        )
    cue_tensors = {k: v for k, v in data.items() if k in CUE_NAMES}
    if not cue_tensors:
        raise CueError(f"cues file: expected at least one of {', '.join(CUE_NAMES)}, got none in {str(path)!r}")
    layout_tensors = {k: v for k, v in data.items() if k in LAYOUT_KEYS}
    if layout_tensors and grid is not None:
        raise LayoutError(f"grid: the file {str(path)!r} holds a layout already; expected no grid, got {grid}")
    if layout_tensors:
        missing = [k for k in LAYOUT_KEYS[:4] if k not in layout_tensors]
        if missing:
            raise LayoutError(f"cues file: layout tensor(s) {', '.join(missing)} missing in {str(path)!r}")
        layout = Layout(**layout_tensors)
    elif grid is None:
        raise LayoutError(
            f"cues file: no layout tensors in {str(path)!r}; pass grid=(height, width) "
            "(on the command line: --grid HxW)"
        )
    else:
        first = next(iter(cue_tensors.values()))
        if first.dim() < 2:
            raise CueError(f"cues file: expected cues of shape (B, N, ...), got {tuple(first.shape)}")
        b, n = first.shape[:2]
        height, width = grid
        if height * width != n:
            raise LayoutError(f"grid: expected height * width = N = {n} tokens, got {height}x{width} = {height * width}")
        layout = Layout.grid(height, width, batch=b)
    return Cues(layout, generator=generator, **cue_tensors)


def save_selection(path: str | Path, selection: Selection) -> Path:
    """Write ``selection`` to ``.pt`` (``indices``, ``mask``, ``scores`` tensors) or
    ``.json`` (per sample: kept ``indices`` without padding, and ``scores`` with
    non-finite values as null)."""
    if not isinstance(selection, Selection):
        raise PictureError(f"selection: expected a tokenprune.Selection, got {type(selection).__name__}")
    path = Path(path)
    suffix = _suffix(path, (".pt", ".json"), "selection file")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".pt":
        torch.save({name: _own_storage(getattr(selection, name)) for name in ("indices", "mask", "scores")}, path)
        return path
    samples = []
    for indices, scores in zip(selection.indices.tolist(), selection.scores.tolist()):
        samples.append(
            {
                "indices": [i for i in indices if i >= 0],
                "scores": [s if math.isfinite(s) else None for s in scores],
            }
        )
    path.write_text(json.dumps({"samples": samples}) + "\n")
    return path
