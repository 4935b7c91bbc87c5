"""A plugin stage's output is checked once at its hand-off: a wrong one raises
PluginError naming the stage and its plugin instead of failing deep inside, or
silently keeping padding / more than ``keep`` tokens."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import tokenprune
from tokenprune import Cues, Layout, PluginError, Selection, Strategy
from tokenprune.strategies.base import Decay, Score, Selector

PLUGIN = "bad_stages"


@dataclass(frozen=True, repr=False)
class KeepAll(Selector):
    """Ignores the budget and the padding: keeps every candidate."""

    name = "keep_all"

    def __call__(self, scores, cues, budget):
        return Selection.from_mask(torch.ones_like(cues.layout.valid), scores)


@dataclass(frozen=True, repr=False)
class Returns(Selector):
    what: str = "none"
    name = "returns"

    def __call__(self, scores, cues, budget):
        b, n = scores.shape
        if self.what == "none":
            return None
        if self.what == "short_mask":
            mask = torch.zeros(b, n - 1, dtype=torch.bool)
            return Selection(torch.zeros(b, 0, dtype=torch.long), mask, scores)
        if self.what == "float_mask":
            return Selection(torch.zeros(b, 0, dtype=torch.long), torch.zeros(b, n), scores)
        if self.what == "wrong_indices":
            mask = torch.zeros(b, n, dtype=torch.bool)
            mask[:, 0] = True
            return Selection(torch.ones(b, 1, dtype=torch.long), mask, scores)
        raise AssertionError(self.what)


@dataclass(frozen=True, repr=False)
class BadScore(Score):
    what: str = "none"
    name = "bad_score"

    def __call__(self, cues):
        if self.what == "none":
            return None
        if self.what == "shape":
            return torch.zeros(cues.batch_size, cues.num_tokens + 1)
        if self.what == "long":
            return torch.zeros(cues.batch_size, cues.num_tokens, dtype=torch.long)
        if self.what == "nan":
            return torch.full((cues.batch_size, cues.num_tokens), float("nan"))
        raise AssertionError(self.what)


@dataclass(frozen=True, repr=False)
class Three(Decay):
    name = "three"

    def __call__(self, ctx):
        return torch.full(ctx.candidates.shape, 3.0, dtype=ctx.dtype)


class _Plugin:
    @tokenprune.hookimpl
    def tokenprune_strategies(self):
        return [
            Strategy("keep_all", "selector", KeepAll, "budget-blind"),
            Strategy("returns", "selector", Returns, "malformed selections"),
            Strategy("bad_score", "score", BadScore, "malformed scores"),
            Strategy("three", "decay", Three, "factors out of [0, 1]"),
        ]


@pytest.fixture(scope="module", autouse=True)
def plugin():
    tokenprune.register_plugin(_Plugin(), name=PLUGIN)
    yield
    tokenprune.unregister_plugin(PLUGIN)


@pytest.fixture
def padded_cues():
    # Sample 1 has 4 padding candidates (a ragged batch).
    layout = Layout.stack([Layout.grid(4, 4), Layout.grid(3, 4)])
    g = torch.Generator().manual_seed(0)
    return Cues(layout, attention=torch.rand(2, 16, generator=g), keys=torch.randn(2, 16, 4, generator=g))


def test_a_selector_ignoring_the_budget_is_refused(padded_cues):
    with pytest.raises(PluginError, match=r"selector 'keep_all' \(plugin 'bad_stages'\): expected only valid candidates kept, got padding token 12 of sample 1"):
        tokenprune.pruner("attention | keep_all", keep=0.25)(padded_cues)
    unpadded = padded_cues[0]
    with pytest.raises(PluginError, match=r"keep_all.*expected at most the budget of 4 kept tokens \(from keep\), got 16 in sample 0"):
        tokenprune.pruner("attention | keep_all", keep=0.25)(unpadded)


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("none", "expected a tokenprune.Selection, got NoneType"),
        ("short_mask", r"Selection.mask: expected shape \(2, 16\) on cpu, got \(2, 15\)"),
        ("float_mask", "Selection.mask: expected a bool tensor, got torch.float32"),
        ("wrong_indices", "Selection.indices: expected the True positions of mask"),
    ],
)
def test_a_malformed_selection_is_refused(padded_cues, what, message):
    with pytest.raises(PluginError, match=rf"selector 'returns' \(plugin 'bad_stages'\): {message}"):
        tokenprune.pruner(f"attention | returns(what={what!r})", keep=2)(padded_cues)


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("none", r"expected a \(B, N\) = \(2, 16\) float tensor of scores, got NoneType"),
        ("shape", r"expected scores of shape \(2, 16\), got \(2, 17\)"),
        ("long", "expected floating-point scores, got torch.int64"),
        ("nan", "expected finite scores, got nan at sample 0, token 0"),
    ],
)
def test_a_malformed_score_is_refused(padded_cues, what, message):
    with pytest.raises(PluginError, match=rf"score 'bad_score' \(plugin 'bad_stages'\): {message}"):
        tokenprune.pruner(f"bad_score(what={what!r}) | top_k", keep=2)(padded_cues)


def test_a_decay_out_of_range_is_refused(padded_cues, eager_selectors):
    pruner = tokenprune.pruner("attention | soft_nms(three=True, similarity=None)", keep=3)
    with pytest.raises(PluginError, match=r"decay 'three' \(plugin 'bad_stages'\): expected factors in \[0, 1\].*got 3"):
        pruner(padded_cues)


def test_a_stage_object_outside_any_plugin_is_named_by_its_class(padded_cues):
    from tokenprune.strategies.scores import AttentionScore

    pruner = tokenprune.pruner([AttentionScore(), KeepAll()], keep=1)
    with pytest.raises(PluginError, match=r"selector 'keep_all' \(plugin 'bad_stages'\)"):
        pruner(padded_cues)  # registered under that name: the plugin is named

    class Unregistered(KeepAll):
        name = "unregistered"

    with pytest.raises(PluginError, match=r"selector 'unregistered' \(class .*test_stage_checks\..*Unregistered\)"):
        tokenprune.pruner([AttentionScore(), Unregistered()], keep=1)(padded_cues)


def test_well_behaved_outside_stages_pass_unchanged(padded_cues, eager_selectors):
    from tokenprune.strategies.scores import AttentionScore
    from tokenprune.strategies.selectors import TopK
    from tokenprune.strategies.soft_nms import SpatialDecay

    class OutsideTopK(TopK):
        pass

    @dataclass(frozen=True, repr=False)
    class OutsideSpatial(SpatialDecay):
        pass

    ours = tokenprune.pruner("attention | top_k", keep=0.5)(padded_cues)
    theirs = tokenprune.pruner([AttentionScore(), OutsideTopK()], keep=0.5)(padded_cues)
    assert torch.equal(ours.mask, theirs.mask)
    ours = tokenprune.pruner("attention | soft_nms(similarity=None)", keep=0.5)(padded_cues)
    soft_nms = tokenprune.pruner("attention | soft_nms(similarity=None)", keep=0.5).selector
    outside = type(soft_nms)(radius=soft_nms.radius, decays=(OutsideSpatial(1.5),))
    theirs = tokenprune.pruner([AttentionScore(), outside], keep=0.5)(padded_cues)
    assert torch.equal(ours.mask, theirs.mask)
