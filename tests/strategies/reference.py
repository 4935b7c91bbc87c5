"""Plain, obviously-correct reference implementations, straight from the paper.

One sample at a time, Python loops, float64 math, no vectorisation. The fast paths in
`tokenprune.strategies` are checked against these.
"""

from __future__ import annotations

import math

import torch

from tokenprune import Layout


def tokens_of(layout: Layout, b: int) -> list[dict]:
    """Sample b as a list of {index, region, row, col, valid, video, frame} dicts (row/col
    None without place; frame None outside video frames, video = region_images or 0)."""
    out = []
    for n in range(layout.num_tokens):
        region = int(layout.regions[b, n])
        valid = bool(layout.valid[b, n])
        placed = valid and region >= 0
        frame = video = None
        if placed and layout.region_frames is not None and int(layout.region_frames[b, region]) >= 0:
            frame = int(layout.region_frames[b, region])
            video = 0 if layout.region_images is None else int(layout.region_images[b, region])
        out.append(
            {
                "index": n,
                "region": region if placed else -1,
                "row": int(layout.coords[b, n, 0]) if placed else None,
                "col": int(layout.coords[b, n, 1]) if placed else None,
                "valid": valid,
                "video": video,
                "frame": frame,
            }
        )
    return out


def ref_budget(keep, n_valid: int) -> int:
    if n_valid == 0:
        return 0
    if isinstance(keep, int):
        return keep
    return max(1, math.floor(n_valid * keep))


def ref_top_k(scores: list[float], tokens: list[dict], k: int) -> list[int]:
    """Highest scores first; equal scores: lower index first."""
    candidates = [t["index"] for t in tokens if t["valid"]]
    ranked = sorted(candidates, key=lambda i: (-scores[i], i))
    return sorted(ranked[:k])


def ref_gaussian(tokens: list[dict], region_shapes: list[tuple[int, int]], sigma=None) -> list[float]:
    """The authors' correction generalised per region: linspace(-h/2, h/2, h) rows,
    linspace(-w/2, w/2, w) cols, Gaussian divided by its max over the region."""
    out = []
    for t in tokens:
        if t["row"] is None:
            out.append(1.0)
            continue
        h, w = region_shapes[t["region"]]
        ys = torch.linspace(-h / 2, h / 2, h, dtype=torch.float64) if h > 1 else torch.zeros(1, dtype=torch.float64)
        xs = torch.linspace(-w / 2, w / 2, w, dtype=torch.float64) if w > 1 else torch.zeros(1, dtype=torch.float64)
        sy, sx = (h / 2, w / 2) if sigma is None else (sigma, sigma)
        grid = torch.exp(-(ys[:, None] ** 2 / (2 * sy**2) + xs[None, :] ** 2 / (2 * sx**2)))
        out.append(float(grid[t["row"], t["col"]] / grid.max()))
    return out


def ref_avg_pool(scores: list[float], tokens: list[dict], size: int = 3) -> list[float]:
    cell = {(t["region"], t["row"], t["col"]): t["index"] for t in tokens if t["row"] is not None}
    out = list(scores)
    h = size // 2
    for t in tokens:
        if t["row"] is None:
            continue
        vals = [
            scores[cell[(t["region"], t["row"] + dr, t["col"] + dc)]]
            for dr in range(-h, h + 1)
            for dc in range(-h, h + 1)
            if (t["region"], t["row"] + dr, t["col"] + dc) in cell
        ]
        out[t["index"]] = sum(vals) / len(vals)
    return out


