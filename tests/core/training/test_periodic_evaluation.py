"""``evaluation.every_steps``: the evaluators grade the live student during ``vcrd train``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.core.training.helpers import config_dict, models, rows, run_config
from vcrd_core.errors import ConfigError
from vcrd_core.hookspecs import hookimpl
from vcrd_core.training.run import run_train

pytestmark = pytest.mark.slow


def evaluation(path: Path, every: int | None = 2) -> dict[str, Any]:
    """An `exact` evaluator on a toy JSONL with the arithmetic task's answer extraction."""
    dataset = {"name": "toy", "path": str(path), "prompt_field": "q", "answer_field": "a"}
    exact = {"name": "exact", "params": {"datasets": [dataset], "template": "plain",
                                          "extract": "vcrd_arithmetic.grammar:final_answer"}}  # fmt: skip
    return {"evaluators": [exact], "every_steps": every, "max_new_tokens": 12}


def test_the_student_is_evaluated_every_n_steps_with_records_hooks_and_summary(
    tmp_path: Path, register_plugin: Any
) -> None:
    teacher, student = models(tmp_path / "models")
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in (("2*3=", "6"), ("1+2=", "3"))))
    seen: list[tuple[int, dict[str, float]]] = []

    class Listener:
        @hookimpl
        def vcrd_on_evaluation_end(self, step: int, results: dict[str, float]) -> None:
            seen.append((step, results))

    register_plugin(Listener(), "listener")
    config = run_config(config_dict(tmp_path, teacher, student, evaluation=evaluation(data)))
    summary = run_train(config, rows=rows(8))

    run = tmp_path / "run"
    assert [step for step, _ in seen] == [2, 4]
    for step, results in seen:
        records = [
            json.loads(line) for line in (run / "eval" / f"step-{step}" / "samples.jsonl").read_text().splitlines()
        ]
        assert [r["prompt"] for r in records] == ["2*3=", "1+2="]
        assert all(r["score"] in (0.0, 1.0) for r in records)
        accuracy = sum(r["score"] for r in records) / 2
        assert results == {"exact/toy/pass@1": accuracy, "exact/average": accuracy}
    assert set(summary["evaluation"]) == {"2", "4"}


def test_a_missing_evaluation_dataset_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    teacher, student = models(tmp_path / "models")
    config = run_config(config_dict(tmp_path, teacher, student, evaluation=evaluation(tmp_path / "nowhere.jsonl")))
    with pytest.raises(ConfigError, match=r"evaluation\.evaluators\.0"):
        run_train(config, rows=rows(8))
    assert not (tmp_path / "run" / "final").exists()


def test_evaluating_during_training_leaves_the_training_run_unchanged(tmp_path: Path) -> None:
    """Generation seeds torch's RNG; the run's own RNG (LoRA dropout, shuffling) is restored, so a run with
    evaluation ends with exactly the parameters of the same run without it."""
    teacher, student = models(tmp_path / "models")
    data = tmp_path / "toy.jsonl"
    data.write_text(json.dumps({"q": "2*3=", "a": "6"}) + "\n")
    final = {}
    for name, every in (("with", 1), ("without", None)):
        cfg = config_dict(tmp_path / name, teacher, student, evaluation=evaluation(data, every))
        run_train(run_config(cfg), rows=rows(8))
        final[name] = load_file(tmp_path / name / "run" / "final" / "adapter_model.safetensors")
    assert final["with"].keys() == final["without"].keys()
    assert all(torch.equal(final["with"][k], final["without"][k]) for k in final["with"])
