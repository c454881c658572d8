"""``vcrd grid`` (the parser: :mod:`vcrd_core.commands.grid`): run an ablation grid and print its results."""

from __future__ import annotations

import argparse

from vcrd_core.grid.results import print_table, write_results
from vcrd_core.grid.run import progress_line, run_local, run_submitit
from vcrd_core.grid.spec import load_grid, validate_cells
from vcrd_core.runs.console import console


def run(args: argparse.Namespace) -> int:
    log = console(stderr=True)
    grid = validate_cells(load_grid(args.file))
    log.print(f"grid {args.file}: {len(grid.cells)} cells valid; {progress_line(grid)}")
    if args.validate:
        return 0
    if args.executor == "submitit":
        run_submitit(grid, cluster=args.cluster, console=log)
    else:
        run_local(grid, shard=args.shard, console=log)
    summary = write_results(grid)
    print_table(summary, console(), f"{grid.file.name}: {progress_line(grid)}")
    print(f"results in {grid.output}/results.csv, results.md and results.png")
    return 0
