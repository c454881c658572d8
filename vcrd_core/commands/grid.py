"""``vcrd grid GRID.yaml``: the parser (what runs: :mod:`vcrd_core.commands.grid_run`; the file format:
:mod:`vcrd_core.grid.spec`)."""

from __future__ import annotations

import argparse

from vcrd_core.commands import add_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "grid",
        "vcrd_core.commands.grid_run:run",
        help="run an ablation grid: a base config, axes, zipped axes and seeds (locally, sharded, or via submitit)",
        description="Expand GRID.yaml into cells (every combination of its axes, once per seed), validate every "
        "cell's config before anything runs, then run the unfinished cells (a rerun runs only those) and write "
        "results.csv, results.md and results.png in the grid's output directory.",
    )
    p.add_argument("file", metavar="GRID.yaml", help="grid file")
    p.add_argument("--shard", metavar="I/N", default=None, help="run only cells I, I+N, I+2N, ... (0-based I)")
    p.add_argument(
        "--executor",
        choices=("local", "submitit"),
        default="local",
        help="local: here, one cell after another (default); submitit: one job per cell (Slurm or local)",
    )
    p.add_argument("--cluster", choices=("local", "slurm"), default=None, help="submitit's cluster (default: auto)")
    p.add_argument("--validate", action="store_true", help="only expand and validate every cell")
