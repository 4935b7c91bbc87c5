"""Name -> factory registry of strategies, recipes, adapters and cue sources, filled by
pluggy plugins.

Built-ins are plugins like any other (`tokenprune.strategies.builtin`,
`tokenprune.adapters.builtin`, `tokenprune.capture.builtin`); third-party plugins come
from entry points of group ``tokenprune``.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Literal

import pluggy

from tokenprune import hookspecs
from tokenprune.errors import PluginError, SpecError
from tokenprune.strategies.base import Stage

__all__ = [
    "KINDS",
    "ClassEntry",
    "Recipe",
    "Registry",
    "Strategy",
    "available",
    "get_registry",
    "register_plugin",
    "reload",
    "stages_in",
    "unregister_plugin",
]

StrategyKind = Literal["score", "transform", "selector", "decay"]
STRATEGY_KINDS: tuple[str, ...] = ("score", "transform", "selector", "decay")
#: Kinds of registered names, in spec-string order.
KINDS = ("recipe", "score", "transform", "selector", "decay", "adapter", "cue")


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: ``factory(**kwargs)`` builds it.

    Plugins return their stage classes and the registry makes the entry with
    `Strategy.of`; build one by hand only for a factory that is not a stage class.
    """

    name: str
    kind: StrategyKind
    factory: Callable[..., Any]
    description: str
    plugin: str = field(default="", compare=False)

    @classmethod
    def of(cls, stage: type[Stage]) -> Strategy:
        """The entry of a stage class: its ``name``, ``kind`` and ``description``, built
        by its classmethod ``build`` if it has one, else by the class itself."""
        return cls(stage.name, stage.kind, getattr(stage, "build", stage), stage.description)  # type: ignore[arg-type]


def stages_in(*modules: ModuleType) -> list[type[Stage]]:
    """Every named stage class defined in ``modules`` (not imported into them), in
    definition order: what a plugin module's ``tokenprune_strategies`` hook returns."""
    return [
        value
        for module in modules
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Stage)
        and value.__module__ == module.__name__
        and value.name
    ]


@dataclass(frozen=True)
class Recipe:
    """A named pruner: a spec string such as ``"attention | top_k"``."""

    name: str
    spec: str
    description: str
    plugin: str = field(default="", compare=False)
    kind: str = field(default="recipe", init=False)


@dataclass(frozen=True)
class ClassEntry:
    """A registered class: an `tokenprune.Adapter` subclass (kind ``"adapter"``) or a
    `tokenprune.CueSource` subclass (kind ``"cue"``, one entry per cue name it provides)."""

    name: str
    kind: str
    cls: type
    description: str
    plugin: str = field(default="", compare=False)


Entry = Strategy | Recipe | ClassEntry


class Registry:
    """Every registered name, by kind, with the plugin that provides it."""

    def __init__(self, manager: pluggy.PluginManager) -> None:
        self.manager = manager
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        for impl in manager.hook.tokenprune_strategies.get_hookimpls():
            for entry in _hook_entries(impl, "tokenprune_strategies"):
                self._add(entry, impl.plugin_name, (Strategy, Recipe))
        for hook, kind in (("tokenprune_adapters", "adapter"), ("tokenprune_cues", "cue")):
            for impl in getattr(manager.hook, hook).get_hookimpls():
                for cls in _hook_entries(impl, hook):
                    for entry in _class_entries(cls, kind, impl.plugin_name):
                        self._add(entry, impl.plugin_name, (ClassEntry,))

    def _add(self, entry: Any, plugin: str, allowed: tuple[type, ...]) -> None:
        if Strategy in allowed and isinstance(entry, type) and issubclass(entry, Stage):
            if not entry.name:
                raise PluginError(
                    f"plugin '{plugin}': stage class {entry.__qualname__} needs a class attribute "
                    "name (the name spec strings use), got ''"
                )
            entry = Strategy.of(entry)
        if not isinstance(entry, allowed):
            names = " or ".join(t.__name__ for t in allowed) + " entries"
            if Strategy in allowed:
                names += " or stage classes (subclasses of Score, Transform, Selector, Decay)"
            raise PluginError(f"plugin '{plugin}': expected {names}, got {entry!r}")
        if not isinstance(entry.name, str) or not entry.name.isidentifier():
            raise PluginError(
                f"plugin '{plugin}': expected entry names that are identifiers (usable in spec "
                f"strings), got {entry.name!r}"
            )
        if isinstance(entry, Strategy) and entry.kind not in STRATEGY_KINDS:
            raise PluginError(
                f"plugin '{plugin}': strategy '{entry.name}' has kind {entry.kind!r}, expected one of "
                f"{', '.join(STRATEGY_KINDS)} (recipes are tokenprune.Recipe entries)"
            )
        if isinstance(entry, Strategy) and not callable(entry.factory):
            raise PluginError(
                f"plugin '{plugin}': strategy '{entry.name}' needs a callable factory, got {entry.factory!r}"
            )
        if isinstance(entry, Recipe) and not isinstance(entry.spec, str):
            raise PluginError(
                f"plugin '{plugin}': recipe '{entry.name}' needs a spec string, got {entry.spec!r}"
            )
        table = self._entries[entry.kind]
        if entry.name in table:
            raise PluginError(
                f"{entry.kind} '{entry.name}': provided by both plugin '{table[entry.name].plugin}' "
                f"and plugin '{plugin}'; uninstall one or rename the strategy"
            )
        table[entry.name] = replace(entry, plugin=plugin)

    def names(self, kind: str) -> list[str]:
        """Registered names of ``kind``, sorted."""
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> list[Entry]:
        return [self._entries[kind][n] for n in self.names(kind)]

    def has(self, kind: str, name: str) -> bool:
        return name in self._entries[kind]

    def get(self, kind: str, name: str) -> Any:
        """The entry ``name`` of ``kind``, or a `SpecError` with close matches."""
        try:
            return self._entries[kind][name]
        except KeyError:
            known = self.names(kind)
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise SpecError(
                f"{kind} name: unknown {kind} {name!r}{hint} (registered: {', '.join(known) or 'none'})"
            ) from None


