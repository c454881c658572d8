"""Entry point of the ``vcrd-weighting`` distribution."""

from __future__ import annotations

import vcrd_core

VCRD_PLUGIN_API = 1


@vcrd_core.hookimpl
def vcrd_register_weighting() -> list[type[vcrd_core.WeightingRule]]:
    return []
