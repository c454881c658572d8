"""SIGKILL part-way + ``--resume`` ends bitwise equal to an uninterrupted run; two processes (gloo, through
``accelerate launch --multi_gpu --num_processes 2``, the flags that give two processes on a GPU-less machine)
match one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.core.training.helpers import config_dict, models

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("train_script.py")


def run_script(spec: dict[str, Any], path: Path, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [*(launcher or [sys.executable]), str(SCRIPT), str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_sigkill_and_resume_end_bitwise_equal(tmp_path: Path) -> None:
    teacher, student = models(tmp_path / "m")
    training = {"max_steps": 6, "save_steps": 2, "per_device_batch_size": 2, "gradient_accumulation_steps": 2,
                "args": {"use_cpu": True, "disable_tqdm": True, "save_total_limit": 2}}  # fmt: skip
    base = config_dict(tmp_path, teacher, student, training=training)
    straight = dict(base, output={"dir": str(tmp_path / "straight")})
    killed = dict(base, output={"dir": str(tmp_path / "killed")})
    assert run_script({"config": straight, "rows": [12, 0]}, tmp_path / "a.json").returncode == 0
    first = run_script({"config": killed, "rows": [12, 0], "kill_at_step": 5}, tmp_path / "b.json")
    assert first.returncode == -9  # SIGKILL after step 5 (checkpoints at 2 and 4; keep-last-2)
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    second = run_script({"config": killed, "rows": [12, 0], "resume": True}, tmp_path / "c.json")
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {tmp_path / 'killed' / 'checkpoint-4'} (step 4)" in second.stderr
    a = load_file(str(tmp_path / "straight" / "final" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the steps after checkpoint-4 were logged once
    assert json.loads((tmp_path / "killed" / "summary.json").read_text())["resumed_from"].endswith("checkpoint-4")


#: Two processes sum the same per-sequence terms in another order (all-reduce): float32 rounding only.
TOLERANCE = 1e-5


def test_two_processes_match_one(tmp_path: Path) -> None:
    teacher, student = models(tmp_path / "m")
    common = {"proposals": {"teacher": "greedy", "student": "greedy"}}  # no per-process sampling streams
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    one = config_dict(tmp_path / "one", teacher, student, training={"per_device_batch_size": 4, "max_steps": 3,
                      "lora": lora}, **common)  # fmt: skip
    two = config_dict(tmp_path / "two", teacher, student, training={"per_device_batch_size": 2, "max_steps": 3,
                      "lora": lora, "args": {"disable_tqdm": True}}, **common)  # fmt: skip
    r1 = run_script({"config": one, "rows": [12, 0], "report": str(tmp_path / "one.json")}, tmp_path / "1.json")
    assert r1.returncode == 0, r1.stderr[-3000:]
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "0"]  # fmt: skip
    r2 = run_script(
        {"config": two, "rows": [12, 0], "report": str(tmp_path / "two.json")}, tmp_path / "2.json", launcher
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert a["processes"] == 1 and b["processes"] == 2
    diff = max(max(abs(x - y) for x, y in zip(a["weights"][k], b["weights"][k], strict=True)) for k in a["weights"])
    assert diff < TOLERANCE
    moved = max(max(abs(x) for x in v) for k, v in a["weights"].items() if "lora_B" in k)
    assert moved > 100 * TOLERANCE  # the runs did train