def _class_entries(cls: Any, kind: str, plugin: str) -> list[ClassEntry]:
    """The registry entries of an adapter or cue-source class, checked."""
    from tokenprune.adapters.base import Adapter
    from tokenprune.capture.base import CueSource

    base = Adapter if kind == "adapter" else CueSource
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(
            f"plugin '{plugin}': expected subclasses of tokenprune.{base.__name__} (the classes, "
            f"not instances), got {cls!r}"
        )
    if kind == "adapter":
        return [ClassEntry(cls.name, kind, cls, cls.description)]
    if not cls.names or isinstance(cls.names, str):
        raise PluginError(
            f"plugin '{plugin}': cue source {cls.__name__} must list the cue names it provides "
            f"in `names` (a tuple of identifiers), got {cls.names!r}"
        )
    return [ClassEntry(name, kind, cls, cls.description) for name in cls.names]


def _hook_entries(impl: pluggy.HookImpl, hook: str) -> list[Any]:
    """What one plugin's hook returns: a list (or tuple) of entries, None for none."""
    try:
        result = impl.function()
    except Exception as exc:
        raise PluginError(
            f"plugin '{impl.plugin_name}': its {hook} hook raised {type(exc).__name__}: {exc}"
        ) from exc
    if result is None:
        return []
    if not isinstance(result, (list, tuple)):
        raise PluginError(
            f"plugin '{impl.plugin_name}': {hook} must return a list of entries, "
            f"got {type(result).__name__}"
        )
    return list(result)


def _load_entry_points(manager: pluggy.PluginManager) -> None:
    """Register every installed plugin of entry-point group ``tokenprune``.

    Unlike pluggy's loader, which silently skips a second entry point of the same name,
    two distributions that both name their entry point ``x`` both load: the later one
    as ``<distribution>:x``. A plugin that fails to import raises `PluginError` naming it.
    """
    for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
        dist = ep.dist.name if ep.dist is not None else "unknown distribution"
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin '{ep.name}' (entry point {ep.value!r} of {dist}): failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if manager.is_registered(plugin):
            continue  # the same module exposed twice
        name = ep.name if manager.get_plugin(ep.name) is None else f"{dist}:{ep.name}"
        manager.register(plugin, name=name)


# Re-entrant: checking the recipes builds pruners, which read the registry being built.
_lock = threading.RLock()
_registry: Registry | None = None
_extra_plugins: list[tuple[object, str]] = []


def _build() -> Registry:
    from tokenprune.adapters import builtin as builtin_adapters
    from tokenprune.capture import builtin as builtin_cues
    from tokenprune.strategies import builtin as builtin_strategies

    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(builtin_strategies, name="tokenprune.strategies")
    manager.register(builtin_adapters, name="tokenprune.adapters")
    manager.register(builtin_cues, name="tokenprune.capture")
    _load_entry_points(manager)
    for plugin, name in _extra_plugins:
        manager.register(plugin, name=name)
    return Registry(manager)


def get_registry() -> Registry:
    """The process-wide registry, built on first use (entry points are loaded then)."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = _build()
            try:
                _check_recipes(_registry)
            except BaseException:
                _registry = None
                raise
        return _registry


def _check_recipes(registry: Registry) -> None:
    """Build every recipe once, so that one whose spec names an unknown stage or a bad
    argument is refused when its plugin registers, not listed and broken on first use."""
    from tokenprune.pruner import pruner

    for recipe in registry.entries("recipe"):
        try:
            pruner(recipe.name, keep=1.0)
        except SpecError as exc:
            raise PluginError(
                f"plugin '{recipe.plugin}': recipe '{recipe.name}': expected a spec that builds, "
                f"got {recipe.spec!r} ({exc})"
            ) from None


def reload() -> Registry:
    """Rebuild the registry, e.g. after installing a plugin in a running process."""
    global _registry
    with _lock:
        _registry = None
    return get_registry()


def register_plugin(plugin: object, name: str | None = None) -> Registry:
    """Register a plugin object (a module or instance with ``@hookimpl`` functions)
    without an entry point, for notebooks and tests; rebuilds the registry."""
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    if any(existing == name for _, existing in _extra_plugins):
        raise PluginError(f"name: a plugin named '{name}' is already registered")
    _extra_plugins.append((plugin, name))
    try:
        return reload()
    except Exception:
        _extra_plugins.pop()
        reload()
        raise


def unregister_plugin(name: str) -> Registry:
    """Undo `register_plugin` for the plugin called ``name``."""
    before = len(_extra_plugins)
    _extra_plugins[:] = [(p, n) for p, n in _extra_plugins if n != name]
    if len(_extra_plugins) == before:
        raise PluginError(f"name: no plugin named '{name}' was registered with register_plugin")
    return reload()


def available(kind: str | None = None) -> dict[str, str]:
    """Registered names with one-line descriptions.

    Args:
        kind: one of ``"recipe"``, ``"score"``, ``"transform"``, ``"selector"``,
            ``"decay"``, ``"adapter"``, ``"cue"``; ``None`` lists all as ``"kind:name"``.
    """
    registry = get_registry()
    if kind is not None:
        if kind not in KINDS:
            raise SpecError(f"kind: expected one of {', '.join(KINDS)} or None, got {kind!r}")
        return {e.name: e.description for e in registry.entries(kind)}
    return {f"{k}:{e.name}": e.description for k in KINDS for e in registry.entries(k)}
