"""``vcrd score``: stored proposals, scores and weights equal recomputing them directly (teacher_likelihood)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from tests.rollout_helpers import arithmetic_prompts, save_tiny_model, write_jsonl
from vcrd_core.cli import main
from vcrd_core.config.loader import load_config
from vcrd_core.decision_points import DecisionPoints, Stream
from vcrd_core.errors import VcrdError
from vcrd_core.judging.judge import JudgeContext
from vcrd_core.judging.scoring import ScoredBatch, score_batch
from vcrd_core.plugins.registry import create
from vcrd_core.rollouts.run import generate_rollouts
from vcrd_core.rollouts.scoring import score_store
from vcrd_core.rollouts.store import RolloutStore
from vcrd_core.runs.preflight import load_tokenizer


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, dict[str, Any]]:
    root = tmp_path_factory.mktemp("score")
    save_tiny_model(root / "teacher", seed=0, hidden_size=128)
    save_tiny_model(root / "student", seed=1, hidden_size=64)
    write_jsonl(root / "p.jsonl", arithmetic_prompts(5))
    cfg = {
        "seed": 5,
        "models": {
            "teacher": {"path": str(root / "teacher"), "dtype": "float32"},
            "student": {"path": str(root / "student"), "dtype": "float32"},
        },
        "data": {"train": str(root / "p.jsonl"), "prompt_field": "question", "template": "plain"},
        "rollouts": {"generator": {"name": "hf"}, "max_new_tokens": 10, "samples_per_prompt": 2, "chunk_size": 2},
        "judge": {"name": "teacher_likelihood"},
        "weighting": {"name": "ratio"},
        "output": {"dir": str(root / "out")},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    config = load_config(root / "run.yaml")
    generate_rollouts(config)
    summary = score_store(config, batch_size=3)
    return root, config, summary


def _recomputed(
    root: Path, judge_name: str, judge_params: dict[str, Any], num_rows: int, proposal: str = "sample"
) -> Iterator[tuple[dict[str, Any], ScoredBatch, slice, torch.Tensor, torch.Tensor]]:
    """Each row of ``root``'s scored store (ratio rule) beside ``score_batch`` on that rollout alone, from the
    saved models: ``(row, direct, response span, teacher logits, student logits)``."""
    tok = load_tokenizer(str(root / "student"), "x")
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher").eval()
    student = AutoModelForCausalLM.from_pretrained(root / "student").eval()
    judge = create("judges", judge_name, judge_params)
    judge.load(JudgeContext(tokenizer=tok, vocab_size=len(tok)))
    rule = create("weighting", "ratio", {})
    table = RolloutStore(root / "out" / "rollouts").read()
    assert table.num_rows == num_rows and table["weights"].null_count == 0
    for row in table.to_pylist():
        stream = Stream.TEACHER_PREFIX if row["role"] == "teacher" else Stream.STUDENT_PREFIX
        p, y = row["prompt_token_ids"], row["response_token_ids"]
        ids = torch.tensor([p + y])
        attn = torch.ones_like(ids)
        resp = torch.zeros_like(ids, dtype=torch.bool)
        resp[0, len(p) :] = True
        points = DecisionPoints.from_masks(attn, resp)
        with torch.no_grad():
            t_logits, s_logits = teacher(ids).logits, student(ids).logits
        direct = score_batch(stream, ids, attn, points, t_logits, s_logits, judge, rule, proposal=proposal,
                             vocab_size=len(tok), prompt_lengths=torch.tensor([len(p)]))  # fmt: skip
        yield row, direct, slice(len(p), len(p) + len(y)), t_logits, s_logits


def test_stored_scores_equal_direct_recomputation(scored: tuple[Path, Any, dict[str, Any]]) -> None:
    root, _, summary = scored
    for row, direct, span, t_logits, s_logits in _recomputed(root, "teacher_likelihood", {}, 20):
        torch.testing.assert_close(torch.tensor(row["r_s"]), direct.r_s[0, span].float(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(row["r_t"]), direct.r_t[0, span].float(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(row["weights"]), direct.weights[0, span].float(), atol=1e-5, rtol=1e-4)
        assert row["proposals"] is None  # teacher_likelihood reads the student's greedy token, no proposal
        # and by hand (VCRD-Prob): r_s = p_teacher(student greedy) at the first decision point
        t = span.start
        greedy = int(s_logits[0, t - 1].argmax())
        expected = torch.softmax(t_logits[0, t - 1].double(), -1)[greedy].item()
        assert row["r_s"][0] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert set(summary["streams"]) == {"teacher_prefix", "student_prefix"}
    s = summary["streams"]["teacher_prefix"]
    assert s["decision_points"] > 0
    assert s["attenuation"] + s["parity"] + s["amplification"] == pytest.approx(1.0)


def test_rescore_skips_and_changed_setup_refused(
    scored: tuple[Path, Any, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, config, _ = scored
    store = RolloutStore(root / "out" / "rollouts")
    before = {f.name: f.stat().st_mtime_ns for f in store.files()}
    score_store(config)
    assert {f.name: f.stat().st_mtime_ns for f in store.files()} == before
    other = config.model_copy(update={"weighting": config.weighting.model_copy(update={"name": "difference"})})
    with pytest.raises(VcrdError, match="scored with another judge, rule"):
        score_store(other)
    assert {f.name: f.stat().st_mtime_ns for f in store.files()} == before
    assert main(["score", str(root / "run.yaml"), "--set", "weighting.name=student_only", "--overwrite"]) == 0
    assert "scores in" in capsys.readouterr().out
    summary = json.loads((store.root / "score-summary.json").read_text())
    assert summary["streams"]["student_prefix"]["rule"] == "student_only"
    weights = store.read()["weights"].to_pylist()
    r_s = store.read()["r_s"].to_pylist()
    pairs = [(w, r) for ws, rs in zip(weights, r_s, strict=True) for w, r in zip(ws, rs, strict=True)]
    assert all(w == pytest.approx(r, abs=1e-6) for w, r in pairs)  # student_only: w = r_s


def test_score_refuses_incomplete_store(tmp_path: Path, scored: tuple[Path, Any, dict[str, Any]]) -> None:
    _, config, _ = scored
    cfg = config.model_copy(update={"rollouts": config.rollouts.model_copy(update={"store": str(tmp_path / "no")})})
    with pytest.raises(VcrdError, match="not a rollout store"):
        score_store(cfg)


def test_the_scored_store_is_what_analyze_reads(scored: tuple[Path, Any, dict[str, Any]], capsys) -> None:
    root, _, summary = scored
    store = root / "out" / "rollouts"
    assert summary["histogram"] == "validity_hist.png" and (store / "validity_hist.png").stat().st_size > 0
    records = RolloutStore(store).score_records()
    assert len(records) == 20
    assert {r.stream for r in records} == {Stream.TEACHER_PREFIX, Stream.STUDENT_PREFIX}
    table = RolloutStore(store).read().to_pylist()
    first = next(r for r in records if r.id == f"teacher-{table[0]['prompt_index']}/s{table[0]['sample_index']}")
    assert list(first.r_s) == pytest.approx(table[0]["r_s"]) and list(first.weights) == pytest.approx(
        table[0]["weights"]
    )
    out = root / "analysis"
    assert main(["analyze", str(store), "--out", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["streams"]["teacher_prefix"]["n_records"] == 10
    assert stats["streams"]["all"]["n_points"] == sum(len(r.r_s) for r in records)
    assert summary["validity"]["streams"]["all"]["n_points"] == stats["streams"]["all"]["n_points"]
    assert (out / "validity_hist.png").is_file()


@pytest.mark.slow
def test_stored_prm_scores_equal_direct_recomputation(tmp_path: Path) -> None:
    """prm_value_head in both streams, greedy proposals: every stored proposal, score and weight equals
    score_batch on that rollout alone (tree scoring, the judge's own prompt format, one row at a time)."""
    from tests.plugins.judges.test_prm import CHARS, SPECIALS, make_tokenizer, write_checkpoint

    prm = write_checkpoint(tmp_path / "prm", "value_head")
    policy = [*SPECIALS, *CHARS]
    for name, seed, hidden in (("teacher", 0, 128), ("student", 1, 64)):
        save_tiny_model(tmp_path / name, seed=seed, hidden_size=hidden, vocab_size=len(policy))
        make_tokenizer(policy).save_pretrained(tmp_path / name)  # the PRM's vocabulary minus <extra_0>
    write_jsonl(tmp_path / "p.jsonl", [{"question": f"{i}+{i}="} for i in range(3)])
    cfg = {
        "seed": 3,
        "models": {
            "teacher": {"path": str(tmp_path / "teacher"), "dtype": "float32"},
            "student": {"path": str(tmp_path / "student"), "dtype": "float32"},
        },
        "data": {"train": str(tmp_path / "p.jsonl"), "prompt_field": "question", "template": "plain"},
        "rollouts": {"generator": {"name": "hf"}, "max_new_tokens": 6, "chunk_size": 2},
        "proposals": {"teacher": "greedy", "student": "greedy"},
        "judge": {"name": "prm_value_head", "params": {"path": str(prm), "branch_suffix": "\n"}},
        "weighting": {"name": "ratio"},
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    config = load_config(tmp_path / "run.yaml")
    generate_rollouts(config)
    score_store(config, batch_size=2)

    judge_params = {"path": str(prm), "branch_suffix": "\n"}
    for row, direct, span, _, _ in _recomputed(tmp_path, "prm_value_head", judge_params, 6, proposal="greedy"):
        assert row["proposals"] == direct.proposals[0, span].tolist()
        assert row["same_token"] == direct.same_token[0, span].tolist()
        for key in ("r_s", "r_t", "weights"):
            expected = getattr(direct, key)[0, span].float()
            torch.testing.assert_close(torch.tensor(row[key]), expected, atol=1e-5, rtol=1e-4, msg=key)


def test_auto_batch_size_bounds_one_models_logits() -> None:
    from vcrd_core.rollouts.scoring import AUTO_BATCH_ELEMENTS, auto_batch_size

    assert auto_batch_size(18, 48) == 256  # the demo's toy vocabulary: as many as allowed
    assert auto_batch_size(152_064, 1024) == 1  # Qwen2.5-7B's lm_head at 1,024 tokens: one rollout at a time
    b = auto_batch_size(151_936, 128)
    assert b == 6 and b * 128 * 151_936 <= AUTO_BATCH_ELEMENTS < (b + 1) * 128 * 151_936
