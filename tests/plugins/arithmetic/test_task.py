"""The toy task's generator against the grammar and the ``oracle`` judge: every emitted derivation is
accepted, a wrong step is rejected at its first wrong character, answers equal Python's evaluation, the
splits are disjoint and fixed by the seed, and the written task loads as a real Qwen2 model + tokenizer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from vcrd_arithmetic import grammar as A
from vcrd_arithmetic.char_tokenizer import build_char_tokenizer
from vcrd_arithmetic.evaluate import grade
from vcrd_arithmetic.task import ModelSize, TaskSpec, build_task, random_derivation, split_problems

import vcrd_core
from vcrd_core import JudgeContext
from vcrd_core.runs.preflight import load_tokenizer

TOK = build_char_tokenizer()
TINY = ModelSize(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


def _oracle_scores(prompt: str, response: str) -> list[float]:
    judge = vcrd_core.create("judges", "oracle", {})
    judge.load(JudgeContext(tokenizer=TOK))
    ids = torch.tensor([TOK(prompt + response, add_special_tokens=False)["input_ids"] + [TOK.eos_token_id]])
    r, _ = judge.score_positions(ids, torch.ones_like(ids), ids)
    return [round(x, 4) for x in r[0, len(prompt) :].tolist()]


def test_every_generated_derivation_is_accepted_by_the_oracle_and_ends_in_pythons_value() -> None:
    rng = random.Random(7)
    spec = TaskSpec(seed=3, n_sft=300, n_distill=20, n_test=20)
    for prompt in split_problems(spec)["sft"]:
        response = random_derivation(rng, prompt)
        assert A.is_complete(prompt, response)
        assert A.final_answer(response) == eval(prompt[:-1]) == A.evaluate(prompt)  # Python's own evaluation
        assert _oracle_scores(prompt, response) == [0.9] * (len(response) + 1)  # every char and EOS valid
        assert grade(prompt, response) == {"accuracy": True, "valid": True}


def test_random_derivations_use_several_valid_steps_where_there_are_some() -> None:
    rng = random.Random(0)
    seen = {random_derivation(rng, "2*3+4*5=") for _ in range(50)}
    assert seen == {"6+4*5=6+20=26", "2*3+20=6+20=26"}


def test_a_wrong_step_is_rejected_at_its_first_wrong_character() -> None:
    prompt, good = "2*3+4*5=", "6+4*5=6+20=26"
    for wrong, at in (("6+4*5=6+21=27", 9), ("6+4*6=6+24=30", 4), ("7+4*5=7+20=27", 0), ("6+4*5=26", 6)):
        assert A.first_invalid_index(prompt, wrong) == at
        scores = _oracle_scores(prompt, wrong)
        assert scores[:at] == [0.9] * at and scores[at:] == [0.1] * (len(scores) - at)
    assert A.first_invalid_index(prompt, good) is None
    assert grade(prompt, "6+4*5=6+21=26") == {"accuracy": True, "valid": False}  # right answer, wrong step


def test_splits_are_disjoint_and_fixed_by_the_seed() -> None:
    spec = TaskSpec(seed=1, n_sft=500, n_distill=100, n_test=100)
    a, b = split_problems(spec), split_problems(spec)
    assert a == b
    assert split_problems(TaskSpec(seed=2, n_sft=500, n_distill=100, n_test=100))["test"] != a["test"]
    sets = [set(v) for v in a.values()]
    assert sum(len(s) for s in sets) == len(set().union(*sets)) == 700
    assert {len(p) for p in a["test"]} == {6, 8}  # 3 and 4 single-digit operands, then '='


def test_build_task_writes_jsonl_a_tokenizer_and_loadable_qwen2_configs(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = TaskSpec(seed=0, n_sft=50, n_distill=10, n_test=10, teacher=TINY, student=TINY)
    build_task(tmp_path, spec)
    rows = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert len(rows) == 50 and all(A.is_complete(r["prompt"], r["response"]) for r in rows)
    assert all(int(r["answer"]) == A.evaluate(r["prompt"]) for r in rows)
    tok = load_tokenizer(str(tmp_path / "tokenizer"), "models.tokenizer")
    assert tok.get_vocab() == TOK.get_vocab()
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path / "teacher"))
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == len(TOK)
    ids = torch.tensor([TOK("2*3=", add_special_tokens=False)["input_ids"]])
    assert model(input_ids=ids).logits.shape == (1, 4, len(TOK))
