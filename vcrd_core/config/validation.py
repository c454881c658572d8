"""Turn pydantic validation errors into one line naming the dotted YAML path and what is valid."""

from __future__ import annotations

import difflib
import typing
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


def _model_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the last element of ``loc`` (best effort; None when unknown)."""
    current = model
    for part in loc[:-1]:
        if current is None:
            return None
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) or next(
            (f for f in current.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return None
        models = _models_in(field.annotation)
        current = models[0] if len(models) == 1 else None
    return current


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
    if "input" in error and not isinstance(error["input"], dict) and kind not in ("model_type", "dict_type"):
        got = error["input"]
        shown = repr(got)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return f"{msg} (got {shown})"
    if kind in ("model_type", "dict_type"):
        return f"expected a mapping (got {type(error.get('input')).__name__})"
    return msg


def to_config_error(exc: ValidationError, prefix: str, model: type[BaseModel] | None) -> ConfigError:
    """The first error of ``exc`` as a :class:`ConfigError` at ``prefix.<loc>``; counts the rest."""
    errors = exc.errors()
    first = errors[0]
    loc = tuple(p for p in first.get("loc", ()) if p != "__root__")
    message = _describe(first, model)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return ConfigError(join_path(prefix, *loc), message)
