"""Compare one sample of an adapter's `Layout` with the truth read from the model."""

from __future__ import annotations

import torch
from torch import Tensor

from tokenprune import Layout


def assert_sample(
    layout: Layout, b: int, regions: Tensor, rows: Tensor, cols: Tensor, images: Tensor
) -> None:
    """Sample ``b`` of ``layout`` has exactly these tokens, in order.

    Args:
        regions: ``(N_b,)`` long, the true region of each visual token, -1 without place.
        rows, cols: ``(N_b,)`` the true cell of each placed token (ignored where -1).
        images: ``(N_b,)`` long, the true image (within the sample) of each placed token.
    """
    n = regions.numel()
    assert layout.valid[b, :n].all() and not layout.valid[b, n:].any()
    assert torch.equal(layout.regions[b, :n], regions)
    placed = regions >= 0
    coords = layout.coords[b, :n]
    assert torch.isnan(coords[~placed]).all()
    assert torch.equal(coords[placed, 0].long(), rows[placed].long())
    assert torch.equal(coords[placed, 1].long(), cols[placed].long())
    assert torch.equal(layout.region_images[b][regions[placed]], images[placed].long())
    # Every region's shape is exactly the extent of its tokens (no empty rows / cols).
    for r in regions[placed].unique().tolist():
        here = regions == r
        shape = (int(rows[here].max()) + 1, int(cols[here].max()) + 1)
        assert tuple(layout.region_shapes[b, r].tolist()) == shape
        assert int(here.sum()) == shape[0] * shape[1]
