"""Running a grid's cells: one after another here, as ``--shard I/N`` processes, or as submitit jobs.

Each cell lives in ``<output>/cells/<cell>/``: ``config.yaml`` and ``provenance.json`` (the resolved config
and its provenance, DESIGN.md §2.8), ``run/`` (the stages' outputs), ``running.json`` while a process works
on it, and ``metrics.json`` (written atomically, last) once it is finished. A cell without ``metrics.json``
is unfinished: a rerun removes what it left and runs it again from its first stage, so an interrupted grid
resumes with exactly its missing cells. After every cell the results (``results.csv``, ``results.md``,
``results.png``) are rewritten from the finished cells, atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from vcrd_core.errors import VcrdError
from vcrd_core.evaluation.run import flat_results, run_evaluation
from vcrd_core.grid.results import write_results
from vcrd_core.grid.spec import (
    METRICS,
    Cell,
    Grid,
    check_metrics,
    is_done,
    load_grid,
    resolve_stage,
    validate_cells,
)
from vcrd_core.rollouts.run import generate_rollouts
from vcrd_core.rollouts.scoring import score_store
from vcrd_core.rollouts.store import parse_shard
from vcrd_core.runs.atomic import atomic_write_text
from vcrd_core.runs.console import console as make_console
from vcrd_core.runs.provenance import write_run_metadata
from vcrd_core.training.run import run_train

_QUIET = make_console(stderr=True, quiet=True)
RUNNING = "running.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_running(cell: Cell) -> bool:
    """A process on this host works on the cell now (a marker left by a killed process does not count)."""
    try:
        marker = json.loads((cell.dir / RUNNING).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("host") != socket.gethostname():
        return True  # another machine (a cluster job): trust the marker
    return _alive(int(marker.get("pid", -1)))


def counts(grid: Grid) -> dict[str, int]:
    """Cells done / running / left, read from disk (so that it covers every shard and job)."""
    done = sum(is_done(c) for c in grid.cells)
    running = sum(not is_done(c) and is_running(c) for c in grid.cells)
    return {"done": done, "running": running, "left": len(grid.cells) - done - running}


def progress_line(grid: Grid) -> str:
    c = counts(grid)
    return f"cells: {c['done']} done, {c['running']} running, {c['left']} left (of {len(grid.cells)})"


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = value


def _stage_score(cell: Cell, config: Any) -> tuple[Any, dict[str, Any]]:
    """Offline scoring into the cell's own copy of the rollout store (each cell's rule writes its weights)."""
    source = Path(config.rollouts.store) if config.rollouts.store else None
    target = cell.dir / "rollouts"
    if source is not None and source.resolve() != target.resolve():
        if not source.is_dir():
            raise VcrdError(f"rollout store '{source}' does not exist; generate it first (vcrd rollouts)")
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("score-summary.json", ".*.tmp"))
        config = config.model_copy(update={"rollouts": config.rollouts.model_copy(update={"store": str(target)})})
    # batches as large as the logits allow (256 rollouts at a toy vocabulary, 1 at Qwen2.5's and 1,024 tokens)
    summary = score_store(config, batch_size=None, overwrite=True, console=_QUIET)
    shares = {
        stream: {k: s[k] for k in ("attenuation", "parity", "amplification") if k in s}
        for stream, s in summary["streams"].items()
    }
    return config, {"score": shares}


def _stage_rollouts(cell: Cell, config: Any) -> tuple[Any, dict[str, Any]]:
    generate_rollouts(config, console=_QUIET)
    return config, {}


def _stage_train(cell: Cell, config: Any) -> tuple[Any, dict[str, Any]]:
    """``vcrd train`` (with ``--merge`` under LoRA, so that the eval stage reads whole weights)."""
    start = time.perf_counter()
    summary = run_train(config, merge=config.training.lora.enabled)
    return config, {"train": {"final_loss": summary.get("final_loss"), "seconds": time.perf_counter() - start}}


def _stage_eval(cell: Cell, config: Any) -> tuple[Any, dict[str, Any]]:
    """``vcrd eval`` of the cell's trained student (``merged/`` under LoRA, else ``final/``)."""
    run_dir = Path(config.output.dir)
    model = run_dir / "merged" if (run_dir / "merged").is_dir() else run_dir / "final"
    summary = run_evaluation(config, model=str(model), out_dir=str(cell.dir / "eval"), console=_QUIET)
    return config, flat_results(summary)


