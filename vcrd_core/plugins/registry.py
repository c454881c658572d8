"""Registries per component kind, built from the plugin manager's ``vcrd_register_<kind>`` hooks.

Public API (stable): :func:`available` and :func:`create`. A name registered by two plugins is an
error naming both providers; an unknown name says what is available and suggests the closest. A
plugin whose registration hook raises, returns no list or returns a class that is not a valid
component is skipped for that kind, named in one line by :func:`failures`; the others still load.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from vcrd_core.errors import ConfigError, ParamError, PluginError
from vcrd_core.plugins.component import Component, component_specs
from vcrd_core.plugins.kinds import KINDS, get_kind
from vcrd_core.plugins.manager import (
    LoadFailure,
    PluginInfo,
    filter_warnings,
    filters,
    generation,
    get_plugin_manager,
    load_failures,
    plugin_info,
)
from vcrd_core.plugins.validation import join_path, to_config_error


@dataclass(frozen=True)
class Entry:
    """One registered component class and who provided it."""

    kind: str
    name: str
    cls: type[Component]
    provider: PluginInfo

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


_cache: dict[str, tuple[int, dict[str, Entry], list[LoadFailure]]] = {}


def _class_problem(kind: str, cls: Any) -> str | None:
    """Why ``cls`` cannot be registered as a component of ``kind`` (one line), or None."""
    k = get_kind(kind)
    if not (isinstance(cls, type) and issubclass(cls, Component) and getattr(cls, "kind", None) == k.name):
        return f"registered {cls!r} as a {k.singular}, but it is not a subclass of {k.base}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        return f"registered {cls.__name__} without a string `name`"
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)) or params.model_config.get("extra") != "forbid":
        return f"{cls.__name__}.Params must be a pydantic BaseModel with extra='forbid'"
    return None


def _registered(kind: str, function: Any) -> tuple[list[type[Component]], str | None]:
    """The classes one plugin's registration hook returns, or none and why (one line): a plugin is
    registered whole or not at all, so a config never runs with half of it."""
    k = get_kind(kind)
    try:
        returned = function()
    except Exception as exc:  # a broken plugin is named, in one line, instead of a traceback
        first = str(exc).splitlines()[0] if str(exc) else ""
        return [], f"{k.hook}() failed: {type(exc).__name__}: {first}"
    if returned is None:
        return [], None
    if isinstance(returned, type):
        return [], f"{k.hook}() must return a list of classes, got the class {returned.__name__} itself"
    if not isinstance(returned, (list, tuple)):
        return [], f"{k.hook}() must return a list of classes, got {type(returned).__name__}"
    seen: set[str] = set()
    for cls in returned:
        problem = _class_problem(kind, cls)
        if problem:
            return [], problem
        if cls.name in seen:
            return [], f"{k.hook}() returned two {k.singular} classes named '{cls.name}'"
        seen.add(cls.name)
    return list(returned), None


def _build(kind: str) -> tuple[int, dict[str, Entry], list[LoadFailure]]:
    """Every plugin's components of ``kind`` (cached per plugin-manager generation). A plugin whose
    hook misbehaves is skipped for this kind with a recorded :class:`LoadFailure`; the same name from
    two plugins is a :class:`PluginError` naming both (a real conflict only the user can resolve)."""
    k = get_kind(kind)
    pm = get_plugin_manager()
    key = generation()
    cached = _cache.get(kind)
    if cached is not None and cached[0] == key:
        return cached
    found: dict[str, Entry] = {}
    failed: list[LoadFailure] = []
    for impl in getattr(pm.hook, k.hook).get_hookimpls():  # registration order
        info = plugin_info(impl.plugin)
        classes, problem = _registered(kind, impl.function)
        if problem:
            failed.append(LoadFailure(info.name, info.distribution, problem, kind=kind))
            continue
        for cls in classes:
            if cls.name in found:
                other = found[cls.name].provider
                typos = "".join(f" ({line})" for line in filter_warnings())  # e.g. a misspelt block-list
                raise PluginError(
                    f"Duplicate {k.singular} '{cls.name}': registered by distribution "
                    f"{other.distribution} (plugin '{other.name}') and by distribution {info.distribution} "
                    f"(plugin '{info.name}'); uninstall one or disable it with VCRD_DISABLE_PLUGINS{typos}"
                )
            found[cls.name] = Entry(kind, cls.name, cls, info)
    _cache[kind] = (key, found, failed)
    return _cache[kind]


def entries(kind: str) -> dict[str, Entry]:
    """Every registered component of ``kind`` by name (rebuilt when plugins are (un)registered)."""
    return _build(kind)[1]


def failures(kind: str | None = None) -> list[LoadFailure]:
    """Plugins that did not load, then plugins skipped for ``kind`` (for every kind when None)."""
    kinds = list(KINDS) if kind is None else [get_kind(kind).name]
    return load_failures() + [f for k in kinds for f in _build(k)[2]]


def available(kind: str) -> list[str]:
    """Sorted names of the registered components of ``kind``."""
    return sorted(entries(kind))


def unknown_name_message(kind: str, name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listed = ", ".join(names) if names else "none installed"
    failed = failures(kind)
    note = f" {len(failed)} plugin(s) failed to load ({failed[0]}); run `vcrd plugins`." if failed else ""
    return f"Unknown {get_kind(kind).singular} '{name}'.{hint} Available: {listed}{filters()}.{note}"


def get_class(kind: str, name: str, *, path: str = "") -> type[Component]:
    """The class registered as ``name``; a :class:`ConfigError` at ``path.name`` if there is none."""
    found = entries(kind)
    if name not in found:
        raise ConfigError(join_path(path, "name"), unknown_name_message(kind, name, sorted(found)))
    return found[name].cls


def validate_params(cls: type[Component], params: dict[str, Any] | BaseModel | None, *, path: str = "") -> BaseModel:
    """Second validation phase: ``params`` against ``cls.Params`` (a :class:`ConfigError` at ``path.params.<key>``).

    Specs nested in the params are validated when :func:`create` builds them.
    """
    if isinstance(params, cls.Params):
        return params
    raw = params.model_dump() if isinstance(params, BaseModel) else (params or {})
    try:
        return cls.Params.model_validate(raw)
    except ValidationError as exc:
        raise to_config_error(exc, join_path(path, "params"), cls.Params) from None


#: How many levels components may nest inside each other's params (``clamp`` of ``ratio`` is one level).
#: Nesting composes rules (the paper's deepest is ``log_clamp`` of ``ratio``; ``clamp`` of ``log_clamp`` of
#: ``ratio`` is two), so eight levels is far beyond any meaningful rule; each level costs a call per batch
#: at run time, and a limit turns a runaway or generated config into one line naming its YAML path instead
#: of a ``RecursionError`` deep inside pydantic or torch.
MAX_NESTING = 8


def create(kind: str, name: str, params: dict[str, Any] | BaseModel | None = None, *, path: str = "") -> Component:
    """A new component instance, ``params`` validated against the class's own ``Params``.

    Components nested in ``params`` (``clamp``'s ``inner``) are built first, depth-first, each exactly once
    (validation is linear in the nesting depth) and kept on its spec, where the outer component's
    constructor takes it from :attr:`~vcrd_core.ComponentSpec.built`; errors name their YAML path below
    ``path``. More than :data:`MAX_NESTING` levels is a :class:`ConfigError`. Nothing heavy happens here:
    no model is loaded, no path is touched.
    """
    return _create(kind, name, params, path, 0)


def _create(kind: str, name: str, params: dict[str, Any] | BaseModel | None, path: str, depth: int) -> Component:
    if depth > MAX_NESTING:
        raise ConfigError(
            path,
            f"components nested more than {MAX_NESTING} levels deep (a component in another's params is one "
            "level); flatten the rule",
        )
    cls = get_class(kind, name, path=path)
    validated = validate_params(cls, params, path=path)
    for where, spec in component_specs(validated, join_path(path, "params")):
        spec._built = _create(spec.kind, spec.name, spec.params, where, depth + 1)  # type: ignore[arg-type]
    try:
        return cls(validated)
    except ParamError as exc:
        raise ConfigError(join_path(path, "params", exc.field), exc.message) from None
