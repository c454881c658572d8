"""``vcrd eval CONFIG`` after ``vcrd train``: the trained model in ``<output.dir>/final`` is what is evaluated by
default (a LoRA adapter merged onto the student it was trained from, a whole model as it is), and the output
says so; ``--model student`` / ``base`` / ``teacher`` / PATH evaluate what they name; without ``final/`` nothing
is evaluated. Real tiny models trained a few steps, the real ``hf`` generator, the CLI in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.conftest import run_vcrd
from tests.core.training.helpers import config_dict, models, rows, run_config
from vcrd_core.training.run import run_train

pytestmark = pytest.mark.slow

PROBLEMS = (("2*3=", "6"), ("1+2=", "3"), ("4-1=", "3"), ("2*2=", "4"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return models(tmp_path_factory.mktemp("models"))


def _config(root: Path, tiny: tuple[Path, Path], **training: Any) -> dict[str, Any]:
    data = root / "toy.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in PROBLEMS))
    dataset = {"name": "toy", "path": str(data), "prompt_field": "q", "answer_field": "a"}
    exact = {"name": "exact", "params": {"datasets": [dataset], "template": "plain",
                                          "extract": "vcrd_arithmetic.grammar:final_answer"}}  # fmt: skip
    evaluation = {"evaluators": [exact], "max_new_tokens": 8, "generator": {"name": "hf", "params": {"device": "cpu"}}}
    train = {"max_steps": 6, "learning_rate": 2e-2, **training}
    return config_dict(root, *tiny, training=train, evaluation=evaluation)


def _train(root: Path, tiny: tuple[Path, Path], *, merge: bool = False, **training: Any) -> Path:
    cfg = _config(root, tiny, **training)
    run_train(run_config(cfg), rows=rows(8), merge=merge)
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _outputs(eval_dir: Path) -> list[str]:
    return [json.loads(line)["output"] for line in (eval_dir / "samples.jsonl").read_text().splitlines()]


def test_the_trained_lora_student_is_evaluated_by_default(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    config = _train(tmp_path, tiny)
    run, student = tmp_path / "run", tiny[1]
    final = run / "final"
    assert (final / "adapter_config.json").is_file() and not (final / "config.json").exists()

    result = run_vcrd("eval", str(config))
    assert result.returncode == 0, result.stderr
    assert f"evaluating the trained student {final} (LoRA adapter on models.student.path {student})" in result.stderr
    assert "evaluation of the trained student" in result.stdout
    summary = json.loads((run / "eval" / "trained" / "summary.json").read_text())
    assert summary["model"]["label"] == "trained"
    assert summary["model"]["path"] == str(final.resolve())
    assert summary["model"]["merged_onto"] == str(student.resolve())
    assert sorted(p.name for p in (run / "eval" / "trained").iterdir()) == ["samples.jsonl", "summary.json"]

    # The same adapter merged here, independently: its weights moved away from the student's, and evaluating
    # it gives exactly the default evaluation's outputs.
    base = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, final).merge_and_unload()
    assert any(not torch.equal(before[k], v) for k, v in merged.state_dict().items())
    reference = tmp_path / "reference-merge"
    merged.save_pretrained(reference)
    PreTrainedTokenizerFast.from_pretrained(final).save_pretrained(reference)
    check = run_vcrd("eval", str(config), "--model", str(reference))
    assert check.returncode == 0, check.stderr
    assert _outputs(run / "eval" / "reference-merge") == _outputs(run / "eval" / "trained")

    untrained = run_vcrd("eval", str(config), "--model", "base")
    assert untrained.returncode == 0, untrained.stderr
    assert f"evaluating the untrained student {student} (models.student.path, before distillation)" in untrained.stderr
    assert "evaluation of the untrained student" in untrained.stdout
    assert json.loads((run / "eval" / "student" / "summary.json").read_text())["model"]["label"] == "student"


def test_a_whole_trained_model_and_merged_weights_are_evaluated_as_they_are(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    full = _train(tmp_path / "full", tiny, lora={"enabled": False})
    final = tmp_path / "full" / "run" / "final"
    result = run_vcrd("eval", str(full))
    assert result.returncode == 0, result.stderr
    assert f"evaluating the trained student {final}\n" in result.stderr and "merging" not in result.stderr
    assert json.loads((final.parent / "eval" / "trained" / "summary.json").read_text())["model"]["path"] == str(
        final.resolve()
    )

    lora = _train(tmp_path / "lora", tiny, merge=True)
    merged = tmp_path / "lora" / "run" / "merged"
    result = run_vcrd("eval", str(lora))
    assert result.returncode == 0, result.stderr
    assert f"evaluating the trained student {merged} (LoRA merged)" in result.stderr and "merging" not in result.stderr


def test_without_a_trained_model_nothing_is_evaluated_unless_asked(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, tiny), sort_keys=False))
    result = run_vcrd("eval", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        f"error: output.dir: no trained model to evaluate: '{tmp_path / 'run' / 'final'}' does not exist; "
        "`vcrd train CONFIG` writes it. Evaluate the untrained student with --model student"
    )
    assert not (tmp_path / "run" / "eval").exists()
    teacher = run_vcrd("eval", str(path), "--model", "teacher")
    assert teacher.returncode == 0, teacher.stderr
    assert f"evaluating the teacher {tiny[0]}" in teacher.stderr
    assert (
        json.loads((tmp_path / "run" / "eval" / "teacher" / "summary.json").read_text())["model"]["label"] == "teacher"
    )
