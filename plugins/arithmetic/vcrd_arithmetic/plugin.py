"""Entry point of the built-in arithmetic task plugin (its ``oracle`` judge)."""

from __future__ import annotations

import vcrd_core
from vcrd_arithmetic.oracle import OracleJudge

VCRD_PLUGIN_API = 1


@vcrd_core.hookimpl
def vcrd_register_judges() -> list[type[vcrd_core.Judge]]:
    return [OracleJudge]
