"""``vcrd rollouts`` end to end with the ``hf`` generator: SIGKILL and resume, shards, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import VENV_BIN, run_vcrd
from tests.rollout_helpers import arithmetic_prompts, save_tiny_model, write_jsonl
from vcrd_core.cli import main
from vcrd_core.rollouts.store import RolloutStore


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rollouts")
    save_tiny_model(root / "teacher", seed=0, hidden_size=128)
    save_tiny_model(root / "student", seed=1, hidden_size=64)
    save_tiny_model(root / "other", seed=2, hidden_size=64)
    write_jsonl(root / "prompts.jsonl", arithmetic_prompts(24))
    return root


def config(assets: Path, out: Path, **rollouts: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"train": str(assets / "prompts.jsonl"), "prompt_field": "question", "template": "plain"}
    data |= rollouts.pop("data", {})
    return {
        "seed": 11,
        "models": {
            "teacher": {"path": str(assets / "teacher"), "dtype": "float32"},
            "student": {"path": str(assets / "student"), "dtype": "float32"},
        },
        "data": {"max_prompt_length": 64, "max_length": 128} | data,
        "rollouts": {
            "generator": {"name": "hf", "params": {"batch_size": 2, "device": "cpu"}},
            "max_new_tokens": 24,
            "samples_per_prompt": 2,
            "chunk_size": 2,
            "top_k": 50,
        }
        | rollouts,
        "judge": {"name": "teacher_likelihood"},
        "output": {"dir": str(out)},
    }


def write(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def keys(store: RolloutStore) -> list[tuple[str, int, int]]:
    t = store.read()
    return list(zip(t["role"].to_pylist(), t["prompt_index"].to_pylist(), t["sample_index"].to_pylist(), strict=True))


@pytest.mark.slow
def test_sigkill_resume_and_shards_equal_one_run(assets: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    exe = str(VENV_BIN / "vcrd")
    # the uninterrupted reference
    ref_cfg = write(tmp_path / "ref.yaml", config(assets, tmp_path / "ref"))
    done = run_vcrd("rollouts", str(ref_cfg), env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    ref = RolloutStore(tmp_path / "ref" / "rollouts")
    expected = [(r, p, s) for r in ("teacher", "student") for p in range(24) for s in range(2)]
    assert keys(ref) == expected
    summary = json.loads((ref.root / "summary.json").read_text())
    assert summary["complete"] and summary["roles"]["teacher"]["samples"] == 48
    assert 0 < summary["roles"]["student"]["mean_length"] <= 24 and summary["roles"]["teacher"]["max_length"] <= 24
    assert "teacher" in done.stdout and "tokens/s" in done.stdout

    # killed with SIGKILL once a few chunks are written, then rerun
    cfg = write(tmp_path / "run.yaml", config(assets, tmp_path / "run"))
    store = RolloutStore(tmp_path / "run" / "rollouts")
    proc = subprocess.Popen([exe, "rollouts", str(cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len(store.files()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    written = len(store.files())
    assert 3 <= written < 24, written  # part-way: 12 chunks per role
    assert store.missing()
    again = run_vcrd("rollouts", str(cfg), env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr
    assert keys(store) == expected  # every (prompt, sample) exactly once
    assert store.read().equals(ref.read())
    assert not list(store.data.glob(".*.tmp"))

    # two shard processes at once write disjoint chunks of one store
    shard_cfg = write(tmp_path / "shard.yaml", config(assets, tmp_path / "sharded"))
    procs = [
        subprocess.Popen([exe, "rollouts", str(shard_cfg), "--shard", f"{i}/2"], env=env, stderr=subprocess.PIPE)
        for i in range(2)
    ]
    for p in procs:
        assert p.wait(300) == 0, p.stderr.read().decode()[-2000:]
    sharded = RolloutStore(tmp_path / "sharded" / "rollouts")
    assert sharded.read().equals(ref.read())
    assert (sharded.root / "summary-shard-1-of-2.json").is_file()
    # a rerun of a complete store generates nothing and changes nothing
    rerun = run_vcrd("rollouts", str(ref_cfg), env={"OMP_NUM_THREADS": "1"})
    assert (
        rerun.returncode == 0
        and json.loads((ref.root / "summary.json").read_text())["roles"]["teacher"]["chunks_generated"] == 0
    )


def fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_input_one_line_nothing_written(assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"

    def run(name: str, *extra: str, **over: Any) -> str:
        return fails(["rollouts", str(write(tmp_path / f"{name}.yaml", config(assets, out, **over))), *extra], capsys)

    assert "does not exist" in run("missing", data={"train": str(tmp_path / "nope.jsonl")})
    assert "no field 'prompt'" in run("field", data={"prompt_field": "prompt"})
    (tmp_path / "empty.jsonl").write_text("")
    assert "holds no record" in run("empty", data={"train": str(tmp_path / "empty.jsonl")})
    err = run("long", data={"max_prompt_length": 3})
    assert "every prompt (24) is over data.max_prompt_length (3 tokens)" in err
    err = run("refuse", data={"max_prompt_length": 5, "overlong": "refuse"})
    assert "prompts.jsonl:1: prompt of 6 tokens is over data.max_prompt_length (5)" in err
    assert "--shard 3/2" in run("shard", "--shard", "3/2")
    assert not out.exists()


def test_store_from_other_models_refused(assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = {"data": {"num_prompts": 2}, "max_new_tokens": 4, "student": False}
    cfg = config(assets, tmp_path / "out", **small)
    assert main(["rollouts", str(write(tmp_path / "a.yaml", cfg))]) == 0
    store = RolloutStore(tmp_path / "out" / "rollouts")
    before = {f.name: f.stat().st_mtime_ns for f in store.files()}
    manifest = store.manifest_path.read_text()
    capsys.readouterr()
    cfg["models"]["teacher"]["path"] = str(assets / "other")
    err = fails(["rollouts", str(write(tmp_path / "b.yaml", cfg))], capsys)
    assert "was made differently (identity.models.teacher.fingerprint" in err and "--overwrite" in err
    cfg2 = config(assets, tmp_path / "out", **(small | {"temperature": 0.5}))
    err = fails(["rollouts", str(write(tmp_path / "c.yaml", cfg2))], capsys)
    assert "identity.sampling.temperature: 1.0 then, 0.5 now" in err
    assert {f.name: f.stat().st_mtime_ns for f in store.files()} == before
    assert store.manifest_path.read_text() == manifest
    assert main(["rollouts", str(tmp_path / "b.yaml"), "--overwrite"]) == 0
    assert store.manifest_path.read_text() != manifest and len(store.files()) == 1


def test_vllm_missing_is_one_line(assets: Path, tmp_path: Path) -> None:
    cfg = write(tmp_path / "v.yaml", config(assets, tmp_path / "out", generator={"name": "vllm"}))
    shim = "import sys; sys.modules['vllm'] = None; from vcrd_core.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if k not in ("VCRD_DEBUG", "VCRD_NO_VLLM")}
    for how, extra_env in (("shim", {}), ("env", {"VCRD_NO_VLLM": "1"})):
        cmd = [sys.executable, "-c", shim] if how == "shim" else [str(VENV_BIN / "vcrd")]
        done = subprocess.run(
            [*cmd, "rollouts", str(cfg)], capture_output=True, text=True, env=env | extra_env, timeout=120
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "pip install 'vcrd[vllm]'" in lines[0] and "generator 'hf'" in lines[0]
    assert not (tmp_path / "out").exists()
