"""``vcrd grid GRID.yaml``: run an ablation grid (see :mod:`vcrd_core.grid.spec` for the file format)."""

from __future__ import annotations

import argparse

from rich.console import Console

from vcrd_core.commands import add_command
from vcrd_core.grid.results import print_table, write_results
from vcrd_core.grid.run import progress_line, run_local, run_submitit
from vcrd_core.grid.spec import load_grid, validate_cells


def _grid(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    grid = validate_cells(load_grid(args.file))
    console.print(f"grid {args.file}: {len(grid.cells)} cells valid; {progress_line(grid)}")
    if args.validate:
        return 0
    if args.executor == "submitit":
        run_submitit(grid, cluster=args.cluster, console=console)
    else:
        run_local(grid, shard=args.shard, console=console)
    summary = write_results(grid)
    print_table(summary, Console(), f"{grid.file.name}: {progress_line(grid)}")
    print(f"results in {grid.output}/results.csv, results.md and results.png")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "grid",
        _grid,
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
