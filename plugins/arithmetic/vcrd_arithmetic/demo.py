"""The CPU demo (``make demo``): the toy task end to end, with one command and no download.

``python -m vcrd_arithmetic.demo [--out runs/demo]`` runs, each step through the ``vcrd`` command line:

1. the task (splits, tokenizer, model configs) into ``OUT/task``;
2. ``vcrd sft --from-scratch`` of the teacher and the student, side by side (one core each);
3. the held-out accuracy of the teacher and of the student before distillation;
4. ``vcrd rollouts`` of both models on the distillation prompts (two ``--shard`` processes);
5. ``vcrd grid`` over the weighting rules (``examples/demo/grid.yaml``), two ``--shard`` processes: each
   cell scores its own copy of the rollouts offline with its rule, distills the student and grades it;
6. the share of decision points in each regime per stream and a Fig. 1-style histogram, from VCRD's scores;
7. the summary: teacher, student before, every variant with its spread and its paired difference to ``w = 1``.

Every step is cached in ``OUT``: a second run reuses the task, the models, the rollouts and every finished
grid cell (the grid reruns only unfinished cells).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from vcrd_arithmetic.evaluate import exact_evaluators, held_out_accuracy
from vcrd_arithmetic.task import TaskSpec, build_task
from vcrd_core.config.loader import load_config
from vcrd_core.errors import VcrdError
from vcrd_core.judging.analysis import plot_validity_histogram, validity_stats
from vcrd_core.judging.score_records import ScoreRecord
from vcrd_core.rollouts.store import RolloutStore
from vcrd_core.runs.atomic import atomic_write_text
from vcrd_core.runs.console import console as make_console

#: The demo's configs (sft.yaml, distill.yaml, grid.yaml) in a source checkout; ``--configs`` elsewhere.
EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "demo"
#: SFT steps of batch 64 (lr 3e-3 cosine): a teacher clearly stronger than a student with room to improve.
TEACHER_STEPS, STUDENT_STEPS = 1000, 400


def _vcrd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vcrd_core", *args]


def run_parallel(commands: list[list[str]], logs: list[Path], console: Console) -> None:
    """Run the commands side by side, one core each; a failure is one line naming its log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = []
    for cmd, log in zip(commands, logs, strict=True):
        log.parent.mkdir(parents=True, exist_ok=True)
        procs.append((cmd, log, subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)))
    failed = []
    for cmd, log, proc in procs:
        if proc.wait() != 0:
            tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
            failed.append(f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}; log {log}): {''.join(tail)}")
    if failed:
        raise VcrdError(failed[0])


def _has_weights(d: Path) -> bool:
    return (d / "final" / "model.safetensors").is_file()


def paths(out: Path) -> dict[str, Any]:
    task = out / "task"
    return {
        "evaluation.evaluators": exact_evaluators(task / "test.jsonl"),
        "models.teacher.path": str(out / "teacher-sft" / "final"),
        "models.student.path": str(out / "student-sft" / "final"),
        "models.tokenizer": str(task / "tokenizer"),
        "data.train": str(task / "distill.jsonl"),
        "data.eval": str(task / "test.jsonl"),
        "rollouts.store": str(out / "rollouts"),
    }


