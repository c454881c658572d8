"""Entry point of the ``vcrd-divergences`` distribution: registers the eight built-in divergences."""

from __future__ import annotations

import vcrd_core
from vcrd_divergences.ab import AlphaBetaDivergence
from vcrd_divergences.adaptive import AdaptiveSkewKL, AdaptiveSkewReverseKL
from vcrd_divergences.jsd import GeneralizedJSD
from vcrd_divergences.kl import ForwardKL, ReverseKL
from vcrd_divergences.skew import SkewKL, SkewReverseKL

VCRD_PLUGIN_API = 1


@vcrd_core.hookimpl
def vcrd_register_divergences() -> list[type[vcrd_core.Divergence]]:
    """SKL and SRKL (VCRD, paper Eq. 2) and the baselines fkl, rkl, jsd (GKD), ab (ABKD), skl_adaptive and
    srkl_adaptive (DistiLLM-2's per-sequence α)."""
    return [
        SkewKL,
        SkewReverseKL,
        ForwardKL,
        ReverseKL,
        GeneralizedJSD,
        AlphaBetaDivergence,
        AdaptiveSkewKL,
        AdaptiveSkewReverseKL,
    ]
