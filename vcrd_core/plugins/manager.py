"""The one plugin manager: entry points of group ``vcrd`` loaded lazily, once.

Every plugin — built-in or third-party — is a module named by an entry point in the ``vcrd`` group
that declares ``VCRD_PLUGIN_API`` and implements ``vcrd_*`` hooks. A plugin that fails to import,
declares another API version or implements an unknown hook is skipped with a recorded
:class:`LoadFailure`; the other plugins still load. (A plugin whose registration hook misbehaves is
skipped for that kind the same way, by :mod:`vcrd_core.plugins.registry`.)

Environment (keeps tests and ablations hermetic, like ``LLM_LOAD_PLUGINS``):

* ``VCRD_PLUGINS``: comma-separated entry-point or distribution names; when set, only those load
  (empty string: none).
* ``VCRD_DISABLE_PLUGINS``: comma-separated names that never load.

A name in either variable that matches no installed entry point or distribution (a typo) is recorded:
:func:`filter_warnings` says which, and what is available.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import re
import sys
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy

from vcrd_core import hookspecs

#: The plugin API this core provides. A plugin states the API it was built for as ``VCRD_PLUGIN_API``.
PLUGIN_API_VERSION = 1
ENTRY_POINT_GROUP = hookspecs.PROJECT
ENV_ALLOW = "VCRD_PLUGINS"
ENV_BLOCK = "VCRD_DISABLE_PLUGINS"
IN_PROCESS = "<in-process>"


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin came from."""

    name: str
    distribution: str
    version: str


@dataclass(frozen=True)
class LoadFailure:
    """A plugin that did not load (``kind`` None), or whose components of one ``kind`` were all skipped
    because its registration hook misbehaved, and why (one line)."""

    entry_point: str
    distribution: str
    message: str
    kind: str | None = None

    def __str__(self) -> str:
        what = "not loaded" if self.kind is None else f"skipped for {self.kind}"
        return f"plugin '{self.entry_point}' (distribution {self.distribution}) {what}: {self.message}"


_generation = 0


def _bump() -> None:
    global _generation
    _generation += 1


def generation() -> int:
    """A number that changes whenever the set of registered plugins may have changed (a registration, an
    unregistration, a :func:`reset`): the registries' one cache key (object ids can be reused, names
    re-registered)."""
    return _generation


class PluginManager(pluggy.PluginManager):
    """pluggy's manager; every (un)registration bumps :func:`generation`."""

    def register(self, plugin: object, name: str | None = None) -> str | None:
        result = super().register(plugin, name)
        _bump()
        return result

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        result = super().unregister(plugin, name)
        _bump()
        return result


class _State:
    def __init__(self) -> None:
        self.pm = PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.failures: list[LoadFailure] = []
        self.filtered: list[str] = []
        self.unmatched: list[str] = []


_state: _State | None = None
_lock = threading.Lock()