BUILTIN: dict[str, Callable[[Cell, Any], tuple[Any, dict[str, Any]]]] = {
    "rollouts": _stage_rollouts,
    "score": _stage_score,
    "train": _stage_train,
    "eval": _stage_eval,
}


def run_cell(grid: Grid, cell: Cell) -> dict[str, Any]:
    """Run one cell from scratch (whatever an earlier attempt left is removed first); returns its metrics."""
    if cell.dir.exists():
        shutil.rmtree(cell.dir)
    cell.dir.mkdir(parents=True)
    marker = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    atomic_write_text(cell.dir / RUNNING, json.dumps(marker) + "\n")
    config = cell.config
    write_run_metadata(cell.dir, config, grid={"file": str(grid.file), "cell": cell.id, "labels": cell.labels})
    metrics: dict[str, Any] = {}
    start = time.perf_counter()
    for name in grid.spec.stages:
        stage = resolve_stage(name)
        if isinstance(stage, str):
            config, found = BUILTIN[stage](cell, config)
        else:
            found = stage(config, cell.dir) or {}
        _flatten("", found, metrics)
    record = {
        "cell": cell.id,
        "labels": cell.labels,
        "label": cell.label,
        "seed": cell.seed,
        "seconds": round(time.perf_counter() - start, 3),
        "fingerprint": cell.fingerprint,
        "metrics": metrics,
    }
    atomic_write_text(cell.dir / METRICS, json.dumps(record, indent=2) + "\n")
    (cell.dir / RUNNING).unlink(missing_ok=True)
    if grid.undeclared:  # the grid's metric names could not be checked before: now they can (the cell is kept)
        check_metrics(grid, produced=set(metrics))
    return record


def todo_cells(grid: Grid, shard: str | None = None) -> list[Cell]:
    i, n = parse_shard(shard)
    return [c for c in grid.cells if c.index % n == i and not is_done(c)]


def run_local(grid: Grid, *, shard: str | None = None, console: Console | None = None) -> list[Cell]:
    """Run this shard's unfinished cells one after another; returns the cells run."""
    console = console or make_console(stderr=True)
    todo = todo_cells(grid, shard)
    i, n = parse_shard(shard)
    mine = sum(1 for c in grid.cells if c.index % n == i)
    console.print(f"{len(todo)} of this shard's {mine} cells to run; {progress_line(grid)}")
    for cell in todo:
        console.print(f"[bold]cell {cell.id}[/bold] starting; {progress_line(grid)}")
        record = run_cell(grid, cell)
        write_results(grid)
        console.print(f"cell {cell.id} done in {record['seconds']:.1f}s; {progress_line(grid)}")
    return todo


def submitit_job(grid_file: str, cell_id: str, cwd: str) -> dict[str, Any]:
    """What one submitit job runs (a module-level function, so that it pickles): one cell of the grid, from
    the submitting process's working directory (relative paths in the grid and its configs)."""
    os.chdir(cwd)
    grid = validate_cells(load_grid(grid_file))
    cell = next(c for c in grid.cells if c.id == cell_id)
    record = run_cell(grid, cell)
    write_results(grid)
    return record


def run_submitit(grid: Grid, *, cluster: str | None = None, console: Console | None = None) -> list[Cell]:
    """One submitit job per unfinished cell (``cluster``: ``local``, ``slurm`` or None for submitit's choice);
    waits for them, printing progress."""
    import submitit

    console = console or make_console(stderr=True)
    todo = todo_cells(grid)
    executor = submitit.AutoExecutor(folder=str(grid.output / "submitit"), cluster=cluster)
    params = {"timeout_min": 60, **grid.spec.submitit}
    executor.update_parameters(name=f"vcrd-grid-{grid.file.stem}", **params)
    jobs = [(cell, executor.submit(submitit_job, str(grid.file.resolve()), cell.id, os.getcwd())) for cell in todo]
    console.print(f"submitted {len(jobs)} jobs to {executor.cluster}; {progress_line(grid)}")
    failed = []
    pending = list(jobs)
    while pending:
        time.sleep(1.0)
        still = []
        for cell, job in pending:
            if not job.done():
                still.append((cell, job))
                continue
            try:
                job.result()
            except Exception as exc:  # a job's failure is reported, the others go on
                failed.append(f"{cell.id}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}")
            console.print(f"job of cell {cell.id} finished; {progress_line(grid)}")
        pending = still
    write_results(grid)
    if failed:
        raise VcrdError(f"{len(failed)} grid jobs failed; first: {failed[0]}")
    return todo
