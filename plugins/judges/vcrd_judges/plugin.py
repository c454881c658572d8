"""Entry point of the ``vcrd-judges`` distribution."""

from __future__ import annotations

import vcrd_core
from vcrd_judges.oracle import OracleJudge
from vcrd_judges.prm import PrmClassifier, PrmValueHead
from vcrd_judges.teacher_likelihood import TeacherLikelihoodJudge

VCRD_PLUGIN_API = 1


@vcrd_core.hookimpl
def vcrd_register_judges() -> list[type[vcrd_core.Judge]]:
    return [OracleJudge, TeacherLikelihoodJudge, PrmValueHead, PrmClassifier]
