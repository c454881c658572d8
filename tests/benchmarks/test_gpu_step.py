"""``benchmarks/gpu_step.py`` run as a real subprocess (nothing mocked).

``--device cpu --tiny`` runs the GPU benchmark's own code path (models built from configs, a PRM checkpoint
written and loaded by the ``prm_value_head`` judge, the engine's ``prepare`` / ``build_trainer`` / ``train``,
metrics read back from ``metrics.jsonl``) on toy shapes; without ``--device cpu`` a machine without CUDA
skips with one line and exit status 0.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_step.py"
VARIANTS = ("constant", "offline_vcrd", "online_teacher_likelihood", "online_prm_value_head")
BATCH, PROMPT, RESPONSE, WARMUP, STEPS = 4, 16, 48, 2, 5  # the --tiny defaults


def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def finite_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_tiny_cpu_run_reports_all_four_variants(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = run("--device", "cpu", "--tiny", "--json", str(out), "--workdir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())

    assert list(result["variants"]) == list(VARIANTS)
    settings = result["settings"]
    assert (settings["batch"], settings["sequence_length"], settings["warmup"], settings["steps"]) == (
        BATCH, PROMPT + RESPONSE, WARMUP, STEPS,
    )  # fmt: skip
    assert (settings["lora_r"], settings["lora_alpha"], settings["lora_dropout"]) == (16, 128, 0.05)  # Table 9
    assert finite_positive(settings["peak_tflops"])
    for name, v in result["variants"].items():
        assert "error" not in v, (name, v)
        assert v["steps"] == WARMUP + STEPS
        assert len(v["step_seconds_timed"]) == STEPS
        for key in ("step_seconds", "ratio_vs_constant", "tokens_per_second", "mfu"):
            assert finite_positive(v[key]), (name, key, v[key])
        assert v["mfu"] == pytest.approx(
            v["flops_per_step"]["total"] / (v["step_seconds"] * settings["peak_tflops"] * 1e12)
        )
        assert sum(v["time_share"].values()) > 0
        # every step processes both streams' full sequences (the trainer's own token count agrees)
        assert v["tokens_per_step"] == 2 * BATCH * (PROMPT + RESPONSE)
        assert v["measured_tokens_per_step"] == pytest.approx(v["tokens_per_step"], rel=1e-3)
        flops = v["flops_per_step"]
        for part in ("teacher_forward", "student_forward", "student_backward", "total"):
            assert finite_positive(flops[part]), (name, part)
        assert isinstance(v["loss_engine"], str) and v["loss_engine"]
        assert v["peak_memory_gib"] is None  # CPU: no CUDA memory statistics
    assert result["variants"]["constant"]["ratio_vs_constant"] == 1.0

    prm = result["variants"]["online_prm_value_head"]
    assert prm["static_scoring_seconds"] > 0  # the student-prefix stream, scored once before training
    assert finite_positive(prm["flops_per_step"]["judge"])
    # the judge's tree passes: the teacher-prefix sequences plus one branch token per scored response position
    assert BATCH * (PROMPT + RESPONSE) <= prm["judge_tokens_per_step"] <= BATCH * (PROMPT + 1 + 2 * RESPONSE)
    for name in ("constant", "offline_vcrd", "online_teacher_likelihood"):
        assert result["variants"][name]["flops_per_step"]["judge"] == 0
        assert result["variants"][name]["static_scoring_seconds"] == 0
    assert {"teacher", "student", "judge"} <= set(result["models"])

    assert "| variant | step (s) | vs constant |" in proc.stdout
    for label in ("constant (SKL+SRKL)", "offline VCRD", "online teacher_likelihood", "online prm_value_head"):
        assert f"| {label} |" in proc.stdout
    assert not list(tmp_path.glob("vcrd-gpu-step-*")), "the scratch directory is removed without --keep"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the benchmark would run")
def test_without_a_gpu_it_skips_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = run("--json", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "no CUDA device: skipped"
    assert not out.exists()


def test_cpu_needs_tiny() -> None:
    proc = run("--device", "cpu", timeout=300)
    assert proc.returncode == 2
    assert "--tiny" in proc.stderr


@pytest.mark.slow
def test_tiny_cpu_on_policy_variant_reports_generation_and_sync(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = run("--device", "cpu", "--tiny", "--variants", "constant,on_policy_hf", "--warmup", "1", "--steps", "2",
               "--json", str(out), "--workdir", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    v = json.loads(out.read_text())["variants"]["on_policy_hf"]
    assert "error" not in v, v
    assert finite_positive(v["time_seconds"]["generation"]) and v["time_seconds"]["sync"] >= 0
    assert finite_positive(v["generation_tokens_per_second"])
    assert 0 < v["generated_tokens_per_step"] <= BATCH * RESPONSE
    assert "| on-policy variant | step (s) | generation (s) |" in proc.stdout


@pytest.mark.slow
def test_tiny_cpu_cached_variants_run_no_teacher_forward(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    variants_arg = "constant,constant_cached,online_teacher_likelihood_cached"
    proc = run("--device", "cpu", "--tiny", "--variants", variants_arg, "--warmup", "1", "--steps", "2",
               "--cache-k", "16", "--json", str(out), "--workdir", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    variants = json.loads(out.read_text())["variants"]
    teacher_forward = variants["constant"]["time_seconds"]["teacher_forward"]
    assert teacher_forward > 0
    for name in ("constant_cached", "online_teacher_likelihood_cached"):
        v = variants[name]
        assert "error" not in v, v
        assert v["time_seconds"]["teacher_forward"] < 0.05 * teacher_forward  # only the timer's own syncs
        assert v["flops_per_step"]["teacher_forward"] == 0
        assert finite_positive(v["cache_seconds"]) and finite_positive(v["step_seconds"])
        assert v["loss_engine"] == "fused_linear"
    # same rollouts, student and constant weights: the coarsened divergences are below the exact ones (a random
    # teacher is near-uniform, so most of its mass is in the tail bucket of a top-16)
    exact, cached = variants["constant"]["final_loss"], variants["constant_cached"]["final_loss"]
    assert 0 < cached < exact
