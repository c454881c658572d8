"""Entry point ``vcrd-judges``: the PRM judges, the PRM-free ``teacher_likelihood`` and the Monte-Carlo ``mc_value``."""

from __future__ import annotations

import vcrd_core
from vcrd_judges.mc_value import MonteCarloValueJudge
from vcrd_judges.prm import PrmClassifier, PrmValueHead
from vcrd_judges.teacher_likelihood import TeacherLikelihoodJudge

VCRD_PLUGIN_API = 1


@vcrd_core.hookimpl
def vcrd_register_judges() -> list[type[vcrd_core.Judge]]:
    return [TeacherLikelihoodJudge, PrmValueHead, PrmClassifier, MonteCarloValueJudge]