def normalize(name: str) -> str:
    """PEP 503 normalisation, so ``vcrd_divergences`` and ``VCRD-Divergences`` name the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(env: str) -> set[str] | None:
    value = os.environ.get(env)
    if value is None:
        return None
    return {normalize(part.strip()) for part in value.split(",") if part.strip()}


def _unmatched(env: str, names: set[str] | None, known: set[str]) -> str | None:
    """One line naming the names of ``env`` that match no entry point or distribution, or None."""
    missing = sorted((names or set()) - known)
    if not missing:
        return None
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    available = ", ".join(sorted(known)) or "none installed"
    return (
        f"{env} names {', '.join(hints)}, which match{'es' if len(missing) == 1 else ''} no installed plugin "
        f"(entry-point or distribution names available: {available})"
    )


def filter_warnings() -> list[str]:
    """One line per environment variable naming plugins that are not installed (typos), with what is."""
    return list(_get_state().unmatched)


def filters() -> str:
    """A phrase for messages naming the plugins the environment filters left out, and filter names that
    matched nothing ('' when neither)."""
    state = _get_state()
    parts = []
    if state.filtered:
        active = ", ".join(f"{env}={os.environ[env]!r}" for env in (ENV_ALLOW, ENV_BLOCK) if env in os.environ)
        parts.append(f"not loaded because of {active}: {', '.join(state.filtered)}")
    parts.extend(state.unmatched)
    return f" ({'; '.join(parts)})" if parts else ""


def _dist_of(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return ("<unknown distribution>", "")
    return (dist.metadata["Name"] or "<unknown distribution>", dist.version or "")


def _check_api(plugin: Any) -> str | None:
    """The plugin's declared API: on the object, else on the module that defines it (``module:attr``
    entry points)."""
    declared = getattr(plugin, "VCRD_PLUGIN_API", None)
    module_name = plugin.__name__ if isinstance(plugin, ModuleType) else getattr(plugin, "__module__", None)
    if declared is None and module_name in sys.modules:
        declared = getattr(sys.modules[module_name], "VCRD_PLUGIN_API", None)
    if declared is None:
        return (
            f"module {module_name} does not declare VCRD_PLUGIN_API "
            f"(this vcrd provides plugin API {PLUGIN_API_VERSION})"
        )
    if declared != PLUGIN_API_VERSION:
        return (
            f"built for vcrd plugin API {declared!r}, but this vcrd provides plugin API "
            f"{PLUGIN_API_VERSION}; install a release of the plugin built for API {PLUGIN_API_VERSION}"
        )
    return None


def _hook_hint(message: str) -> str:
    """pluggy's "unknown hook 'vcrd_register_weightings' ..." with the closest hook name suggested."""
    unknown = re.search(r"unknown hook '([^']+)'", message)
    specs = [name for name in vars(hookspecs) if name.startswith(f"{hookspecs.PROJECT}_")]
    close = difflib.get_close_matches(unknown.group(1), specs, n=1) if unknown else []
    return f"{message} (did you mean '{close[0]}'?)" if close else message


def _load(state: _State) -> None:
    allow, block = _names(ENV_ALLOW), _names(ENV_BLOCK) or set()
    eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    known = {normalize(n) for ep in eps for n in (ep.name, _dist_of(ep)[0]) if not n.startswith("<")}
    for env, names in ((ENV_ALLOW, allow), (ENV_BLOCK, block)):
        line = _unmatched(env, names, known)
        if line:
            state.unmatched.append(line)
    for ep in eps:
        dist, version = _dist_of(ep)
        names = {normalize(ep.name), normalize(dist)}
        if names & block or (allow is not None and not names & allow):
            state.filtered.append(ep.name)
            continue
        if state.pm.get_plugin(ep.name) is not None:
            other = state.infos.get(ep.name)
            where = other.distribution if other else IN_PROCESS
            state.failures.append(LoadFailure(ep.name, dist, f"entry point name already used by distribution {where}"))
            continue
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must not take the others down
            msg = f"import of '{ep.value}' failed: {type(exc).__name__}: {exc}".splitlines()[0]
            state.failures.append(LoadFailure(ep.name, dist, msg))
            continue
        problem = _check_api(module)
        if problem:
            state.failures.append(LoadFailure(ep.name, dist, problem))
            continue
        try:
            state.pm.register(module, name=ep.name)
            state.pm.check_pending()
        except Exception as exc:
            if state.pm.is_registered(module):
                state.pm.unregister(module)
            state.failures.append(LoadFailure(ep.name, dist, _hook_hint(str(exc).splitlines()[0])))
            continue
        state.infos[ep.name] = PluginInfo(ep.name, dist, version)


def _get_state() -> _State:
    global _state
    with _lock:
        if _state is None:
            state = _State()
            _load(state)
            _state = state
        return _state


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, entry points loaded on first use.

    Tests may ``register(obj, name=...)`` in-process plugins on it and unregister them afterwards;
    registries notice the change.
    """
    return _get_state().pm


def load_failures() -> list[LoadFailure]:
    """Plugins that were found but not loaded, in entry-point order."""
    return list(_get_state().failures)


def plugin_info(plugin: Any) -> PluginInfo:
    """The distribution that provided a registered plugin object (``<in-process>`` for test fakes)."""
    state = _get_state()
    name = state.pm.get_name(plugin) or IN_PROCESS
    return state.infos.get(name) or PluginInfo(name, IN_PROCESS, "")


def reset() -> None:
    """Forget the loaded plugins; the next use loads entry points again (tests use this after
    changing ``VCRD_PLUGINS`` or installing a distribution)."""
    global _state
    with _lock:
        _state = None
        _bump()
