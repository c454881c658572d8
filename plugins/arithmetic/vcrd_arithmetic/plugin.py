"""Entry point of the built-in arithmetic task plugin (its ``oracle`` judge and ``arithmetic_solver`` generator)."""

from __future__ import annotations

import vcrd_core
from vcrd_arithmetic.oracle import OracleJudge
from vcrd_arithmetic.solver import ArithmeticSolver
from vcrd_core.rollouts.generator import Generator

VCRD_PLUGIN_API = 1


@vcrd_core.hookimpl
def vcrd_register_judges() -> list[type[vcrd_core.Judge]]:
    return [OracleJudge]


@vcrd_core.hookimpl
def vcrd_register_generators() -> list[type[Generator]]:
    return [ArithmeticSolver]
