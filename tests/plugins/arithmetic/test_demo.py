"""The demo driver end to end at smoke size, as `make demo` runs it (real `vcrd` subprocesses, two shards):
task, SFT of both models from scratch, baselines through `vcrd eval`'s `exact`, rollouts, a two-variant grid
with offline scoring, distillation and grading, the regime table and the Fig. 1 histogram; a second run
reuses everything."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DEMO = ROOT / "examples" / "demo"


@pytest.mark.slow
def test_demo_runs_end_to_end_at_smoke_size_and_a_second_run_reuses_everything(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "sft.yaml").write_text((DEMO / "sft.yaml").read_text())
    distill = yaml.safe_load((DEMO / "distill.yaml").read_text())
    distill["training"]["max_steps"] = 2
    distill["training"]["per_device_batch_size"] = 4
    (configs / "distill.yaml").write_text(yaml.safe_dump(distill))
    grid = yaml.safe_load((DEMO / "grid.yaml").read_text())
    group = grid["zip"][0]
    keep = [0, 7]  # VCRD (ratio) and VCRD-Prob: the two the report reads the regimes of
    grid["zip"][0] = {k: [v[i] for i in keep] for k, v in group.items()}
    grid["baseline"] = "VCRD (ratio)"
    (configs / "grid.yaml").write_text(yaml.safe_dump(grid))
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "vcrd_arithmetic.demo", "--out", str(out), "--configs", str(configs)]
    cmd += ["--seeds", "1", "--problems", "256", "16", "8", "--teacher-steps", "3", "--student-steps", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    rows = list(csv.DictReader((out / "grid" / "results.csv").open()))
    assert sorted(r["label"] for r in rows) == ["VCRD (ratio)", "VCRD-Prob"]
    assert all(0 <= float(r["accuracy"]) <= 1 and r["score/teacher_prefix/parity"] for r in rows)
    base = json.loads((out / "baselines.json").read_text())
    assert base["teacher"]["n"] == base["student"]["n"] == 8
    assert (out / "validity_hist.png").stat().st_size > 0 and (out / "grid" / "results.png").stat().st_size > 0
    assert "Decision points per regime" in first.stdout and "VCRD-Prob" in first.stdout
    check_the_baselines_grid(tmp_path, out, configs, env)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "teacher and student: cached" in second.stdout and "rollouts: cached" in second.stdout
    assert all("0 of this shard's 1 cells to run" in (out / "logs" / f"grid-{i}.log").read_text() for i in range(2))


def check_the_baselines_grid(tmp_path: Path, out: Path, configs: Path, env: dict[str, str]) -> None:
    """examples/demo/baselines.yaml (every recipe of examples/recipes) on the demo's smoke-size models and
    rollouts, as a user runs it after `make demo`: one seed, to results.csv / .md / .png with the differences to
    DistiLLM-2's w = 1."""
    grid = yaml.safe_load((DEMO / "baselines.yaml").read_text())
    written = yaml.safe_load((out / "grid.yaml").read_text())  # the demo's grid, its paths under `out`
    grid["base"] = str(configs / "distill.yaml")
    grid["set"] = {**written["set"], **grid["set"], "on_policy.validation_examples": 4, "rollouts.max_new_tokens": 16}
    grid["zip"][0]["recipe"] = [str((DEMO / r).resolve()) for r in grid["zip"][0]["recipe"]]
    grid["seeds"], grid["output"] = [0], str(tmp_path / "baselines")
    (tmp_path / "baselines.yaml").write_text(yaml.safe_dump(grid))
    done = subprocess.run([sys.executable, "-m", "vcrd_core", "grid", str(tmp_path / "baselines.yaml")],
                          capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "baselines" / "results.csv").open()))
    assert sorted(r["label"] for r in rows) == sorted(grid["zip"][0]["labels"])
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    table = (tmp_path / "baselines" / "results.md").read_text()
    assert "DistiLLM-2 (w = 1)" in table and "GKD (on-policy)" in table
    assert (tmp_path / "baselines" / "results.png").stat().st_size > 0
