"""Component kinds: the names under which plugins register component classes.

Each kind has one registration hook, ``vcrd_register_<kind>``, in :mod:`vcrd_core.hookspecs`.
"""

from __future__ import annotations

from typing import Final

JUDGES: Final = "judges"
DIVERGENCES: Final = "divergences"
WEIGHTING: Final = "weighting"
EVALUATORS: Final = "evaluators"
GENERATORS: Final = "generators"

#: Every kind, in the order ``vcrd plugins`` lists them.
KINDS: Final[tuple[str, ...]] = (DIVERGENCES, WEIGHTING, JUDGES, EVALUATORS, GENERATORS)

#: Singular nouns for messages ("Unknown divergence 'fwd_kl'").
SINGULAR: Final[dict[str, str]] = {
    JUDGES: "judge",
    DIVERGENCES: "divergence",
    WEIGHTING: "weighting rule",
    EVALUATORS: "evaluator",
    GENERATORS: "generator",
}
