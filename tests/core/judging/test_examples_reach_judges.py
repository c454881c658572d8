"""Each rollout's example (prompt text, reference answer, other fields) reaches a judge through ``JudgeRequest``.

A judge written here, outside the core, registered like a third-party plugin, needs the reference answer: it
gives r = 1 to a token that is one of the reference's digits and 0.5 to any other. It is scored offline (real
``vcrd rollouts`` + ``vcrd score``) and online (a real training run from the same store), with no change to the
core; the scores are checked against a plain recomputation from the prompt file's answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import yaml

import vcrd_core
from tests.rollout_helpers import arithmetic_prompts, save_tiny_model, write_jsonl
from vcrd_core import JudgeRequest, JudgeScores, Stream, TokenJudge
from vcrd_core.cli import main
from vcrd_core.config.loader import load_config
from vcrd_core.rollouts.store import RolloutStore
from vcrd_core.runs.preflight import load_tokenizer

pytestmark = pytest.mark.slow


def reference_score(text: str, reference: str) -> float:
    """The judge's formula, written out: 1 for a digit of the reference, 0.5 otherwise."""
    return 1.0 if len(text) == 1 and text.isdigit() and text in reference else 0.5


class ReferenceDigitsJudge(TokenJudge):
    """r(c, a) = 1 if token ``a`` is a digit of the example's reference answer, else 0.5. Records what it saw."""

    name: ClassVar[str] = "test_reference_digits"
    seen: ClassVar[list[dict[str, Any]]] = []

    def score(self, request: JudgeRequest) -> JudgeScores:
        assert request.examples is not None and request.proposals is not None
        tok = self.context.tokenizer
        mask = request.points.mask
        actual = torch.zeros(mask.shape)
        alt = torch.zeros(mask.shape)
        for b, t in mask.nonzero().tolist():
            reference = str(request.examples[b].reference)  # type: ignore[union-attr]
            actual[b, t] = reference_score(tok.decode([int(request.input_ids[b, t])]), reference)
            alt[b, t] = reference_score(tok.decode([int(request.proposals[b, t])]), reference)
        ReferenceDigitsJudge.seen.append(
            {"stream": request.stream, "examples": list(request.examples), "ids": request.input_ids.clone(),
             "proposals": request.proposals.clone(), "mask": mask.clone(), "actual": actual, "alt": alt}
        )  # fmt: skip
        if request.stream is Stream.TEACHER_PREFIX:
            return JudgeScores(r_s=alt, r_t=actual)
        return JudgeScores(r_s=actual, r_t=alt)


class ReferencePlugin:
    @vcrd_core.hookimpl
    def vcrd_register_judges(self) -> list[type]:
        return [ReferenceDigitsJudge]


@pytest.fixture
def run(tmp_path: Path, register_plugin: Any) -> tuple[Path, dict[str, Any]]:
    register_plugin(ReferencePlugin(), "test-reference-digits")
    ReferenceDigitsJudge.seen = []
    save_tiny_model(tmp_path / "teacher", seed=0, hidden_size=128)
    save_tiny_model(tmp_path / "student", seed=1, hidden_size=64)
    write_jsonl(tmp_path / "p.jsonl", arithmetic_prompts(6))
    cfg = {
        "seed": 5,
        "models": {
            "teacher": {"path": str(tmp_path / "teacher"), "dtype": "float32"},
            "student": {"path": str(tmp_path / "student"), "dtype": "float32"},
        },
        "data": {"train": str(tmp_path / "p.jsonl"), "prompt_field": "question", "answer_field": "answer",
                 "template": "plain", "max_prompt_length": 16, "max_length": 48},
        "rollouts": {"generator": {"name": "hf"}, "max_new_tokens": 12, "chunk_size": 3,
                     "store": str(tmp_path / "store")},
        "judge": {"name": "test_reference_digits"},
        "weighting": {"name": "ratio"},
        "training": {"max_steps": 2, "per_device_batch_size": 3, "mixed_precision": "no", "logging_steps": 1,
                     "lora": {"enabled": False}, "args": {"use_cpu": True, "disable_tqdm": True,
                                                         "dataloader_num_workers": 0, "save_strategy": "no"}},
        "output": {"dir": str(tmp_path / "out")},
    }  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["rollouts", str(tmp_path / "run.yaml")]) == 0
    return tmp_path, cfg


def answers() -> dict[str, str]:
    return {str(p["id"]): p["answer"] for p in arithmetic_prompts(6)}


def test_offline_scores_read_the_reference_from_the_store(run: tuple[Path, dict[str, Any]]) -> None:
    root, _ = run
    table = RolloutStore(root / "store").read()
    examples = [json.loads(e) for e in table["example"].to_pylist()]
    assert {(e["id"], e["reference"]) for e in examples} <= set(answers().items())  # the store keeps the reference
    assert all(e["fields"] == {"id": int(e["id"])} for e in examples)  # and the dataset's other fields

    assert main(["score", str(root / "run.yaml")]) == 0
    tok = load_tokenizer(str(root / "student"), "x")
    table = RolloutStore(root / "store").read()
    checked = 0
    for row in table.to_pylist():
        reference = answers()[str(row["prompt_index"])]
        own = [reference_score(tok.decode([t]), reference) for t in row["response_token_ids"]]
        other = [reference_score(tok.decode([t]), reference) for t in row["proposals"]]
        r_s, r_t = (other, own) if row["role"] == "teacher" else (own, other)
        assert row["r_s"] == pytest.approx(r_s) and row["r_t"] == pytest.approx(r_t)
        checked += len(own)
    assert checked > 0 and {1.0, 0.5} <= set(table["r_t"].combine_chunks().flatten().to_pylist())


def test_online_training_hands_the_example_to_the_judge(run: tuple[Path, dict[str, Any]]) -> None:
    root, _ = run
    from vcrd_core.training.run import run_train

    config = load_config(root / "run.yaml", ["scoring.mode=online", "scoring.cache_static=false"])
    summary = run_train(config)
    assert summary["global_step"] == 2
    tok = load_tokenizer(str(root / "student"), "x")
    seen = ReferenceDigitsJudge.seen
    assert {s["stream"] for s in seen} == {Stream.TEACHER_PREFIX, Stream.STUDENT_PREFIX}
    for call in seen:
        for b, example in enumerate(call["examples"]):
            assert example is not None and example.reference == answers()[example.id]
            assert example.prompt == next(p["question"] for p in arithmetic_prompts(6) if str(p["id"]) == example.id)
            for t in call["mask"][b].nonzero().flatten().tolist():
                expected = reference_score(tok.decode([int(call["ids"][b, t])]), example.reference)
                assert float(call["actual"][b, t]) == expected
