"""visionzip fast path == the dominant + contextual procedure, written plainly."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tokenprune
from tokenprune import Cues, Layout, SpecError

from .draw import keep_values, layouts, select
from .reference import ref_budget


def ref_visionzip(scores, keys, valid, k, share, merge):
    """One sample, float64: c = round(k * share) contextual, k - c dominant (top scores,
    lower index first on ties). The other valid tokens in order are R; targets are R[0],
    R[s], R[2s], ... (the first c, s = max(1, len(R) // c)); every other token of R joins
    the target of highest key cosine (first target on ties). Returns kept indices and,
    per kept token, {candidate: weight} of its merged value."""

    def cosine(i, j):
        return float(keys[i] @ keys[j]) / (math.sqrt(float(keys[i] @ keys[i])) * math.sqrt(float(keys[j] @ keys[j])))

    c = math.floor(k * share + 0.5)
    candidates = [i for i, v in enumerate(valid) if v]
    dominant = sorted(candidates, key=lambda i: (-scores[i], i))[: k - c]
    rest = [i for i in candidates if i not in dominant]
    groups = {i: {i: 1.0} for i in dominant}
    if c:
        step = max(1, len(rest) // c)
        targets = rest[::step][:c]
        members = {t: [] for t in targets}
        for i in rest:
            if i in targets:
                continue
            best = max(targets, key=lambda t: (cosine(i, t), -targets.index(t)))
            members[best].append(i)
        for t in targets:
            m = members[t]
            if merge == "code":
                groups[t] = {t: 1.0, **{i: 1.0 / max(1, len(m)) for i in m}}
            else:
                groups[t] = {j: 1.0 / (len(m) + 1) for j in [t, *m]}
    return sorted(groups), groups


@given(data=st.data())
def test_matches_the_procedure_float64(data):
    layout = data.draw(layouts(max_side=6))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    keys = torch.randn(layout.batch_size, layout.num_tokens, 4, generator=g, dtype=torch.float64)
    scores = torch.rand(layout.batch_size, layout.num_tokens, generator=g, dtype=torch.float64)
    keep = data.draw(keep_values(layout))
    share = data.draw(st.sampled_from([0.15625, 0.5, 0.0, 0.9]))
    merge = data.draw(st.sampled_from(["code", "mean"]))
    selector = tokenprune.pruner(f"uniform | visionzip(contextual={share}, merge={merge!r})", keep=1).selector
    selection = select(layout, scores, keys, keep, selector)
    for b in range(layout.batch_size):
        valid = layout.valid[b].tolist()
        kept, groups = ref_visionzip(scores[b].tolist(), keys[b], valid, ref_budget(keep, sum(valid)), share, merge)
        assert [i for i in selection.indices[b].tolist() if i >= 0] == kept
        if selection.merge_into is None:
            assert all(g == {t: 1.0} for t, g in groups.items())
            continue
        got = {}
        for j in range(layout.num_tokens):
            t = int(selection.merge_into[b, j])
            if t >= 0:
                got.setdefault(t, {})[j] = float(selection.merge_weight[b, j])
        assert got.keys() == groups.keys()
        for t in groups:
            assert got[t].keys() == groups[t].keys()
            assert all(math.isclose(got[t][j], w, rel_tol=1e-12) for j, w in groups[t].items())


def test_default_split_is_54_plus_10_of_64():
    layout = Layout.grid(24, 24)
    g = torch.Generator().manual_seed(0)
    cues = Cues(layout, attention=torch.rand(1, 576, generator=g), keys=torch.randn(1, 576, 8, generator=g))
    selection = tokenprune.pruner("attention | visionzip", keep=64)(cues)
    targets = (selection.merge_into[0] >= 0) & (selection.merge_weight[0] < 1)
    merged_into = set(selection.merge_into[0][targets].tolist())
    assert selection.indices.shape == (1, 64)
    assert len(merged_into) == 10  # ten contextual tokens absorb the other 512
    assert int((selection.merge_into[0] >= 0).sum()) == 576


def test_bad_arguments():
    with pytest.raises(SpecError, match="visionzip contextual: expected a fraction in \\[0, 1\\), got 1.5"):
        tokenprune.pruner("attention | visionzip(contextual=1.5)", keep=64)
    with pytest.raises(SpecError, match="visionzip merge: expected one of 'code', 'mean', got 'sum'"):
        tokenprune.pruner("attention | visionzip(merge='sum')", keep=64)


def test_a_sample_without_contextual_tokens_drops_its_remainder_in_a_batch():
    # Sample 0 keeps 1 of 2 valid tokens (round(1 x 0.15625) = 0 contextual), sample 1
    # keeps 4 of 8 (1 contextual): sample 0's other token is dropped, not merged into a
    # target slot it does not have (it once merged into index 7, a padded slot).
    layout = Layout.stack([Layout.grid(1, 2), Layout.grid(2, 4)])
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 8, 4, generator=g, dtype=torch.float64)
    scores = torch.rand(2, 8, generator=g, dtype=torch.float64)
    selector = tokenprune.pruner("uniform | visionzip(contextual=0.15625)", keep=1).selector
    selection = select(layout, scores, keys, 0.5, selector)
    kept = int(scores[0, :2].argmax())
    assert selection.merge_into[0].tolist() == [kept if i == kept else -1 for i in range(2)] + [-1] * 6
    assert (selection.merge_into[1] >= 0).sum() == 8  # sample 1: 3 dominant + 1 target absorbing 4
