"""The component registry: kinds, ``register``, ``build``, listing and plugin loading.

Public contract (plugins depend on it; docs/plugins.md#registering-a-component):

- ``@register("masker", "cube")`` registers a class or factory under a kind and a name and
  makes it gin-configurable as ``maskers.cube`` (the kind's plural is the gin module).
- A name registered twice is a :class:`RegistryError` naming both origins; the first stays.
- Plugins are modules named by entry points of the group ``mlr_registry.plugins``; importing
  one registers its components, whose origin is the plugin's distribution name. A plugin that
  fails to import is recorded (name and error) and the others still load.
- ``build(kind, name, **kwargs)`` constructs a component with gin bindings applied and the
  keyword arguments on top.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import inspect
import traceback
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, TypeVar

import gin

from mlr_registry.errors import ConfigError, RegistryError

KINDS: tuple[str, ...] = ("masker", "encoder", "decoder", "loss", "agent", "replay", "env", "trainer")
GIN_MODULES: dict[str, str] = {
    "masker": "maskers", "encoder": "encoders", "decoder": "decoders", "loss": "losses",
    "agent": "agents", "replay": "replays", "env": "envs", "trainer": "trainers",
}
ENTRY_POINT_GROUP = "mlr_registry.plugins"
BUILTIN = "built-in"

# The one list of built-in component modules; the registry imports nothing else by name.
BUILTIN_MODULES: tuple[str, ...] = (
    "mlr_registry.envs.atari",
    "mlr_registry.envs.catch",
    "mlr_registry.envs.dmc",
    "mlr_registry.replay.prioritized_sequence_replay",
    "mlr_registry.replay.uniform_sequence_replay",
    "mlr_registry.replay.transition_replay",
    "mlr_registry.maskers.cube",
    "mlr_registry.maskers.spatial",
    "mlr_registry.maskers.tube",
    "mlr_registry.maskers.random_cube",
    "mlr_registry.maskers.frame",
    "mlr_registry.encoders.nature_cnn",
    "mlr_registry.encoders.pixel_encoder",
    "mlr_registry.encoders.impala_cnn",
    "mlr_registry.decoders.transformer",
    "mlr_registry.decoders.mlp",
    "mlr_registry.decoders.identity",
    "mlr_registry.losses.mlr",
    "mlr_registry.losses.spr",
    "mlr_registry.losses.curl",
    "mlr_registry.losses.pixel_reconstruction",
    "mlr_registry.agents.rainbow",
    "mlr_registry.agents.sac",
    "mlr_registry.agents.bbf",
    "mlr_registry.training.atari100k",
    "mlr_registry.training.dmc",
)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Component:
    """One registered component: where it came from and how to call it."""

    kind: str
    name: str
    target: Callable[..., Any]  # the gin-configurable class or function
    origin: str  # "built-in" or the plugin's distribution name
    module: str

    @property
    def selector(self) -> str:
        """The gin name, e.g. ``maskers.cube``."""
        return f"{GIN_MODULES[self.kind]}.{self.name}"

    def parameters(self) -> dict[str, Any]:
        """Constructor parameters and their defaults (``inspect.Parameter.empty`` if none)."""
        fn = self.target.__init__ if inspect.isclass(self.target) else self.target
        sig = inspect.signature(inspect.unwrap(fn))
        params = list(sig.parameters.values())
        if inspect.isclass(self.target) and params and params[0].name == "self":
            params = params[1:]
        return {p.name: p.default for p in params
                if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


@dataclasses.dataclass(frozen=True)
class PluginFailure:
    """A plugin entry point that could not be imported."""

    entry_point: str
    distribution: str
    error: str
    traceback: str = ""  # the import's traceback (the CLI prints it under --debug)

    def __str__(self) -> str:
        return f"plugin {self.entry_point!r} ({self.distribution}) failed to load: {self.error}"


_components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
_plugin_failures: list[PluginFailure] = []
_loaded_plugins: dict[str, str] = {}  # entry-point name -> distribution name
_current_origin: str | None = None  # a plugin's distribution name while load_all imports it
_loaded = False
_loading = False


def _ensure_loaded() -> None:
    """Load the built-in components and plugins on first use from Python (``build`` in a
    notebook, a user's own ``register``), as the CLI does at start-up."""
    if not _loaded and not _loading:
        load_all()


def _origin_of(module: str) -> str:
    """Who registers from ``module``: the plugin being loaded, else ``built-in`` for this
    package's modules, else the module itself (``__main__`` for a notebook or script)."""
    if _current_origin is not None:
        return _current_origin
    return BUILTIN if module == "mlr_registry" or module.startswith("mlr_registry.") else module


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}.{hint}")


