"""JSON Schema of a run config for editor completion, reflecting the installed plugins.

Each ``{name, params}`` block becomes a ``oneOf`` over the installed components of its kind, each with
``name`` fixed and ``params`` the component's own ``Params`` schema.
"""

from __future__ import annotations

import math
from typing import Any

from vcrd_core.config.models import RunConfig
from vcrd_core.plugins.kinds import KINDS
from vcrd_core.plugins.registry import entries

#: The ``$defs`` name of each kind's ``{name, params}`` block (its spec class's name).
SPEC_CLASSES: dict[str, str] = {name: kind.spec.__name__ for name, kind in KINDS.items()}


def _rename_defs(schema: Any, mapping: dict[str, str]) -> Any:
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                ref = value.removeprefix("#/$defs/")
                out[key] = f"#/$defs/{mapping.get(ref, ref)}"
            else:
                out[key] = _rename_defs(value, mapping)
        return out
    if isinstance(schema, list):
        return [_rename_defs(v, mapping) for v in schema]
    return schema


def _component_schema(kind: str, defs: dict[str, Any]) -> dict[str, Any]:
    options = []
    for name, entry in sorted(entries(kind).items()):
        params = entry.cls.Params.model_json_schema(by_alias=True)
        nested = params.pop("$defs", {})
        # Nested component specs point at the shared oneOf definitions; other nested models are namespaced.
        mapping = {d: d if d in SPEC_CLASSES.values() else f"{kind}.{name}.{d}" for d in nested}
        for d, sub in nested.items():
            if d not in SPEC_CLASSES.values():
                defs[mapping[d]] = _rename_defs(sub, mapping)
        params = _rename_defs(params, mapping)
        params.pop("title", None)
        options.append(
            {
                "type": "object",
                "title": f"{name} ({entry.provider.distribution})",
                "description": entry.summary,
                "properties": {"name": {"const": name}, "params": params},
                "required": ["name"],
                "additionalProperties": False,
            }
        )
    if not options:
        return {"type": "object", "description": f"no {KINDS[kind].singular} is installed", "not": {}}
    return {"oneOf": options, "description": f"A {KINDS[kind].singular}: {{name, params}}."}


def _finite(schema: Any) -> Any:
    """JSON has no Infinity/NaN: drop such defaults and bounds (e.g. ``clamp``'s ``max: inf``)."""
    if isinstance(schema, dict):
        return {k: _finite(v) for k, v in schema.items() if not (isinstance(v, float) and not math.isfinite(v))}
    if isinstance(schema, list):
        return [_finite(v) for v in schema]
    return schema


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of :class:`RunConfig` with the installed components.

    A file with ``extends:`` may leave out what its bases provide, so ``models`` and ``data`` are required
    only in a file without ``extends``.
    """
    schema = RunConfig.model_json_schema(by_alias=True)
    defs = schema.setdefault("$defs", {})
    for kind, cls_name in SPEC_CLASSES.items():
        defs[cls_name] = _component_schema(kind, defs)
    schema["properties"]["extends"] = {
        "description": "Base config file(s), relative to this file, merged under it in order.",
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    }
    required = schema.pop("required", [])
    schema["if"] = {"not": {"required": ["extends"]}}
    schema["then"] = {"required": required}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "vcrd run config"
    return _finite(schema)
