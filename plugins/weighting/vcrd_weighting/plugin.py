"""Entry point ``vcrd-weighting``: registers the paper's weighting rules."""

from __future__ import annotations

import vcrd_core
from vcrd_weighting.rules import RULES

VCRD_PLUGIN_API = 1


@vcrd_core.hookimpl
def vcrd_register_weighting() -> list[type[vcrd_core.WeightingRule]]:
    """The paper's weighting rules: ratio, difference, student_only, constant, clamp, log_clamp."""
    return list(RULES)