def register(kind: str, name: str) -> Callable[[T], T]:
    """Register a class or factory as component ``name`` of ``kind`` and make it gin-configurable.

    Classes are made configurable in place, so calling the class directly (or ``build``) applies
    gin bindings. Registering a taken name raises :class:`RegistryError` naming both origins.
    """
    _check_kind(kind)

    def decorate(target: T) -> T:
        module = getattr(target, "__module__", "?")
        origin = _origin_of(module)
        if origin != BUILTIN:  # user code: the built-ins first, so that a clash is reported here
            _ensure_loaded()
        existing = _components[kind].get(name)
        if existing is not None:
            raise RegistryError(
                f"{kind} {name!r} is already registered by {existing.origin} "
                f"({existing.module}); {origin} ({module}) tried to register it again. "
                "Pick another name: a registered component is never replaced."
            )
        configurable = gin.configurable(name, module=GIN_MODULES[kind])(target)
        _components[kind][name] = Component(kind, name, configurable, origin, module)
        return configurable

    return decorate


@contextlib.contextmanager
def _origin(name: str) -> Iterator[None]:
    global _current_origin
    previous, _current_origin = _current_origin, name
    try:
        yield
    finally:
        _current_origin = previous


def load_all() -> list[PluginFailure]:
    """Import the built-in components, then every plugin entry point (once per process).

    Returns the plugins that failed to load; the CLI reports them and carries on.
    """
    global _loaded, _loading
    if _loaded or _loading:
        return list(_plugin_failures)
    _loading = True
    try:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else ep.value
            before = {kind: set(names) for kind, names in _components.items()}
            with _origin(dist):
                try:
                    ep.load()
                except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin must not stop the others
                    _unregister_since(before)
                    _plugin_failures.append(PluginFailure(ep.name, dist, f"{type(exc).__name__}: {exc}",
                                                          traceback.format_exc()))
                    continue
            _loaded_plugins[ep.name] = dist
        _loaded = True
    finally:
        _loading = False
    return list(_plugin_failures)


def _unregister_since(before: dict[str, set[str]]) -> None:
    """Forget what a plugin registered before it failed to import, here and in gin: a config that
    names one of its components then fails as an unknown component instead of running half a
    broken plugin under a run tag that does not name it."""
    for kind, names in _components.items():
        for name in set(names) - before[kind]:
            component = names.pop(name)
            for selector in list(gin.config._REGISTRY.matching_selectors(component.selector)):
                gin.config._REGISTRY.pop(selector)


def plugin_failures() -> list[PluginFailure]:
    return list(_plugin_failures)


def loaded_plugins() -> dict[str, str]:
    """Entry-point name -> distribution name, for the plugins that loaded."""
    return dict(_loaded_plugins)


def components(kind: str | None = None) -> list[Component]:
    """Registered components, of one kind or all, sorted by kind order then name."""
    kinds = KINDS if kind is None else (kind,)
    for k in kinds:
        _check_kind(k)
    _ensure_loaded()
    return [_components[k][n] for k in kinds for n in sorted(_components[k])]


def lookup(kind: str, name: str) -> Component:
    """The component ``name`` of ``kind``; an unknown name lists the closest registered ones."""
    _check_kind(kind)
    _ensure_loaded()
    try:
        return _components[kind][name]
    except KeyError:
        raise RegistryError(unknown_component_message(kind, name)) from None


def unknown_component_message(kind: str, name: str) -> str:
    names = sorted(_components[kind])
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return (f"unknown {kind} {name!r}{hint} (registered {kind}s: {', '.join(names) or 'none'}; "
            "`python -m mlr_registry.run --list` shows all)")


def build(kind: str, name: str, **kwargs: Any) -> Any:
    """Construct a registered component: gin bindings apply, ``kwargs`` override them."""
    component = lookup(kind, name)
    params = component.parameters()
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(unknown_parameter_message(component, unknown[0]))
    return component.target(**kwargs)


def unknown_parameter_message(component: Component, parameter: str) -> str:
    params = component.parameters()
    close = difflib.get_close_matches(parameter, list(params), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (f"{component.kind} {component.name!r} has no parameter {parameter!r}{hint} "
            f"(its parameters: {', '.join(params) or 'none'})")


def find_selector(selector: str) -> Component | None:
    """The component a gin selector (``maskers.cube`` or just ``cube``) names, if any."""
    parts = selector.split(".")
    for component in components():
        if parts[-1] == component.name and (len(parts) == 1 or parts[-2] == GIN_MODULES[component.kind]):
            return component
    return None


def kind_of_gin_module(module: str) -> str | None:
    return next((k for k, m in GIN_MODULES.items() if m == module), None)
