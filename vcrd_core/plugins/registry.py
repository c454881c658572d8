"""Registries per component kind, built from the plugin manager's ``vcrd_register_<kind>`` hooks.

Public API (stable): :func:`available` and :func:`create`. A name registered by two plugins is an
error naming both providers; an unknown name says what is available and suggests the closest.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from vcrd_core.config.validation import join_path, to_config_error
from vcrd_core.errors import ConfigError, ParamError, PluginError
from vcrd_core.plugins import kinds as K
from vcrd_core.plugins.component import Component, ComponentSpec
from vcrd_core.plugins.manager import PluginInfo, filters, get_plugin_manager, load_failures, plugin_info


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


def _base_class(kind: str) -> type[Component]:
    from vcrd_core.judging.judge import Judge
    from vcrd_core.losses.divergence import Divergence
    from vcrd_core.losses.weighting import WeightingRule

    return {K.DIVERGENCES: Divergence, K.WEIGHTING: WeightingRule, K.JUDGES: Judge}.get(kind, Component)


_cache: dict[str, tuple[tuple[object, ...], dict[str, Entry]]] = {}


def _check_class(kind: str, cls: Any, info: PluginInfo) -> None:
    base = _base_class(kind)
    who = f"plugin '{info.name}' (distribution {info.distribution})"
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(
            f"{who} registered {cls!r} as a {K.SINGULAR[kind]}, but it is not a subclass of {base.__name__}"
        )
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"{who} registered {cls.__name__} without a string `name`")
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)) or params.model_config.get("extra") != "forbid":
        raise PluginError(f"{who}: {cls.__name__}.Params must be a pydantic BaseModel with extra='forbid'")


def entries(kind: str) -> dict[str, Entry]:
    """Every registered component of ``kind`` by name (rebuilt when plugins are (un)registered)."""
    if kind not in K.KINDS:
        raise PluginError(f"Unknown component kind '{kind}'. Available kinds: {', '.join(K.KINDS)}.")
    pm = get_plugin_manager()
    key = (id(pm), getattr(pm, "generation", None), *((name, id(plugin)) for name, plugin in pm.list_name_plugin()))
    cached = _cache.get(kind)
    if cached is not None and cached[0] == key:
        return cached[1]
    hook = getattr(pm.hook, f"vcrd_register_{kind}")
    found: dict[str, Entry] = {}
    for impl in hook.get_hookimpls():  # registration order
        info = plugin_info(impl.plugin)
        who = f"plugin '{info.name}' (distribution {info.distribution})"
        try:
            returned = impl.function()
        except Exception as exc:  # a broken plugin is named, in one line, instead of a traceback
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise PluginError(f"{who}: vcrd_register_{kind}() failed: {type(exc).__name__}: {first}") from None
        if returned is None:
            returned = []
        if not isinstance(returned, (list, tuple)):
            raise PluginError(
                f"{who}: vcrd_register_{kind}() must return a list of classes, got {type(returned).__name__}"
            )
        for cls in returned:
            _check_class(kind, cls, info)
            if cls.name in found:
                other = found[cls.name].provider
                raise PluginError(
                    f"Duplicate {K.SINGULAR[kind]} '{cls.name}': registered by distribution "
                    f"{other.distribution} (plugin '{other.name}') and by distribution {info.distribution} "
                    f"(plugin '{info.name}'); uninstall one or disable it with VCRD_DISABLE_PLUGINS"
                )
            found[cls.name] = Entry(kind, cls.name, cls, info)
    _cache[kind] = (key, found)
    return found


def available(kind: str) -> list[str]:
    """Sorted names of the registered components of ``kind``."""
    return sorted(entries(kind))


def unknown_name_message(kind: str, name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listed = ", ".join(names) if names else "none installed"
    failed = load_failures()
    note = f" {len(failed)} plugin(s) failed to load ({failed[0]}); run `vcrd plugins`." if failed else ""
    return f"Unknown {K.SINGULAR[kind]} '{name}'.{hint} Available: {listed}{filters()}.{note}"


def get_class(kind: str, name: str, *, path: str = "") -> type[Component]:
    """The class registered as ``name``; a :class:`ConfigError` at ``path.name`` if there is none."""
    found = entries(kind)
    if name not in found:
        raise ConfigError(join_path(path, "name"), unknown_name_message(kind, name, sorted(found)))
    return found[name].cls


def validate_params(cls: type[Component], params: dict[str, Any] | BaseModel | None, *, path: str = "") -> BaseModel:
    """Second validation phase: ``params`` against ``cls.Params``, then nested component specs."""
    if isinstance(params, cls.Params):
        validated = params
    else:
        raw = params.model_dump() if isinstance(params, BaseModel) else (params or {})
        if not isinstance(raw, dict):
            raise ConfigError(join_path(path, "params"), f"expected a mapping (got {type(raw).__name__})")
        try:
            validated = cls.Params.model_validate(raw)
        except ValidationError as exc:
            raise to_config_error(exc, join_path(path, "params"), cls.Params) from None
    for field in type(validated).model_fields:
        value = getattr(validated, field)
        specs = value if isinstance(value, list) else [value]
        for i, spec in enumerate(specs):
            if isinstance(spec, ComponentSpec) and spec.kind is not None:
                where = join_path(path, "params", field, i if isinstance(value, list) else None)
                validate_spec(spec.kind, spec, path=where)
    return validated


def validate_spec(kind: str, spec: ComponentSpec, *, path: str = "") -> Component:
    """Both validation phases for one ``{name, params}`` block, returning the (cheap) instance."""
    return create(kind, spec.name, spec.params, path=path)


def create(kind: str, name: str, params: dict[str, Any] | BaseModel | None = None, *, path: str = "") -> Component:
    """A new component instance, ``params`` validated against the class's own ``Params``.

    Nothing heavy happens here: no model is loaded, no path is touched.
    """
    cls = get_class(kind, name, path=path)
    validated = validate_params(cls, params, path=path)
    try:
        return cls(validated)
    except ParamError as exc:
        raise ConfigError(join_path(path, "params", exc.field), exc.message) from None
