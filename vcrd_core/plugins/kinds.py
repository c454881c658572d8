"""The one table of component kinds (hatch's ``ClassRegister`` per kind, declared once).

A kind is a name (``divergences``), the singular noun messages use (``Unknown divergence 'fwd_kl'``),
the base class every registered class must subclass (named here; the base class declares its kind,
``kind = DIVERGENCES``, so that this table, at the bottom of the package layers, imports none of them), its
registration hook ``vcrd_register_<name>`` (specified in :mod:`vcrd_core.hookspecs`) and the ``{name, params}``
spec class that configs use for it. Everything else (registries, config validation, the JSON Schema,
``vcrd plugins``) is derived from :data:`KINDS`. Adding a kind is one row here, one hookspec and the base class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from vcrd_core.errors import PluginError
from vcrd_core.plugins.component import ComponentSpec

DIVERGENCES: Final = "divergences"
WEIGHTING: Final = "weighting"
JUDGES: Final = "judges"
EVALUATORS: Final = "evaluators"
GENERATORS: Final = "generators"
MIXING: Final = "mixing"


@dataclass(frozen=True)
class Kind:
    """One kind of component: how it is named, what its classes subclass, how configs declare one."""

    name: str
    singular: str
    #: The name of the base class (``Judge``); the class itself declares ``kind = <name>``.
    base: str
    spec: type[ComponentSpec]

    @property
    def hook(self) -> str:
        """The registration hook's name, ``vcrd_register_<kind>``."""
        return f"vcrd_register_{self.name}"


def _kind(name: str, singular: str, base: str, spec_name: str) -> Kind:
    spec = type(spec_name, (ComponentSpec,), {"__module__": __name__, "__doc__": f"A {singular}: {{name, params}}."})
    spec.kind = name  # nested specs (``clamp``'s ``inner``) are validated against this kind's registry
    return Kind(name, singular, base, spec)


#: Every kind, in the order ``vcrd plugins`` lists them.
KINDS: Final[dict[str, Kind]] = {
    k.name: k
    for k in (
        _kind(DIVERGENCES, "divergence", "Divergence", "DivergenceSpec"),
        _kind(WEIGHTING, "weighting rule", "WeightingRule", "WeightingSpec"),
        _kind(JUDGES, "judge", "Judge", "JudgeSpec"),
        _kind(EVALUATORS, "evaluator", "Evaluator", "EvaluatorSpec"),
        _kind(GENERATORS, "generator", "Generator", "GeneratorSpec"),
        _kind(MIXING, "mixing rule", "MixingRule", "MixingSpec"),
    )
}

DivergenceSpec = KINDS[DIVERGENCES].spec
WeightingSpec = KINDS[WEIGHTING].spec
JudgeSpec = KINDS[JUDGES].spec
EvaluatorSpec = KINDS[EVALUATORS].spec
GeneratorSpec = KINDS[GENERATORS].spec
MixingSpec = KINDS[MIXING].spec


def get_kind(name: str) -> Kind:
    """The kind called ``name``; a one-line :class:`PluginError` listing the kinds otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise PluginError(f"Unknown component kind '{name}'. Available kinds: {', '.join(KINDS)}.") from None