def _assignments(values: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def _sets(values: dict[str, Any]) -> list[str]:
    return [arg for a in _assignments(values) for arg in ("--set", a)]


def train_models(out: Path, configs: Path, console: Console, teacher_steps: int, student_steps: int) -> None:
    todo = [
        (r, s)
        for r, s in (("teacher", teacher_steps), ("student", student_steps))
        if not _has_weights(out / f"{r}-sft")
    ]
    if not todo:
        console.print("teacher and student: cached")
        return
    task = out / "task"
    common = {
        "models.teacher.path": str(task / "teacher"),
        "models.student.path": str(task / "student"),
        "models.tokenizer": str(task / "tokenizer"),
        "data.train": str(task / "sft.jsonl"),
    }
    commands, logs = [], []
    for role, steps in todo:
        extra = {"output.dir": str(out / f"{role}-sft"), "output.overwrite": True, "training.max_steps": steps}
        cmd = _vcrd("sft", str(configs / "sft.yaml"), "--model", role, "--from-scratch", *_sets(common | extra))
        commands.append(cmd)
        logs.append(out / "logs" / f"sft-{role}.log")
    start = time.perf_counter()
    console.print(f"SFT from scratch: {', '.join(f'{r} {s} steps' for r, s in todo)} (side by side)")
    run_parallel(commands, logs, console)
    console.print(f"SFT done in {time.perf_counter() - start:.0f}s")


def baselines(out: Path, configs: Path, console: Console) -> dict[str, Any]:
    """The teacher's and the student-before's held-out accuracy (``vcrd eval`` with ``exact``)."""
    file = out / "baselines.json"
    if file.is_file():
        return json.loads(file.read_text())
    config = load_config(configs / "distill.yaml", _assignments(paths(out)))
    found = {
        role: held_out_accuracy(config, getattr(config.models, role).path, out / "eval" / role)
        for role in ("teacher", "student")
    }
    atomic_write_text(file, json.dumps(found, indent=2) + "\n")
    return found


def rollouts(out: Path, configs: Path, console: Console) -> None:
    if (out / "rollouts" / "summary-shard-1-of-2.json").is_file() and (
        out / "rollouts" / "summary-shard-0-of-2.json"
    ).is_file():
        console.print("rollouts: cached")
        return
    start = time.perf_counter()
    sets = _sets(paths(out))
    commands = [_vcrd("rollouts", str(configs / "distill.yaml"), *sets, "--shard", f"{i}/2") for i in range(2)]
    run_parallel(commands, [out / "logs" / f"rollouts-{i}.log" for i in range(2)], console)
    console.print(f"rollouts done in {time.perf_counter() - start:.0f}s")


def write_grid(out: Path, configs: Path, seeds: int) -> Path:
    grid = yaml.safe_load((configs / "grid.yaml").read_text())
    grid["base"] = str(configs / "distill.yaml")
    grid["set"] = {**paths(out), **grid.get("set", {})}
    grid["output"] = str(out / "grid")
    grid["seeds"] = list(range(seeds))
    file = out / "grid.yaml"
    atomic_write_text(file, yaml.safe_dump(grid, sort_keys=False))
    return file


def run_grid(grid_file: Path, out: Path, console: Console) -> None:
    start = time.perf_counter()
    commands = [_vcrd("grid", str(grid_file), "--shard", f"{i}/2") for i in range(2)]
    run_parallel(commands, [out / "logs" / f"grid-{i}.log" for i in range(2)], console)
    console.print(f"grid done in {time.perf_counter() - start:.0f}s")


def regimes(cell_dir: Path, out_png: Path) -> Any:
    """Validity statistics of one cell's scored store, and its Fig. 1-style histogram."""
    table = RolloutStore(cell_dir / "rollouts").read()
    records = []
    for row in table.to_pylist():
        if row.get("r_s") is None:
            continue
        stream = "teacher_prefix" if row["role"] == "teacher" else "student_prefix"
        records.append(
            ScoreRecord(
                f"{row['prompt_index']}/{row['sample_index']}",
                stream,
                row["r_s"],
                row["r_t"],
                # teacher_likelihood compares no proposals (DESIGN.md §1.3): no point is parity by identity
                row["same_token"] if row["same_token"] is not None else [False] * len(row["r_s"]),
                row["weights"],
            )
        )
    stats = validity_stats(records)
    plot_validity_histogram(records, out_png, title="Local validity of student vs teacher proposals (toy task)")
    return stats


def report(out: Path, grid_file: Path, base: dict[str, Any], console: Console) -> None:
    grid = json.loads(json.dumps(yaml.safe_load(grid_file.read_text())))
    cells = sorted((out / "grid" / "cells").iterdir())
    first = next(c for c in cells if "VCRD-ratio" in c.name)
    prob = next(c for c in cells if "VCRD-Prob" in c.name)
    table = Table(title="Decision points per regime (scores of the initial student, seed 0)", title_justify="left")
    for col in ("judge", "stream", "points", "attenuation", "parity", "amplification", "r_s ≥ r_t"):
        table.add_column(col, justify="left" if col in ("judge", "stream") else "right")
    found = {}
    for name, cell in (("oracle (VCRD)", first), ("teacher_likelihood (VCRD-Prob)", prob)):
        png = out / ("validity_hist.png" if cell is first else "validity_hist_vcrd_prob.png")
        stats = regimes(cell, png)
        found[name] = stats.to_dict()
        for stream, s in stats.streams.items():
            table.add_row(
                name,
                stream,
                f"{s.n_points:,}",
                f"{100 * s.share_attenuation:.1f}%",
                f"{100 * s.share_parity:.1f}%",
                f"{100 * s.share_amplification:.1f}%",
                f"{100 * s.share_student_at_least_teacher:.1f}%",
            )
    atomic_write_text(out / "regimes.json", json.dumps(found, indent=2) + "\n")
    console.print(table)
    console.print(
        f"teacher held-out accuracy {100 * base['teacher']['accuracy']:.1f}% "
        f"(valid derivations {100 * base['teacher']['valid']:.1f}%); student before distillation "
        f"{100 * base['student']['accuracy']:.1f}% ({100 * base['student']['valid']:.1f}%), "
        f"{base['teacher']['n']} held-out problems"
    )
    console.print((out / "grid" / "results.md").read_text(), markup=False, highlight=False)
    console.print(
        f"wrote {out}/grid/results.csv, results.md, results.png; {out}/validity_hist.png (Fig. 1-style); "
        f"{out}/regimes.json; grid seeds {grid['seeds']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcrd_arithmetic.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="output and cache directory (default runs/demo)")
    parser.add_argument("--seeds", type=int, default=3, help="distillation seeds per variant (default 3)")
    parser.add_argument("--configs", default=str(EXAMPLES), help="directory of sft.yaml, distill.yaml, grid.yaml")
    parser.add_argument(
        "--problems",
        type=int,
        nargs=3,
        metavar=("SFT", "DISTILL", "TEST"),
        default=None,
        help="problems per split (default 20000 2000 300); smaller for a smoke run",
    )
    parser.add_argument("--teacher-steps", type=int, default=TEACHER_STEPS)
    parser.add_argument("--student-steps", type=int, default=STUDENT_STEPS)
    args = parser.parse_args(argv)
    console = make_console()
    configs = Path(args.configs).resolve()
    missing = [f for f in ("sft.yaml", "distill.yaml", "grid.yaml") if not (configs / f).is_file()]
    if missing:
        print(
            f"error: --configs {configs}: no {', '.join(missing)} (examples/demo of a vcrd checkout)", file=sys.stderr
        )
        return 2
    out = Path(args.out).resolve()
    start = time.perf_counter()
    try:
        if not (out / "task" / "task.json").is_file():
            sizes = dict(zip(("n_sft", "n_distill", "n_test"), args.problems, strict=True)) if args.problems else {}
            build_task(out / "task", TaskSpec(**sizes))
        train_models(out, configs, console, args.teacher_steps, args.student_steps)
        base = baselines(out, configs, console)
        rollouts(out, configs, console)
        grid_file = write_grid(out, configs, args.seeds)
        run_grid(grid_file, out, console)
        subprocess.run(_vcrd("grid", str(grid_file)), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report(out, grid_file, base, console)
    except VcrdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    console.print(f"demo finished in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
