"""``vcrd grid``: cells validated before anything runs, resumption after a real signal, atomic results,
shards, submitit's local executor, and the results table (mean ± std, best in bold, paired differences)."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from tests.conftest import ROOT, VENV_BIN, run_vcrd
from vcrd_core.errors import VcrdError
from vcrd_core.grid.results import markdown, print_table, summarize, write_chart
from vcrd_core.grid.run import run_local
from vcrd_core.grid.spec import check_metrics, load_grid, validate_cells

HERE = Path(__file__).resolve().parent
BASE = {
    "models": {"teacher": {"path": "/models/teacher"}, "student": {"path": "/models/student"}},
    "data": {"train": "/data/train.jsonl"},
    "judge": {"name": "oracle"},
}


def _grid(tmp_path: Path, weightings: list[Any], seeds: list[int], **extra: Any) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    grid = {
        "base": "base.yaml",
        "axes": {"weighting": weightings},
        "seeds": seeds,
        "stages": ["grid_stages:metric"],
        "output": str(tmp_path / "out"),
        "primary": "accuracy",
        "minimize": ["loss"],
        **extra,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def _env(tmp_path: Path, sleep: float = 0.0) -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        "GRID_LOG": str(tmp_path / "ran.log"),
        "GRID_SLEEP": str(sleep),
        "OMP_NUM_THREADS": "1",
    }


def _ran(tmp_path: Path) -> list[str]:
    log = tmp_path / "ran.log"
    return log.read_text().split() if log.is_file() else []


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_one_invalid_cell_refuses_the_grid_before_any_cell_runs(tmp_path: Path) -> None:
    grid = _grid(tmp_path, [{"name": "ratio"}, {"name": "clamp", "params": {"max": -1}}, {"name": "constant"}], [0])
    result = run_vcrd("grid", str(grid), env=_env(tmp_path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "grid cell 1-clamp" in lines[0] and "weighting.params" in lines[0]
    assert _ran(tmp_path) == [] and not (tmp_path / "out" / "cells").exists()


def test_unknown_stage_and_bad_grid_file_are_refused(tmp_path: Path) -> None:
    grid = _grid(tmp_path, [{"name": "ratio"}], [0], stages=["nosuchmodule:f"])
    with pytest.raises(VcrdError, match="grid stage 'nosuchmodule:f': cannot import it"):
        validate_cells(load_grid(grid))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": "base.yaml", "zip": [{"weighting": [{"name": "ratio"}], "seed": []}]}))
    with pytest.raises(VcrdError, match="zip group 0"):
        load_grid(bad)


def test_interrupted_grid_reruns_only_missing_cells_and_results_csv_is_never_half_written(tmp_path: Path) -> None:
    grid = _grid(tmp_path, [{"name": "ratio"}, {"name": "constant"}, {"name": "student_only"}], [0, 1, 2])
    exe = str(VENV_BIN / "vcrd")
    env = {**os.environ, **_env(tmp_path, sleep=0.4)}
    proc = subprocess.Popen([exe, "grid", str(grid)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = tmp_path / "out" / "results.csv"
    reads = 0
    deadline = time.monotonic() + 120
    try:
        while len(list((tmp_path / "out").glob("cells/*/metrics.json"))) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            if results.is_file():  # a reader racing the writer sees whole files only
                rows = _csv_rows(results)
                assert all(r["accuracy"] and r["seed"] for r in rows)
                reads += 1
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    done = sorted(p.parent.name for p in (tmp_path / "out").glob("cells/*/metrics.json"))
    assert 3 <= len(done) < 9 and reads > 0
    # whole and consistent: every row a finished cell (the signal may land between a cell and the rewrite)
    assert {r["cell"] for r in _csv_rows(results)} <= set(done) and len(_csv_rows(results)) >= len(done) - 1
    assert not list((tmp_path / "out").glob(".*.tmp"))
    first = _ran(tmp_path)
    (tmp_path / "ran.log").unlink()

    result = run_vcrd("grid", str(grid), env=_env(tmp_path))
    assert result.returncode == 0, result.stderr
    rerun = _ran(tmp_path)
    all_cells = [c.id for c in load_grid(grid).cells]
    assert sorted(rerun) == sorted(set(all_cells) - set(done))  # only the missing cells, the killed one included
    assert set(first) - set(done) <= set(rerun)
    rows = _csv_rows(results)
    assert sorted(r["cell"] for r in rows) == sorted(all_cells)
    assert "9 done, 0 running, 0 left" in result.stdout + result.stderr
    assert (tmp_path / "out" / "results.png").stat().st_size > 0
    for cell in all_cells:
        d = tmp_path / "out" / "cells" / cell
        assert (d / "config.yaml").is_file() and (d / "provenance.json").is_file() and not (d / "running.json").exists()


def test_shards_split_the_cells_and_together_run_each_once(tmp_path: Path) -> None:
    grid = _grid(tmp_path, [{"name": "ratio"}, {"name": "constant"}], [0, 1, 2])
    exe = str(VENV_BIN / "vcrd")
    env = {**os.environ, **_env(tmp_path)}
    procs = [subprocess.Popen([exe, "grid", str(grid), "--shard", f"{i}/2"], env=env) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert sorted(_ran(tmp_path)) == sorted(c.id for c in load_grid(grid).cells)
    assert len(_csv_rows(tmp_path / "out" / "results.csv")) == 6


@pytest.mark.slow
def test_grid_through_submitits_local_executor(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    grid = _grid(tmp_path, [{"name": "ratio"}, {"name": "constant"}], [0])
    result = run_vcrd("grid", str(grid), "--executor", "submitit", "--cluster", "local", env=_env(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = _csv_rows(tmp_path / "out" / "results.csv")
    assert sorted(r["label"] for r in rows) == ["constant", "ratio"]
    assert {r["accuracy"] for r in rows} == {"0.6", "0.5"}
    assert list((tmp_path / "out" / "submitit").glob("*_result.pkl"))  # the jobs really went through submitit
    assert "2 done, 0 running, 0 left" in result.stderr


@pytest.fixture
def stages_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


@pytest.mark.usefixtures("stages_importable")
def test_results_table_mean_std_best_in_bold_and_paired_difference(tmp_path: Path) -> None:
    grid_file = _grid(tmp_path, [{"name": "ratio"}, {"name": "constant"}], [0, 1], baseline="constant")
    grid = validate_cells(load_grid(grid_file))
    records = [
        {"label": c.label, "seed": c.seed, "metrics": {"accuracy": acc, "loss": loss}}
        for c, acc, loss in zip(grid.cells, [0.6, 0.8, 0.5, 0.6], [0.2, 0.4, 0.1, 0.1], strict=True)
    ]
    summary = summarize(grid, records)
    assert summary.stat("ratio", "accuracy") == pytest.approx((0.7, 0.1414213, 2))
    assert summary.paired("ratio") == pytest.approx((0.15, 0.0707107, 2))  # (0.1, 0.2) per seed
    md = markdown(summary)
    assert "| ratio | 2 | **0.7 ± 0.14** | 0.3 ± 0.14 | +0.15 ± 0.071 |" in md
    assert "| constant | 2 | 0.55 ± 0.071 | **0.1 ± 0** | baseline |" in md
    grid.spec.columns = ["accuracy"]  # the shown metrics only; the paired difference still uses the primary
    assert "| ratio | 2 | **0.7 ± 0.14** | +0.15 ± 0.071 |" in markdown(summarize(grid, records))


@pytest.mark.usefixtures("stages_importable")
def test_axis_values_may_be_whole_components_and_zip_groups_vary_together(tmp_path: Path) -> None:
    clamp = {"name": "clamp", "params": {"inner": {"name": "ratio"}, "max": 1.0}}

    def grid_with(first_judge: Any) -> Path:
        group = {"labels": ["clamp", "prob"], "weighting": [clamp, {"name": "ratio"}]}
        group["judge"] = [first_judge, {"name": "teacher_likelihood"}]
        axes = {"objective.teacher_prefix.lambda": [0.5, 1.0]}
        return _grid(tmp_path, [{"name": "ratio"}], [3], axes=axes, zip=[group])

    with pytest.raises(VcrdError, match=r"grid cell 0-0.5-clamp-s3 .*judge"):
        validate_cells(load_grid(grid_with(None)))  # clamp around ratio needs a judge, and zip set it to null
    grid_file = grid_with({"name": "oracle"})
    grid = validate_cells(load_grid(grid_file))
    assert [c.label for c in grid.cells] == ["0.5, clamp", "0.5, prob", "1.0, clamp", "1.0, prob"]
    cfg = grid.cells[0].config
    assert cfg.weighting.name == "clamp" and cfg.seed == 3 and cfg.objective.teacher_prefix.lam == 0.5
    assert cfg.output.dir.endswith("cells/0-0.5-clamp-s3/run")
    assert grid.cells[3].config.judge.name == "teacher_likelihood"


@pytest.mark.parametrize(
    "grid_file", [*sorted((ROOT / "examples" / "grids").glob("*.yaml")), ROOT / "examples" / "demo" / "grid.yaml"]
)
def test_example_grids_validate_every_cell(grid_file: Path) -> None:
    grid = validate_cells(load_grid(grid_file))
    assert len(grid.cells) >= 2
    assert len({c.config.output.dir for c in grid.cells}) == len(grid.cells)
    labels = {c.label for c in grid.cells}
    assert grid.spec.baseline is None or grid.spec.baseline in labels


@pytest.mark.usefixtures("stages_importable")
def test_a_changed_grid_reruns_its_changed_cells_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    grid_file = _grid(tmp_path, [{"name": "ratio"}, {"name": "constant"}], [0])
    assert len(run_local(validate_cells(load_grid(grid_file)))) == 2
    assert run_local(validate_cells(load_grid(grid_file))) == []  # finished: nothing to run
    grid_file = _grid(tmp_path, [{"name": "ratio"}, {"name": "constant"}, {"name": "student_only"}], [0])
    assert [c.id for c in run_local(validate_cells(load_grid(grid_file)))] == ["2-student-only-s0"]
    grid_file = _grid(
        tmp_path, [{"name": "ratio"}, {"name": "constant"}], [0], set={"objective.reduction": "token_mean"}
    )
    grid = validate_cells(load_grid(grid_file))
    assert len(run_local(grid)) == 2  # same cells, another config: their old metrics are stale
    assert len(_csv_rows(tmp_path / "out" / "results.csv")) == 2


def test_an_unknown_grid_metric_is_refused_by_validate_with_the_list_and_a_did_you_mean(tmp_path: Path) -> None:
    grid = _grid(tmp_path, [{"name": "ratio"}, {"name": "constant"}], [0], primary="acuracy")
    result = run_vcrd("grid", str(grid), "--validate", env=_env(tmp_path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "primary: 'acuracy' is not a metric of the stages [grid_stages:metric]" in lines[0]
    assert "Did you mean 'accuracy'? They produce: accuracy, loss" in lines[0]
    assert _ran(tmp_path) == [] and not (tmp_path / "out").exists()


@pytest.mark.usefixtures("stages_importable")
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("columns", ["accuracy", "los"], "columns: 'los' is not a metric .* Did you mean 'loss'\\?"),
        ("minimize", ["accurcy"], "minimize: 'accurcy' is not a metric .* Did you mean 'accuracy'\\?"),
        ("maximize", ["losses"], "maximize: 'losses' is not a metric .* Did you mean 'loss'\\?"),
        (
            "baseline",
            "constnat",
            "baseline: 'constnat' is not a combination .* Did you mean 'constant'\\? Combinations: ratio, constant",
        ),
    ],
)
def test_columns_minimize_maximize_and_baseline_are_checked(
    tmp_path: Path, field: str, value: Any, message: str
) -> None:
    with pytest.raises(VcrdError, match=message):
        validate_cells(load_grid(_grid(tmp_path, [{"name": "ratio"}, {"name": "constant"}], [0], **{field: value})))


@pytest.mark.usefixtures("stages_importable")
def test_built_in_stages_declare_what_they_produce(tmp_path: Path) -> None:
    math = {"name": "math", "params": {"datasets": [{"name": "gsm8k", "path": "/d/g.jsonl"}, {"name": "m500"}]}}
    grid_file = _grid(
        tmp_path,
        [{"name": "ratio"}],
        [0],
        stages=["rollouts", "score", "train", "eval", "grid_stages:metric"],
        set={"evaluation.evaluators": [math, math]},
        primary="math/average",
        minimize=[],
    )
    grid = validate_cells(load_grid(grid_file))
    streams = ("teacher_prefix", "student_prefix")
    assert grid.metrics == {
        *(f"score/{s}/{k}" for s in streams for k in ("attenuation", "parity", "amplification")),
        "train/final_loss",
        "train/seconds",
        "math/gsm8k/pass@1",
        "math/m500/pass@1",
        "math/average",
        "math-2/gsm8k/pass@1",
        "math-2/m500/pass@1",
        "math-2/average",
        "accuracy",
        "loss",
    }
    assert grid.undeclared == []
    off = _grid(
        tmp_path,
        [{"name": "ratio"}],
        [0],
        stages=["score"],
        primary=None,
        minimize=[],
        set={"objective.student_prefix.enabled": False},
    )
    assert validate_cells(load_grid(off)).metrics == {
        f"score/teacher_prefix/{k}" for k in ("attenuation", "parity", "amplification")
    }
    with pytest.raises(VcrdError, match=r"primary: 'math/avg' is not a metric .* Did you mean 'math/average'"):
        validate_cells(
            load_grid(
                _grid(
                    tmp_path,
                    [{"name": "ratio"}],
                    [0],
                    stages=["train", "eval"],
                    set={"evaluation.evaluators": [math]},
                    primary="math/avg",
                    minimize=[],
                )
            )
        )
    with pytest.raises(VcrdError, match=r"grid cell 0-ratio-s0 .*evaluation.evaluators.*eval stage needs"):
        validate_cells(load_grid(_grid(tmp_path, [{"name": "ratio"}], [0], stages=["train", "eval"], minimize=[])))


def test_the_demo_grid_stage_declares_its_metrics() -> None:
    from vcrd_arithmetic.evaluate import grid_stage

    assert grid_stage.grid_metrics == ("accuracy", "valid", "n")  # type: ignore[attr-defined]


@pytest.mark.usefixtures("stages_importable")
def test_an_undeclared_stage_is_checked_once_its_first_cell_has_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    grid_file = _grid(
        tmp_path, [{"name": "ratio"}, {"name": "constant"}], [0], stages=["grid_stages:undeclared"], primary="acuracy"
    )
    grid = validate_cells(load_grid(grid_file))  # its names are unknown before it runs
    assert grid.undeclared == ["grid_stages:undeclared"]
    with pytest.raises(
        VcrdError,
        match=r"primary: 'acuracy' is not a metric a finished cell reported .* "
        r"Did you mean 'accuracy'\? They produce: accuracy, loss",
    ):
        run_local(grid)
    assert _ran(tmp_path) == ["0-ratio-s0"]  # stopped after one cell, which is kept
    assert (tmp_path / "out" / "cells" / "0-ratio-s0" / "metrics.json").is_file()


def test_loss_and_seconds_are_minimised_by_default_unless_maximize_says_otherwise(tmp_path: Path) -> None:
    grid_file = _grid(
        tmp_path, [{"name": "ratio"}, {"name": "constant"}], [0], minimize=[], stages=["train"], primary="train/seconds"
    )
    grid = validate_cells(load_grid(grid_file))
    records = [
        {"label": c.label, "seed": c.seed, "metrics": {"train/final_loss": loss, "train/seconds": secs, "acc": acc}}
        for c, loss, secs, acc in zip(grid.cells, [0.2, 0.9], [50.0, 10.0], [0.3, 0.7], strict=True)
    ]
    summary = summarize(grid, records)
    assert summary.best("train/final_loss") == 0.2 and summary.best("train/seconds") == 10.0
    assert summary.best("acc") == 0.7  # any other name: higher is better
    md = markdown(summary)
    assert "| ratio | 1 | **0.2** | 50 | 0.3 |" in md and "| constant | 1 | 0.9 | **10** | **0.7** |" in md
    grid.spec.maximize = ["train/seconds"]
    grid.spec.minimize = ["acc"]
    summary = summarize(grid, records)
    assert summary.best("train/seconds") == 50.0 and summary.best("acc") == 0.3
    assert summary.best("train/final_loss") == 0.2
    grid.spec.minimize = ["train/seconds"]
    with pytest.raises(VcrdError, match="'train/seconds' is under both minimize and maximize"):
        check_metrics(grid)


def test_no_chart_is_written_with_empty_axes(tmp_path: Path) -> None:
    grid_file = _grid(
        tmp_path,
        [{"name": "ratio"}, {"name": "constant"}],
        [0],
        stages=["train"],
        primary="train/final_loss",
        minimize=[],
    )
    grid = validate_cells(load_grid(grid_file))
    png = tmp_path / "out" / "results.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"an older chart")
    # finished cells whose primary metric has no value (e.g. a failed final loss)
    records = [{"label": c.label, "seed": c.seed, "metrics": {"train/seconds": 1.0}} for c in grid.cells]
    summary = summarize(grid, records)
    assert write_chart(summary, png) is None and not png.exists()
    assert summary.chart_note == "no finished cell reports the primary metric 'train/final_loss'"
    out = Console(file=io.StringIO(), width=200)
    print_table(summary, out, "t")
    assert "results.png not written: no finished cell reports the primary metric 'train/final_loss'" in (
        out.file.getvalue()  # type: ignore[attr-defined]
    )
    assert write_chart(summarize(grid, []), png) is None and not png.exists()  # no finished cell
    records[0]["metrics"]["train/final_loss"] = 0.5
    summary = summarize(grid, records)
    assert write_chart(summary, png) == png and png.read_bytes()[:4] == b"\x89PNG" and summary.chart_note is None
