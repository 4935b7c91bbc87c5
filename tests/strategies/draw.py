"""Hypothesis strategies: ragged batches of layouts, distinct or tied scores, keys; and
what hands drawn inputs to a selector (`Given`, `soft_nms_selector`, `select`,
`torch_threads`)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from hypothesis import strategies as st

import tokenprune
from tokenprune import Cues, Layout
from tokenprune.strategies.soft_nms import SimilarityDecay, SoftNMS, SpatialDecay, TemporalDecay


@st.composite
def sample_layouts(draw, max_regions: int = 3, max_side: int = 9) -> Layout:
    shapes = draw(
        st.lists(
            st.tuples(st.integers(1, max_side), st.integers(1, max_side)), min_size=1, max_size=max_regions
        )
    )
    layout = Layout.regions_of(shapes, separators=draw(st.booleans()))
    if draw(st.booleans()):
        return layout
    # Sparse: a random subset of the tokens (at least one), so some cells are empty and
    # block or cell ids can exceed the token count.
    n = layout.num_tokens
    kept = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n)))
    index = torch.tensor(kept)
    return Layout(
        coords=layout.coords[:, index],
        regions=layout.regions[:, index],
        region_shapes=layout.region_shapes,
        valid=layout.valid[:, index],
    )


@st.composite
def layouts(draw, max_batch: int = 3, **kwargs) -> Layout:
    """A ragged batch: each sample its own regions (and maybe separators)."""
    return Layout.stack([draw(sample_layouts(**kwargs)) for _ in range(draw(st.integers(1, max_batch)))])


@st.composite
def scores_for(draw, layout: Layout, ties: bool = False, dtype=torch.float64) -> torch.Tensor:
    """(B, N) non-negative scores; distinct unless ``ties`` (then few distinct values)."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    shape = (layout.batch_size, layout.num_tokens)
    if ties:
        return torch.randint(0, 3, shape, generator=g).to(dtype) / 2
    return torch.rand(shape, generator=g, dtype=torch.float64).to(dtype) + 1e-3


@st.composite
def keys_for(draw, layout: Layout, dim: int | None = None, dtype=torch.float64) -> torch.Tensor:
    """(B, N, D) keys; a few duplicated directions so similarity decay matters."""
    seed = draw(st.integers(0, 2**31 - 1))
    d = dim or draw(st.integers(2, 6))
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(layout.batch_size, 3, d, generator=g, dtype=torch.float64)
    pick = torch.randint(0, 3, (layout.batch_size, layout.num_tokens), generator=g)
    keys = torch.gather(base, 1, pick.unsqueeze(-1).expand(-1, -1, d))
    keys = keys + 0.3 * torch.randn(keys.shape, generator=g, dtype=torch.float64)
    return keys.to(dtype)


def keep_values(layout: Layout):
    """Fractions, or counts no larger than the smallest valid count."""
    smallest = int(layout.num_valid().min())
    return st.one_of(st.floats(0.01, 1.0), st.integers(1, max(1, smallest)))


@st.composite
def selector_inputs(
    draw, layout_strategy=None, *, ties: bool = False, dim: int | None = None, dtype=torch.float64
) -> tuple[Layout, torch.Tensor, torch.Tensor, float | int]:
    """A layout (of ``layout_strategy``, default `layouts()`), then its `scores_for`,
    `keys_for` and `keep_values`: ``(layout, scores (B, N), keys (B, N, D), keep)``."""
    layout = draw(layouts() if layout_strategy is None else layout_strategy)
    scores = draw(scores_for(layout, ties=ties, dtype=dtype))
    keys = draw(keys_for(layout, dim=dim, dtype=dtype))
    return layout, scores, keys, draw(keep_values(layout))


class Given(tokenprune.Score):
    """A score stage that returns fixed scores (to run a selector on chosen inputs)."""

    name = "given"

    def __init__(self, scores):
        self.scores = scores

    def __call__(self, cues):
        return self.scores


def soft_nms_selector(radius, sigma_d, sigma_s, sigma_t=None, frames: int = 1) -> SoftNMS:
    """The `SoftNMS` that `reference.ref_soft_nms` describes with the same arguments
    (a decay term for each sigma that is not None)."""
    decays = []
    if sigma_d:
        decays.append(SpatialDecay(sigma_d))
    if sigma_s:
        decays.append(SimilarityDecay(sigma_s))
    if sigma_t:
        decays.append(TemporalDecay(sigma_t, frames))
    return SoftNMS(radius=radius, decays=tuple(decays))


@contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` torch threads (the C kernel takes its thread count from
    ``torch.get_num_threads()``), restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def select(layout: Layout, scores: torch.Tensor, keys: torch.Tensor, keep, selector) -> tokenprune.Selection:
    """``selector``'s choice of ``keep`` of the tokens with these ``scores (B, N)`` and
    ``keys (B, N, D)``, through a `tokenprune.Pruner` (which resolves ``keep``)."""
    return tokenprune.Pruner(Given(scores), (), selector, keep=keep)(Cues(layout, keys=keys))


@st.composite
def video_sample_layouts(draw, max_visuals: int = 3, max_frames: int = 4, max_side: int = 6) -> Layout:
    """One sample of still images and videos (frames of one shape), in a drawn order,
    with ``region_images`` (or None when there is one video only) and ``region_frames``;
    maybe sparse (a random subset of the tokens)."""
    shapes, images, frames = [], [], []
    for visual in range(draw(st.integers(1, max_visuals))):
        shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
        count = draw(st.integers(1, max_frames))
        is_video = draw(st.booleans())
        for t in range(count if is_video else 1):
            shapes.append(shape)
            images.append(visual)
            frames.append(t if is_video else -1)
    base = Layout.regions_of(shapes, separators=draw(st.booleans()))
    index = torch.arange(base.num_tokens)
    if draw(st.booleans()):
        kept = sorted(draw(st.sets(st.integers(0, base.num_tokens - 1), min_size=1, max_size=base.num_tokens)))
        index = torch.tensor(kept)
    one_video = len(set(images)) == 1 and frames[0] >= 0
    return Layout(
        coords=base.coords[:, index],
        regions=base.regions[:, index],
        region_shapes=base.region_shapes,
        valid=base.valid[:, index],
        region_images=None if one_video and draw(st.booleans()) else torch.tensor([images]),
        region_frames=torch.tensor([frames]),
    )


@st.composite
def video_layouts(draw, max_batch: int = 3, **kwargs) -> Layout:
    """A ragged batch of `video_sample_layouts`."""
    return Layout.stack([draw(video_sample_layouts(**kwargs)) for _ in range(draw(st.integers(1, max_batch)))])
