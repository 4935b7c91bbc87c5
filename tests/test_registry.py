"""Registry, spec strings, recipes, overrides and the pip-installed example plugin."""

from __future__ import annotations

import importlib
import importlib.metadata

import pytest
import torch

import tokenprune
from tokenprune import Cues, Layout, PluginError
from tokenprune.registry import get_registry
from tokenprune.strategies.selectors import TopK

TABLE_5 = ["fitprune", "skip", "random", "grid_random", "grid_max", "avg_pool", "last"]


def test_available_lists_every_kind_with_descriptions():
    names = tokenprune.available()
    for recipe in ["fastv", "adaptprune", "adaptprune_spatial", "adaptprune_correction", "vtw", *TABLE_5]:
        assert f"recipe:{recipe}" in names
    for name in ["score:attention", "score:random", "score:last", "score:norm", "transform:gaussian",
                 "transform:avg_pool", "selector:top_k", "selector:soft_nms", "selector:grid_max",
                 "selector:grid_random", "selector:skip", "selector:vtw", "decay:spatial", "decay:similarity"]:
        assert name in names
    assert all(isinstance(d, str) and d for d in names.values())


def test_builtins_register_through_the_public_hook():
    registry = get_registry()
    assert registry.get("selector", "soft_nms").plugin == "tokenprune.strategies"
    impls = registry.manager.hook.tokenprune_strategies.get_hookimpls()
    assert "tokenprune.strategies" in {i.plugin_name for i in impls}


def test_recipe_specs_round_trip():
    for name in tokenprune.available("recipe"):
        pruner = tokenprune.pruner(name, keep=0.1)
        again = tokenprune.pruner(pruner.spec, keep=0.1)
        assert again.spec == pruner.spec


def test_adaptprune_recipe_is_the_authors_configuration():
    pruner = tokenprune.pruner("adaptprune", keep=0.1)
    assert pruner.spec == "attention | gaussian(sigma=None) | soft_nms(radius=5.0, spatial=1.5, similarity=0.05)"
    assert pruner.requires == {"attention", "keys"}


def test_spec_string_equals_recipe():
    layout = Layout.grid(24, 24)
    g = torch.Generator().manual_seed(0)
    cues = Cues(layout, attention=torch.rand(1, 576, generator=g), keys=torch.randn(1, 576, 8, generator=g))
    a = tokenprune.pruner("adaptprune", keep=57)(cues)
    b = tokenprune.pruner("attention | gaussian(sigma=12) | soft_nms(radius=5, spatial=1.5, similarity=0.05)", keep=57)(cues)
    assert torch.equal(a.indices, b.indices)


def test_overrides_reach_the_stage_that_accepts_them():
    pruner = tokenprune.pruner("adaptprune", keep=0.1, radius=3, similarity=None)
    assert pruner.selector.radius == 3
    assert [d.name for d in pruner.selector.decays] == ["spatial"]
    with pytest.raises(tokenprune.SpecError, match="exactly one stage"):
        tokenprune.pruner("fastv", keep=0.1, radius=3)


def test_objects_compose():
    from tokenprune.strategies.scores import AttentionScore
    from tokenprune.strategies.transforms import Gaussian

    pruner = tokenprune.pruner([AttentionScore(), Gaussian(), TopK()], keep=5)
    assert pruner.spec == "attention | gaussian(sigma=None) | top_k"
    cues = Cues(Layout.grid(4, 4), attention=torch.rand(1, 16))
    assert pruner(cues).indices.shape == (1, 5)


def test_installed_plugin_is_discovered_from_its_entry_point():
    dist = importlib.metadata.distribution("tokenprune-example-plugin")
    assert any(ep.group == "tokenprune" for ep in dist.entry_points)
    registry = get_registry()
    assert registry.get("transform", "power").plugin == "example"
    cues = Cues(Layout.grid(4, 4), attention=torch.linspace(0.1, 1.0, 16).unsqueeze(0))
    selection = tokenprune.pruner("attention | power(exponent=3) | top_k", keep=4)(cues)
    assert selection.indices.tolist() == [[12, 13, 14, 15]]
    assert tokenprune.pruner("sharp_fastv", keep=4)(cues).indices.tolist() == [[12, 13, 14, 15]]
    assert "transform:power" in tokenprune.available()


class _Clashing:
    @tokenprune.hookimpl
    def tokenprune_strategies(self):
        return [tokenprune.Strategy("top_k", "selector", TopK, "a second top_k")]


def test_name_clash_names_both_plugins():
    with pytest.raises(PluginError, match="selector 'top_k': provided by both plugin 'tokenprune.strategies' and plugin 'clash'"):
        tokenprune.register_plugin(_Clashing(), name="clash")
    assert get_registry().get("selector", "top_k").plugin == "tokenprune.strategies"


class _Extra:
    @tokenprune.hookimpl
    def tokenprune_strategies(self):
        return [tokenprune.Recipe("top_half", "attention | top_k", "keeps by attention")]


def test_register_plugin_programmatically():
    from tokenprune.registry import unregister_plugin

    tokenprune.register_plugin(_Extra(), name="extra")
    try:
        assert tokenprune.available("recipe")["top_half"] == "keeps by attention"
    finally:
        unregister_plugin("extra")
    assert "top_half" not in tokenprune.available("recipe")


