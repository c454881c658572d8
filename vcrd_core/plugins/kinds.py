"""The one table of component kinds (hatch's ``ClassRegister`` per kind, declared once).

A kind is a name (``divergences``), the singular noun messages use (``Unknown divergence 'fwd_kl'``),
the base class every registered class must subclass, its registration hook ``vcrd_register_<name>``
(specified in :mod:`vcrd_core.hookspecs`) and the ``{name, params}`` spec class that configs use for it.
Everything else (registries, config validation, the JSON Schema, ``vcrd plugins``) is derived from
:data:`KINDS`. Adding a kind is one row here and one hookspec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from vcrd_core.errors import PluginError
from vcrd_core.evaluation.evaluator import Evaluator
from vcrd_core.judging.judge import Judge
from vcrd_core.losses.divergence import Divergence
from vcrd_core.losses.weighting import WeightingRule
from vcrd_core.plugins.component import Component, ComponentSpec
from vcrd_core.rollouts.generator import Generator

DIVERGENCES: Final = "divergences"
WEIGHTING: Final = "weighting"
JUDGES: Final = "judges"
EVALUATORS: Final = "evaluators"
GENERATORS: Final = "generators"


@dataclass(frozen=True)
class Kind:
    """One kind of component: how it is named, what its classes subclass, how configs declare one."""

    name: str
    singular: str
    base: type[Component]
    spec: type[ComponentSpec]

    @property
    def hook(self) -> str:
        """The registration hook's name, ``vcrd_register_<kind>``."""
        return f"vcrd_register_{self.name}"


def _kind(name: str, singular: str, base: type[Component], spec_name: str) -> Kind:
    spec = type(spec_name, (ComponentSpec,), {"__module__": __name__, "__doc__": f"A {singular}: {{name, params}}."})
    spec.kind = name  # nested specs (``clamp``'s ``inner``) are validated against this kind's registry
    if base is not Component:
        base.kind = name  # the kind of every instance, e.g. for provenance records
    return Kind(name, singular, base, spec)


#: Every kind, in the order ``vcrd plugins`` lists them.
KINDS: Final[dict[str, Kind]] = {
    k.name: k
    for k in (
        _kind(DIVERGENCES, "divergence", Divergence, "DivergenceSpec"),
        _kind(WEIGHTING, "weighting rule", WeightingRule, "WeightingSpec"),
        _kind(JUDGES, "judge", Judge, "JudgeSpec"),
        _kind(EVALUATORS, "evaluator", Evaluator, "EvaluatorSpec"),
        _kind(GENERATORS, "generator", Generator, "GeneratorSpec"),
    )
}

DivergenceSpec = KINDS[DIVERGENCES].spec
WeightingSpec = KINDS[WEIGHTING].spec
JudgeSpec = KINDS[JUDGES].spec
EvaluatorSpec = KINDS[EVALUATORS].spec
GeneratorSpec = KINDS[GENERATORS].spec


def get_kind(name: str) -> Kind:
    """The kind called ``name``; a one-line :class:`PluginError` listing the kinds otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise PluginError(f"Unknown component kind '{name}'. Available kinds: {', '.join(KINDS)}.") from None
