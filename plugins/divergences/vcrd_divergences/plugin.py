"""Entry point of the ``vcrd-divergences`` distribution."""

from __future__ import annotations

import vcrd_core

VCRD_PLUGIN_API = 1


@vcrd_core.hookimpl
def vcrd_register_divergences() -> list[type[vcrd_core.Divergence]]:
    return []
