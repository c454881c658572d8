"""``vcrd analyze``: the parser (what runs: :mod:`vcrd_core.commands.analyze_run`).

The file names the help shows are written here, not imported (the analysis imports numpy and torch);
``tests/core/test_cli_startup.py`` checks them against :mod:`vcrd_core.judging.analysis`. The parity tolerance
comes from :mod:`vcrd_core.regimes` (light: it imports nothing heavy).
"""

from __future__ import annotations

import argparse

from vcrd_core.commands import add_command
from vcrd_core.regimes import DEFAULT_PARITY_TOL

#: ``STATS_FILE`` and ``HISTOGRAM_FILE`` of :mod:`vcrd_core.judging.analysis` as the help states them.
PARITY_TOL_HELP = DEFAULT_PARITY_TOL
STATS_FILE_HELP = "validity_stats.json"
HISTOGRAM_FILE_HELP = "validity_hist.png"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = add_command(
        sub,
        "analyze",
        "vcrd_core.commands.analyze_run:run",
        help="validity statistics of scored rollouts (attenuation / parity / amplification) and a histogram",
        description="Read a rollout store scored by `vcrd score` (or a score-records JSON Lines file) and report, "
        "per stream, how often the validity ratio r_s/(r_t+1e-8) attenuates, keeps parity or amplifies, the share "
        "with r_s >= r_t (the paper's Fig. 1) and "
        f"ratio quantiles. Writes {STATS_FILE_HELP} and {HISTOGRAM_FILE_HELP}.",
    )
    parser.add_argument(
        "scores",
        metavar="STORE|SCORES.jsonl",
        help="a scored rollout store, or score records (one JSON object per line)",
    )
    parser.add_argument("--out", metavar="DIR", default=None, help="output directory (default: next to the input)")
    parser.add_argument(
        "--parity-tol",
        type=float,
        default=None,
        metavar="TOL",
        help=f"a ratio within 1 ± TOL counts as parity (default {PARITY_TOL_HELP})",
    )
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON instead of a table")