def ref_soft_nms(
    scores: list[float],
    tokens: list[dict],
    keys: torch.Tensor | None,
    k: int,
    radius: float | None = 5.0,
    sigma_d: float | None = 1.5,
    sigma_s: float | None = 0.05,
    sigma_t: float | None = None,
    frames: int = 1,
) -> tuple[list[int], list[float]]:
    """Algorithm 1 of the paper with the authors' window: repeat k times: i = argmax of
    the scores of tokens not yet kept (first index on ties); keep i; for every token j in
    i's region within distance radius (i itself and kept tokens included):
    s_j *= 1 - D_spatial * D_similarity.

    With ``sigma_t`` (the temporal term), j may also be the token at i's (row, col) in a
    frame of i's video 1..frames frames away (d = 0 there), and the product gains
    D_temporal = exp(-df^2 / (2 sigma_t^2)) (1 inside i's own frame)."""
    s = list(scores)
    kept: list[int] = []
    for _ in range(k):
        best = None
        for t in tokens:
            if t["valid"] and t["index"] not in kept and (best is None or s[t["index"]] > s[best]):
                best = t["index"]
        kept.append(best)
        ti = tokens[best]
        if ti["row"] is None:
            continue
        for tj in tokens:
            if tj["row"] is None:
                continue
            d2 = (ti["row"] - tj["row"]) ** 2 + (ti["col"] - tj["col"]) ** 2
            df = 0
            if tj["region"] != ti["region"]:
                other_frame = (
                    sigma_t is not None
                    and ti["frame"] is not None
                    and tj["frame"] is not None
                    and tj["video"] == ti["video"]
                    and 0 < abs(tj["frame"] - ti["frame"]) <= frames
                    and d2 == 0
                )
                if not other_frame:
                    continue
                df = tj["frame"] - ti["frame"]
            elif radius is not None and math.sqrt(d2) > radius:
                continue
            decay = 1.0
            if sigma_t is not None:
                decay *= math.exp(-(df**2) / (2 * sigma_t**2))
            if sigma_d is not None:
                decay *= math.exp(-d2 / (2 * sigma_d**2))
            if sigma_s is not None:
                a, b = keys[best].double(), keys[tj["index"]].double()
                cos = float(torch.dot(a, b) / (a.norm().clamp(min=1e-12) * b.norm().clamp(min=1e-12)))
                decay *= math.exp(-((1 - cos) ** 2) / (2 * sigma_s**2))
            s[tj["index"]] *= 1 - decay
    return sorted(kept), s


def assert_matches_ref_soft_nms(
    selection, layout: Layout, scores: torch.Tensor, keys: torch.Tensor, keep,
    radius: float | None, sigma_d: float | None, sigma_s: float | None,
    sigma_t: float | None = None, frames: int = 1,
) -> None:
    """``selection`` (a `tokenprune.Selection` of ``scores (B, N)``, ``keys (B, N, D)``)
    == `ref_soft_nms` sample by sample: the kept indices exactly, the final scores of
    valid tokens to 1e-9."""
    for b in range(layout.batch_size):
        k = ref_budget(keep, int(layout.valid[b].sum()))
        expected, expected_scores = ref_soft_nms(
            scores[b].tolist(), tokens_of(layout, b), keys[b], k, radius, sigma_d, sigma_s, sigma_t, frames
        )
        assert [i for i in selection.indices[b].tolist() if i >= 0] == expected
        valid = layout.valid[b]
        torch.testing.assert_close(
            selection.scores[b][valid],
            torch.tensor(expected_scores, dtype=torch.float64)[valid],
            rtol=1e-9,
            atol=1e-12,
        )


def ref_skip(scores: list[float], tokens: list[dict], k: int, stride: int = 2) -> list[int]:
    """Every stride-th token of the ranking, then the skipped ones in rank order."""
    ranked = sorted((t["index"] for t in tokens if t["valid"]), key=lambda i: (-scores[i], i))
    order = [i for r, i in enumerate(ranked) if r % stride == 0]
    for phase in range(1, stride):
        order += [i for r, i in enumerate(ranked) if r % stride == phase]
    return sorted(order[:k])


def ref_grid(scores: list[float], key: list[float], tokens: list[dict], k: int, cell: int = 3) -> list[int]:
    """Per region, per cell x cell block: the token with the largest key (first index on
    ties) is a winner; keep the top-k winners by score, then other valid tokens by score."""
    best: dict[tuple, int] = {}
    for t in tokens:
        if t["row"] is None:
            continue
        block = (t["region"], t["row"] // cell, t["col"] // cell)
        if block not in best or key[t["index"]] > key[best[block]]:
            best[block] = t["index"]
    winners = set(best.values())
    valid = [t["index"] for t in tokens if t["valid"]]
    order = sorted(winners, key=lambda i: (-scores[i], i))
    order += sorted((i for i in valid if i not in winners), key=lambda i: (-scores[i], i))
    return sorted(order[:k])

