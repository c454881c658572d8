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
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vcrd_core.config.models import RunConfig
from vcrd_core.errors import ConfigError, IgnoredSettingWarning, VcrdError
from vcrd_core.plugins.component import Component, ComponentSpec, component_specs
from vcrd_core.plugins.registry import create
from vcrd_core.plugins.validation import Step, join_path, to_config_error, walk_model

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


class _Refused(yaml.MarkedYAMLError):
    """YAML that parses but that vcrd refuses (duplicate keys, aliases)."""


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` (no tags that execute code) that also refuses duplicate keys, which YAML would
    silently resolve to the last one, and aliases, whose expansion can be exponential (use ``extends``).
    Floats are read as YAML 1.2 does, so ``1e-8`` is a number, not the string YAML 1.1 makes of it."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(
                None,
                None,
                f"alias '*{event.anchor}' is not supported; use extends: to share settings",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise _Refused(None, None, f"duplicate key '{key}' (first at line {first})", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml_value(text: str) -> Any:
    """One YAML value (a ``--set`` right-hand side) read like a config file's values."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    if not path.exists():
        raise VcrdError(f"config file '{path}' does not exist")
    if path.is_dir():
        raise VcrdError(f"config file '{path}' is a directory; expected a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise VcrdError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _Refused as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise VcrdError(f"{where}: {exc.problem}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        raise VcrdError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise VcrdError(f"{path}: YAML error: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise VcrdError(f"{path}: nested too deeply to be a run config") from None
    finally:
        loader.dispose()
    if data is None:
        raise VcrdError(f"{path}: the file is empty; expected a mapping with sections such as models, data, objective")
    if not isinstance(data, dict):
        raise VcrdError(f"{path}:1: the top level must be a mapping of sections, not a {type(data).__name__}")
    locations: dict[str, str] = {}
    _node_locations(node, str(path), "", locations)
    return data, locations


def _merge(base: Any, over: Any, path: str = "", replaced: list[str] | None = None) -> Any:
    """Deep merge of ``over`` onto ``base``; ``replaced`` collects the paths ``over`` replaced whole.

    Below the top level (whose ``name`` is the run's name), a mapping whose ``name`` differs from the
    base's is a different component and replaces it whole.
    """
    if isinstance(base, dict) and isinstance(over, dict):
        if path and "name" in over and "name" in base and over["name"] != base["name"]:
            if replaced is not None:
                replaced.append(path)
            return copy.deepcopy(over)
        merged = copy.deepcopy(base)
        for key, value in over.items():
            child = join_path(path, key)
            merged[key] = _merge(merged[key], value, child, replaced) if key in merged else copy.deepcopy(value)
        return merged
    if replaced is not None:
        replaced.append(path)
    return copy.deepcopy(over)


def _without_under(locations: dict[str, str], paths: list[str]) -> dict[str, str]:
    """``locations`` minus every entry strictly below one of ``paths`` (their values were replaced)."""
    prefixes = tuple(f"{p}." for p in paths if p)
    return {k: v for k, v in locations.items() if not k.startswith(prefixes)} if prefixes else dict(locations)


def layer(base: RawConfig, over: RawConfig) -> RawConfig:
    """``over`` deep-merged onto ``base`` as ``extends`` merges a file over its bases (a component whose name
    changes is replaced whole); the locations of replaced values go."""
    replaced: list[str] = []
    data = _merge(base.data, over.data, "", replaced)
    return RawConfig(data, {**_without_under(base.locations, replaced), **over.locations})


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
        if not base_path.is_file():
            raise ConfigError("extends", f"base '{base}' is not a file ({base_path})", where)
        try:
            loaded = _load_file(base_path, (*stack, base_path))
        except ConfigError:
            raise
        except VcrdError as exc:
            raise ConfigError("extends", f"base file '{base}': {exc}", where) from None
        merged = layer(merged, loaded)
    return layer(merged, RawConfig(data, locations))


def _check_set_path(path: list[str], steps: list[Step]) -> None:
    """Refuse a ``--set`` path with a key the config schema does not know (a component's own ``params``
    are below every model, checked in phase two against that component)."""
    for i, step in enumerate(steps):
        if step.owner is None:
            return
        if step.name is None and not step.is_index:
            valid = [f.alias or n for n, f in step.owner.model_fields.items()]
            close = difflib.get_close_matches(path[i], valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            here = ".".join(path[:i]) or "the top level"
            raise ConfigError(
                ".".join(path), f"unknown key '{path[i]}' at {here}.{hint} Valid keys: {', '.join(valid)}.", SETS
            )


def _is_component(step: Step) -> bool:
    return step.model is not None and issubclass(step.model, ComponentSpec)


def apply_set(raw: RawConfig, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place (value parsed as YAML).

    Setting a component's ``name`` to another component replaces the block whole (as ``extends`` does), so
    the old component's params never leak into the new one; setting a param of a component the file does
    not spell out starts from the default component there.
    """
    if "=" not in assignment:
        raise VcrdError(f"{SETS} '{assignment}': expected PATH=VALUE, e.g. objective.teacher_prefix.lambda=2")
    dotted, text = assignment.split("=", 1)
    dotted = dotted.strip()
    path = dotted.split(".")
    if not all(path):
        raise VcrdError(f"{SETS} '{assignment}': empty key in path '{dotted}'")
    steps = list(walk_model(RunConfig, path, defaults=True))
    _check_set_path(path, steps)
    try:
        value = parse_yaml_value(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise VcrdError(f"{SETS} '{assignment}': value is not valid YAML: {str(exc).splitlines()[0]}") from None

    def refuse(message: str) -> VcrdError:
        return ConfigError(dotted, message, SETS)

    node: Any = raw.data
    for i, key in enumerate(path[:-1]):
        here = ".".join(path[: i + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise refuse(f"'{key}' is not an index of the {len(node)}-item list at {'.'.join(path[:i])}")
            node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise refuse(f"'{'.'.join(path[:i])}' holds a {type(node).__name__}, not a mapping")
        if key.isdigit():
            parent = ".".join(path[:i]) or "the top level"
            raise refuse(f"'{key}' is a list index, but {parent} is not a list here")
        if node.get(key) is None:
            node[key] = [] if path[i + 1].isdigit() else {}
            raw.locations[here] = SETS
        into_params = path[i + 1] == "params" and _is_component(steps[i])
        if into_params and isinstance(node[key], dict) and "name" not in node[key]:
            default = steps[i].default
            if not isinstance(default, ComponentSpec):
                raise refuse(f"set {here}.name first: there is no default component at {here}")
            node[key]["name"] = default.name
        node = node[key]
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise refuse(f"'{last}' is not an index of the {len(node)}-item list at {'.'.join(path[:-1])}")
        node[int(last)] = value
    elif isinstance(node, dict):
        parent_is_component = len(path) > 1 and _is_component(steps[-2])
        if last == "name" and parent_is_component and node.get("name") not in (None, value):
            node.clear()  # another component: its params start from its own defaults
            raw.locations = _without_under(raw.locations, [".".join(path[:-1])])
        node[last] = value
    else:
        raise refuse(f"'{'.'.join(path[:-1])}' holds a {type(node).__name__}, not a mapping")
    raw.locations = _without_under(raw.locations, [dotted])
    raw.locations[dotted] = SETS


def load_raw(path: str | Path, overrides: list[str] | None = None) -> RawConfig:
    """The merged mapping of ``path`` (with its bases) and the ``--set`` overrides, not validated."""
    file = Path(path)
    raw = _load_file(file.resolve() if file.exists() else file, (file.resolve(),))
    raw.locations = {k: v.replace(str(file.resolve()), str(file)) for k, v in raw.locations.items()}
    raw.source = str(file)
    for assignment in overrides or []:
        apply_set(raw, assignment)
    return raw


def iter_components(config: RunConfig) -> list[tuple[str, Component]]:
    """Every component of ``config``, nested ones included, as ``(YAML path, instance)``, outer first.

    Each is built exactly once: :func:`create` builds a component's nested specs with it, and they are
    collected here from its validated params.
    """
    out: list[tuple[str, Component]] = []

    def collect(path: str, component: Component) -> None:
        out.append((path, component))
        for where, spec in component_specs(component.params, join_path(path, "params")):
            collect(where, spec.built)

    for path, spec in component_specs(config):
        collect(path, create(spec.kind, spec.name, spec.params, path=path))  # type: ignore[arg-type]
    return out


def validate_components(config: RunConfig) -> dict[str, Any]:
    """Phase two: every ``{name, params}`` block against its plugin; returns the instances by path."""
    instances = dict(iter_components(config))
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
    check_on_policy(config, instances)
    tokens = [name for name, stream in config.streams().items() if stream.target == "tokens"]
    if tokens and config.training.loss_engine == "fused_linear":
        raise ConfigError(
            "training.loss_engine",
            f"fused_linear computes the teacher's distribution from its hidden states, but the {tokens[0]} stream's "
            "target is its tokens (a point mass); use loss_engine: auto or logits",
        )
    per_sequence = [
        name
        for name, stream in config.streams().items()
        if stream.enabled and getattr(instances.get(f"objective.{name}.divergence"), "uses_sequence_stats", False)
    ]
    if per_sequence and config.training.loss_engine == "fused_linear":
        name = per_sequence[0]
        raise ConfigError(
            "training.loss_engine",
            f"fused_linear does not compute the per-sequence parameters of the {name} stream's divergence "
            f"'{instances[f'objective.{name}.divergence'].name}' (they read the logits of the rollout's tokens); "
            "use loss_engine: auto or logits",
        )
    return instances


def check_on_policy(config: RunConfig, instances: dict[str, Any]) -> None:
    """A student-rollout schedule that contradicts the rest of the config, refused with one line each: fresh
    rollouts without a student-prefix stream, offline scores for sequences the store does not hold, a LoRA the
    vLLM engine cannot receive merged."""
    on = config.on_policy
    if not on.fresh:
        default = type(on)()
        ignored = [
            f.alias or name for name, f in type(on).model_fields.items() if getattr(on, name) != getattr(default, name)
        ]
        if ignored:  # not silently ignored (a warning, not a refusal: a grid's base may set them for other cells)
            warnings.warn(
                f"on_policy.{', on_policy.'.join(ignored)}: ignored, on_policy.schedule is static (the store's "
                "rollouts); they apply when it is steps or epoch",
                IgnoredSettingWarning,
                stacklevel=2,
            )
        return
    mixing = instances.get("on_policy.mixing")  # None: the default, lambda
    if on.validation_examples and not (mixing is not None and mixing.needs_validation):
        name = mixing.name if mixing is not None else "lambda"
        warnings.warn(
            f"on_policy.validation_examples: {on.validation_examples} examples are held out of training for a "
            f"validation loss that the mixing rule '{name}' does not read",
            IgnoredSettingWarning,
            stacklevel=2,
        )
    sp = config.streams().get("student_prefix")
    if sp is None or sp.lam <= 0:
        raise ConfigError(
            "on_policy.schedule",
            f"'{on.schedule}' generates student rollouts, which only the student_prefix stream trains on, and that "
            "stream is off; enable it (lambda > 0) or use schedule: static",
        )
    if on.every_steps > 1 and on.schedule != "steps":
        raise ConfigError("on_policy.every_steps", f"applies to schedule: steps only (schedule is '{on.schedule}')")
    if mixing is not None and mixing.needs_validation and on.validation_examples == 0:
        raise ConfigError(
            "on_policy.validation_examples",
            f"the mixing rule '{mixing.name}' adapts to a validation loss: hold out some examples for it "
            "(e.g. on_policy.validation_examples: 256)",
        )
    rule = instances["objective.student_prefix.weighting" if sp.weighting else "weighting"]
    if config.scoring.mode == "offline" and rule.uses_scores():
        raise ConfigError(
            "scoring.mode",
            f"offline weights are read from the rollout store, but on_policy.schedule '{on.schedule}' trains the "
            "student_prefix stream on rollouts generated during training, which the store does not hold; use "
            "scoring.mode: online (or the weighting rule 'constant' for that stream)",
        )
    lora = config.training.lora
    if on.generator_spec().name == "vllm" and lora.enabled:
        unsyncable = [t for t in lora.target_modules if t in ("lm_head", "embed_tokens")]
        if unsyncable:
            raise ConfigError(
                "training.lora.target_modules",
                f"a LoRA on {', '.join(unsyncable)} cannot be synced into the vllm engine (it ties or pads these "
                "matrices); leave them out of target_modules or use on_policy.generator: {name: hf}",
            )


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
    """The config as plain data, every component's params (nested ones too) filled in with their defaults."""
    data = config.model_dump(mode="json", by_alias=True)
    for path, component in iter_components(config):
        node: Any = data
        for key in path.split("."):
            node = node[int(key)] if isinstance(node, list) else node[key]
        node["params"] = component.params.model_dump(mode="json", by_alias=True)
    return data