def _plugin(result):
    """A plugin object whose strategies hook returns ``result`` (or raises it)."""

    class Plugin:
        @tokenprune.hookimpl
        def tokenprune_strategies(self):
            if isinstance(result, Exception):
                raise result
            return result

    return Plugin()


@pytest.mark.parametrize(
    ("result", "match"),
    [
        (tokenprune.Strategy("x", "selector", TopK, "d"), "tokenprune_strategies must return a list of entries, got Strategy"),
        ([tokenprune.Strategy("x", "recipe", TopK, "d")], "strategy 'x' has kind 'recipe', expected one of score, transform"),
        ([tokenprune.Strategy("x", "score", None, "d")], "strategy 'x' needs a callable factory, got None"),
        ([tokenprune.Recipe("x", ["attention", "top_k"], "d")], "recipe 'x' needs a spec string"),
        ([tokenprune.Recipe("my-recipe", "attention | top_k", "d")], "expected entry names that are identifiers"),
        ([object()], "expected Strategy or Recipe entries or stage classes"),
        ([tokenprune.Score], "stage class Score needs a class attribute name"),
        (RuntimeError("boom"), "its tokenprune_strategies hook raised RuntimeError: boom"),
        ([tokenprune.Recipe("x", "attention | top_kk", "d")], r"recipe 'x': expected a spec that builds, got 'attention \| top_kk' \(.*unknown selector 'top_kk'"),
        ([tokenprune.Recipe("x", "attention | soft_nms(radius=-1)", "d")], "recipe 'x': .*soft_nms radius: expected a positive"),
        ([tokenprune.Recipe("x", "attention |", "d")], "recipe 'x': .*stage 1 .* is empty"),
    ],
)
def test_malformed_plugins_raise_plugin_error_naming_the_plugin(result, match):
    with pytest.raises(PluginError, match=f"plugin 'broken': .*{match}"):
        tokenprune.register_plugin(_plugin(result), name="broken")
    assert "broken" not in {name for name, _ in get_registry().manager.list_name_plugin()}
    assert "top_k" in tokenprune.available("selector")
    assert "x" not in tokenprune.available("recipe")


class _EntryPoint:
    """What importlib.metadata yields for an installed entry point: name, value, dist, load()."""

    def __init__(self, name, module, dist):
        self.name, self.value, self.group = name, module, "tokenprune"
        self.dist = type("Dist", (), {"name": dist})()
        self._module = module

    def load(self):
        return importlib.import_module(self._module)


def test_two_distributions_with_the_same_entry_point_name_both_load(monkeypatch):
    from tokenprune import registry

    first = _EntryPoint("plugin", "plugins_for_registry.first", "first-dist")
    second = _EntryPoint("plugin", "plugins_for_registry.second", "second-dist")
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: [first, second])
    try:
        reg = registry.reload()
        assert reg.get("recipe", "first_recipe").plugin == "plugin"
        assert reg.get("recipe", "second_recipe").plugin == "second-dist:plugin"
    finally:
        monkeypatch.undo()
        registry.reload()


def test_an_entry_point_that_fails_to_import_names_itself(monkeypatch):
    from tokenprune import registry

    broken = _EntryPoint("oops", "plugins_for_registry.missing", "oops-dist")
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: [broken])
    try:
        with pytest.raises(PluginError, match=r"plugin 'oops' \(entry point .* of oops-dist\): failed to load: ModuleNotFoundError"):
            registry.reload()
    finally:
        monkeypatch.undo()
        registry.reload()


class _Doubled(tokenprune.Transform):
    """Double every score.

    A second paragraph that the description leaves out.
    """

    name = "doubled"

    def __call__(self, scores, cues):
        return 2 * scores


def test_a_stage_class_is_its_own_entry():
    entry = tokenprune.Strategy.of(_Doubled)
    assert (entry.name, entry.kind, entry.factory, entry.description) == (
        "doubled", "transform", _Doubled, "Double every score."
    )
    tokenprune.register_plugin(_plugin([_Doubled]), name="doubled-plugin")
    try:
        assert get_registry().get("transform", "doubled").plugin == "doubled-plugin"
        assert tokenprune.available("transform")["doubled"] == "Double every score."
        cues = Cues(Layout.grid(2, 2), attention=torch.tensor([[0.1, 0.4, 0.2, 0.3]]))
        assert tokenprune.pruner("attention | doubled | top_k", keep=1)(cues).indices.tolist() == [[1]]
    finally:
        tokenprune.unregister_plugin("doubled-plugin")


def test_builtin_entries_come_from_their_classes():
    from tokenprune.strategies import builtin, soft_nms

    registry = get_registry()
    for cls in tokenprune.stages_in(*builtin.MODULES):
        entry = registry.get(cls.kind, cls.name)
        assert entry.description == cls.description != ""
        assert entry.factory in (cls, getattr(cls, "build", None))
    # soft_nms takes its decay terms by name through its build classmethod.
    assert registry.get("selector", "soft_nms").factory == soft_nms.SoftNMS.build
    assert _Doubled not in tokenprune.stages_in(*builtin.MODULES)
