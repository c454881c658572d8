"""Turn pydantic validation errors into one line naming the dotted path and what is valid, and walk a
model along such a path (the one walker of dotted paths: error locations, ``--set`` paths, defaults)."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from vcrd_core.errors import ConfigError


def join_path(*parts: object) -> str:
    """``join_path("objective", "teacher_prefix", 0, "name")`` -> ``objective.teacher_prefix.0.name``."""
    return ".".join(str(p) for p in parts if p != "" and p is not None)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    if typing.get_origin(annotation) is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _field_name(model: type[BaseModel], key: str) -> str | None:
    """The attribute name of the field that ``key`` (a field name or its alias) names in ``model``."""
    if key in model.model_fields:
        return key
    return next((n for n, f in model.model_fields.items() if f.alias == key), None)


@dataclass(frozen=True)
class Step:
    """Where one key of a dotted path lands in a model (see :func:`walk_model`)."""

    key: str | int
    #: The model ``key`` is looked up in; None below every known model (inside a component's ``params``).
    owner: type[BaseModel] | None
    #: The attribute name of the field ``key`` names in ``owner``; None for a list index or an unknown key.
    name: str | None
    #: The one model the value here must be (a list's item model stays in force across its index), else None.
    model: type[BaseModel] | None
    #: What a config holds here when it does not set it (only with ``defaults=True``; None: nothing).
    default: Any = None

    @property
    def is_index(self) -> bool:
        return isinstance(self.key, int) or self.key.isdigit()


def walk_model(model: type[BaseModel] | None, keys: Iterable[str | int], *, defaults: bool = False) -> Iterator[Step]:
    """One :class:`Step` per key of a dotted path (``["objective", "teacher_prefix", "lambda"]`` or a pydantic
    error location) walked down ``model``'s fields; a key can be a field name or its alias, and a list index
    (an int or digits) keeps the list's item model. With ``defaults``, each step also carries the default
    value there, taken from the default of the enclosing section (``objective.teacher_prefix.divergence`` is
    ``skl`` by ``ObjectiveConfig``'s defaults)."""
    current = model
    value: Any = None
    for key in keys:
        if isinstance(key, int) or key.isdigit():
            if defaults:
                i = int(key)
                value = value[i] if isinstance(value, list) and i < len(value) else None
            yield Step(key, current, None, current, value)
            continue
        owner = current
        name = _field_name(owner, key) if owner is not None else None
        if owner is None or name is None:
            current = value = None
            yield Step(key, owner, None, None)
            continue
        fld = owner.model_fields[name]
        if defaults:
            if isinstance(value, BaseModel):
                value = getattr(value, name, None)
            else:
                value = None if fld.is_required() else fld.get_default(call_default_factory=True)
        models = _models_in(fld.annotation)
        current = models[0] if len(models) == 1 else None
        yield Step(key, owner, name, current, value)


def _model_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the last element of ``loc`` (best effort; None when unknown)."""
    steps = list(walk_model(model, loc))
    return steps[-1].owner if steps else model


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _describe(error: dict[str, Any], model: type[BaseModel] | None) -> str:
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        owner = _model_at(model, loc)
        if owner is None:
            return f"unknown key '{key}'"
        valid = _keys(owner)
        if not valid:
            return f"unknown key '{key}': this takes no keys"
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"unknown key '{key}'.{hint} Valid keys: {', '.join(valid)}."
    if kind == "missing":
        return f"missing required field '{loc[-1]}'" if loc else "missing required field"
    msg = str(error.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "json_invalid":  # the input is the whole document; one line of JSON Lines is "line 1"
        return f"invalid JSON ({msg.removeprefix('Invalid JSON: ').replace(' at line 1 column ', ' at column ')})"
    if "input" in error and not isinstance(error["input"], dict) and kind not in ("model_type", "dict_type"):
        got = error["input"]
        shown = repr(got)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return f"{msg} (got {shown})"
    if kind in ("model_type", "dict_type"):
        return f"expected a mapping (got {type(error.get('input')).__name__})"
    return msg


def first_error(exc: ValidationError, model: type[BaseModel] | None) -> tuple[str, str]:
    """The first error of ``exc`` as (dotted path, one-line message), the message counting the rest.

    ``model`` (the validated class) lets an unknown key list the valid ones.
    """
    errors = exc.errors()
    first = errors[0]
    loc = tuple(p for p in first.get("loc", ()) if p != "__root__")
    message = _describe(first, model)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return join_path(*loc), message


def to_config_error(exc: ValidationError, prefix: str, model: type[BaseModel] | None) -> ConfigError:
    """The first error of ``exc`` as a :class:`ConfigError` at ``prefix.<loc>``; counts the rest."""
    path, message = first_error(exc, model)
    return ConfigError(join_path(prefix, path), message)
