"""Load a run config: YAML (``safe_load`` only) → ``extends`` → ``--set`` → two-phase validation.

Every error is one :class:`~vcrd_core.errors.ConfigError` line naming the dotted YAML path and,
where known, ``file:line``.

* ``extends: base.yaml`` (a path relative to the file, or a list of them, merged in order) deep-merges the
  file over its base. A mapping whose ``name`` differs from the base's replaces it whole, so swapping a
  component never inherits the old component's params.
* ``--set a.b.c=value`` (value parsed as YAML) must name a key the config schema knows, or a key inside a
  component's ``params`` (checked in phase two against that component).
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vcrd_core.component import ComponentSpec
from vcrd_core.config.models import RunConfig
from vcrd_core.errors import ConfigError, VcrdError
from vcrd_core.registry import create
from vcrd_core.validation import _models_in, join_path, to_config_error

SETS = "--set"


@dataclass
class RawConfig:
    """The merged YAML mapping and, for each dotted path, where it was written (``file:line`` or ``--set``)."""

    data: dict[str, Any]
    locations: dict[str, str] = field(default_factory=dict)
    source: str | None = None

    def location_of(self, path: str) -> str | None:
        parts = path.split(".") if path else []
        while parts:
            found = self.locations.get(".".join(parts))
            if found:
                return found
            parts.pop()
        return None


def _node_locations(node: yaml.Node, file: str, prefix: str, out: dict[str, str]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = join_path(prefix, key.value)
            out[name] = f"{file}:{key.start_mark.line + 1}"
            _node_locations(value, file, name, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            name = join_path(prefix, i)
            out[name] = f"{file}:{item.start_mark.line + 1}"
            _node_locations(item, file, name, out)


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    if not path.exists():
        raise VcrdError(f"config file '{path}' does not exist")
    if path.is_dir():
        raise VcrdError(f"config file '{path}' is a directory; expected a YAML file")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        raise VcrdError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise VcrdError(f"{path}: YAML error: {str(exc).splitlines()[0]}") from None
    if data is None:
        raise VcrdError(f"{path}: the file is empty; expected a mapping with sections such as models, data, objective")
    if not isinstance(data, dict):
        raise VcrdError(f"{path}:1: the top level must be a mapping of sections, not a {type(data).__name__}")
    locations: dict[str, str] = {}
    if node is not None:
        _node_locations(node, str(path), "", locations)
    return data, locations


def _merge(base: Any, over: Any, top: bool = True) -> Any:
    """Deep merge; below the top level (whose ``name`` is the run's name), a mapping whose ``name``
    differs from the base's is a different component and replaces it whole."""
    if isinstance(base, dict) and isinstance(over, dict):
        if not top and "name" in over and "name" in base and over["name"] != base["name"]:
            return copy.deepcopy(over)
        merged = copy.deepcopy(base)
        for key, value in over.items():
            merged[key] = _merge(merged[key], value, top=False) if key in merged else copy.deepcopy(value)
        return merged
    return copy.deepcopy(over)


def _load_file(path: Path, stack: tuple[Path, ...]) -> RawConfig:
    data, locations = _read_yaml(path)
    bases = data.pop("extends", None)
    if bases is None:
        return RawConfig(data, locations)
    where = locations.get("extends", str(path))
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError("extends", "expected a file path or a list of file paths", where)
    merged = RawConfig({}, {})
    for base in bases:
        base_path = (path.parent / base).resolve()
        if base_path == path:
            raise ConfigError("extends", f"'{base}' is this file itself; a config cannot extend itself", where)
        if base_path in stack:
            chain = " -> ".join(str(p) for p in (*stack, base_path))
            raise ConfigError("extends", f"circular extends: {chain}", where)
        if not base_path.exists():
            raise ConfigError("extends", f"base file '{base}' does not exist (looked for {base_path})", where)
        loaded = _load_file(base_path, (*stack, base_path))
        merged = RawConfig(_merge(merged.data, loaded.data), {**merged.locations, **loaded.locations})
    return RawConfig(_merge(merged.data, data), {**merged.locations, **locations})


def _component_fields(model: type[BaseModel], key: str) -> tuple[type[BaseModel] | None, bool]:
    """(submodel for ``key`` or None, whether ``key`` exists)."""
    fld = model.model_fields.get(key) or next((f for f in model.model_fields.values() if f.alias == key), None)
    if fld is None:
        return None, False
    models = _models_in(fld.annotation)
    return (models[0] if len(models) == 1 else None), True


def _check_set_path(path: list[str]) -> None:
    model: type[BaseModel] | None = RunConfig
    for i, key in enumerate(path):
        if model is None:
            return
        if issubclass(model, ComponentSpec) and key == "params":
            return  # the component's own params: checked in phase two
        if key.isdigit():
            continue
        sub, exists = _component_fields(model, key)
        if not exists:
            valid = [f.alias or n for n, f in model.model_fields.items()]
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            here = ".".join(path[:i]) or "the top level"
            raise ConfigError(
                ".".join(path), f"unknown key '{key}' at {here}.{hint} Valid keys: {', '.join(valid)}.", SETS
            )
        model = sub


def apply_set(raw: RawConfig, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place (value parsed as YAML)."""
    if "=" not in assignment:
        raise VcrdError(f"{SETS} '{assignment}': expected PATH=VALUE, e.g. objective.teacher_prefix.lambda=2")
    dotted, text = assignment.split("=", 1)
    path = [p for p in dotted.strip().split(".")]
    if not all(path):
        raise VcrdError(f"{SETS} '{assignment}': empty key in path '{dotted}'")
    _check_set_path(path)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise VcrdError(f"{SETS} '{assignment}': value is not valid YAML: {str(exc).splitlines()[0]}") from None
    node: Any = raw.data
    for key in path[:-1]:
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise VcrdError(f"{SETS} '{assignment}': '{key}' is inside a {type(node).__name__}, not a mapping")
        node = node.setdefault(key, {})
    last = path[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise VcrdError(f"{SETS} '{assignment}': cannot set '{last}' inside a {type(node).__name__}")
    raw.locations[".".join(path)] = SETS


def load_raw(path: str | Path, overrides: list[str] | None = None) -> RawConfig:
    """The merged mapping of ``path`` (with its bases) and the ``--set`` overrides, not validated."""
    file = Path(path)
    raw = _load_file(file.resolve() if file.exists() else file, (file.resolve(),))
    raw.locations = {k: v.replace(str(file.resolve()), str(file)) for k, v in raw.locations.items()}
    raw.source = str(file)
    for assignment in overrides or []:
        apply_set(raw, assignment)
    return raw


def _walk_specs(value: Any, path: str) -> list[tuple[str, ComponentSpec]]:
    found: list[tuple[str, ComponentSpec]] = []
    if isinstance(value, ComponentSpec):
        return [(path, value)]
    if isinstance(value, BaseModel):
        for name, fld in type(value).model_fields.items():
            found += _walk_specs(getattr(value, name), join_path(path, fld.alias or name))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _walk_specs(item, join_path(path, i))
    return found


def validate_components(config: RunConfig) -> dict[str, Any]:
    """Phase two: every ``{name, params}`` block against its plugin; returns the instances by path."""
    instances: dict[str, Any] = {}
    for path, spec in _walk_specs(config, ""):
        assert spec.kind is not None
        instances[path] = create(spec.kind, spec.name, spec.params, path=path)
    needs_judge = []
    for name, stream in config.streams().items():
        rule = instances[f"objective.{name}.weighting" if stream.weighting else "weighting"]
        if (stream.judge or config.judge) is None and rule.uses_scores():
            needs_judge.append((name, rule.name))
    if needs_judge:
        stream, rule = needs_judge[0]
        raise ConfigError(
            "judge",
            f"missing: the {stream} stream's weighting rule '{rule}' needs judge scores; set `judge:` "
            f"(e.g. {{name: teacher_likelihood}}) or use the weighting rule 'constant' for w = 1",
        )
    return instances


def validate(raw: RawConfig) -> RunConfig:
    """Both validation phases over a merged mapping; errors carry ``file:line`` where known."""
    try:
        try:
            config = RunConfig.model_validate(raw.data)
        except ValidationError as exc:
            raise to_config_error(exc, "", RunConfig) from None
        validate_components(config)
    except ConfigError as err:
        raise err.with_location(err.location or raw.location_of(err.path) or raw.source) from None
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load, merge, override and validate a run config. Static: loads no model, checks no path."""
    return validate(load_raw(path, overrides))


def resolved_dict(config: RunConfig) -> dict[str, Any]:
    """The config as plain data, every component's params filled in with their defaults."""
    data = config.model_dump(mode="json", by_alias=True)
    for path, spec in _walk_specs(config, ""):
        assert spec.kind is not None
        component = create(spec.kind, spec.name, spec.params, path=path)
        node: Any = data
        for key in path.split("."):
            node = node[int(key)] if isinstance(node, list) else node[key]
        node["params"] = component.params.model_dump(mode="json", by_alias=True)
    return data
