"""``vcrd prm label | train | calibrate`` on the toy task: Monte-Carlo labels of a real rollout store, a value-head
PRM trained on them that ``prm_value_head`` loads (tree-scored values = its own per-prefix values), its Brier score
against the constant predictor, and the calibration report against a plain numpy computation."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from vcrd_arithmetic.char_tokenizer import build_char_tokenizer
from vcrd_arithmetic.grammar import is_complete, is_valid_prefix
from vcrd_arithmetic.task import build_task

from tests.conftest import run_vcrd
from tests.core.training.helpers import save_model
from vcrd_core import create
from vcrd_core.config.loader import load_config
from vcrd_core.judging.calibration import fit_temperature_to_logits
from vcrd_core.judging.judge import JudgeContext
from vcrd_core.prm.calibrate import judge_predictions, labelled_batches
from vcrd_core.prm.labels import read_labels
from vcrd_core.prm.train import ValueHeadPrm, predict, render_prompt, sequences_of
from vcrd_core.rollouts.run import generate_rollouts
from vcrd_core.rollouts.store import RolloutStore
from vcrd_core.runs.preflight import load_tokenizer

K = 8
PROMPTS = 400
#: The stated margin: the learned PRM's Brier skill over the constant predictor on the held-out labels.
MIN_SKILL = 0.04


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("prm")
    build_task(root / "task")
    save_model(root / "teacher", 32, seed=0)
    save_model(root / "student", 16, seed=1)
    lines = (root / "task" / "distill.jsonl").read_text().splitlines()[:PROMPTS]
    (root / "p.jsonl").write_text("\n".join(lines) + "\n")
    cfg = {
        "seed": 0,
        "models": {
            "teacher": {"path": str(root / "teacher"), "dtype": "float32"},
            "student": {"path": str(root / "student"), "dtype": "float32"},
        },
        "data": {
            "train": str(root / "p.jsonl"),
            "template": "plain",
            "answer_field": "answer",
            "max_prompt_length": 16,
            "max_length": 48,
        },
        "rollouts": {  # noisy rule-based rollouts: valid and invalid prefixes, as a real student writes them
            "generator": {"name": "arithmetic_solver", "params": {"error_rate": 0.08}},
            "max_new_tokens": 32,
            "chunk_size": 100,
            "store": str(root / "store"),
        },
        "judge": {
            "name": "mc_value",
            "params": {
                "samples": K,
                "max_new_tokens": 32,
                "generator": {"name": "arithmetic_solver", "params": {"error_rate": 0.03}},
                "evaluator": {"name": "exact", "params": {"extract": "vcrd_arithmetic.grammar:final_answer"}},
            },
        },
        "weighting": {"name": "ratio"},
        "output": {"dir": str(root / "out")},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    generate_rollouts(load_config(root / "run.yaml"))
    label = run_vcrd("prm", "label", str(root / "run.yaml"), "--out", str(root / "labels"), "--test", "0.3")
    assert label.returncode == 0, label.stderr[-3000:]
    train = run_vcrd(
        "prm", "train", "--labels", str(root / "labels"), "--base", str(root / "teacher"), "--out", str(root / "prm"),
        "--prompt-template", "{problem}", "--epochs", "30", "--learning-rate", "2e-3", "--batch-size", "8",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    return {"root": root, "label_out": label.stdout, "info": json.loads((root / "prm" / "vcrd-prm.json").read_text())}


def test_labels_hold_one_row_per_response_token_with_its_share_and_smoothed_value(pipeline: dict[str, Any]) -> None:
    root = pipeline["root"]
    table = read_labels(root / "labels")
    store = RolloutStore(root / "store").read()
    assert table.num_rows == sum(len(r) for r in store["response_token_ids"].to_pylist())
    rows = table.to_pylist()
    for r in rows:
        assert r["samples"] == K and 0 <= r["successes"] <= K
        assert r["label"] == pytest.approx(r["successes"] / K)
        assert r["value"] == pytest.approx((r["successes"] + 1) / (K + 2))
    by_prompt: dict[int, set[str]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_index"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_prompt.values())  # a prompt's rollouts are in one split
    splits = {s for v in by_prompt.values() for s in v}
    assert splits == {"train", "validation", "test"}
    labels = np.array([r["label"] for r in rows])
    assert 0.2 < labels.mean() < 0.9 and labels.std() > 0.2  # both valid and hopeless prefixes


def test_an_interrupted_labelling_resumes_without_gaps_or_duplicates(pipeline: dict[str, Any]) -> None:
    root = pipeline["root"]
    copy = root / "labels-resumed"
    shutil.copytree(root / "labels", copy)
    parts = sorted((copy / "data").glob("*.parquet"))
    parts[1].unlink()  # as if the run died before this part
    parts[-1].unlink()
    again = run_vcrd("prm", "label", str(root / "run.yaml"), "--out", str(copy), "--test", "0.3")
    assert again.returncode == 0, again.stderr[-2000:]
    assert read_labels(copy).to_pylist() == read_labels(root / "labels").to_pylist()
    other = run_vcrd("prm", "label", str(root / "run.yaml"), "--out", str(copy), "--test", "0.25")
    assert other.returncode != 0 and "another judge, store, seed or split" in other.stderr
    assert "Traceback" not in other.stderr


def _saved_prm(prm_dir: Path) -> ValueHeadPrm:
    """The saved body and head, loaded by hand (not through the judge)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    state = load_file(str(prm_dir / "model.safetensors"))
    body = AutoModel.from_config(AutoConfig.from_pretrained(prm_dir))
    body.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    own = ValueHeadPrm(body.eval(), body.config.hidden_size)
    own.v_head.summary.weight.data = state["v_head.summary.weight"]
    own.v_head.summary.bias.data = state["v_head.summary.bias"]
    return own


def test_the_trained_prm_loads_through_prm_value_head_and_tree_scoring_equals_its_own_values(
    pipeline: dict[str, Any],
) -> None:
    root = pipeline["root"]
    prm_dir = root / "prm"
    tok = load_tokenizer(str(root / "teacher"), "x")
    judge = create("judges", "prm_value_head", {"path": str(prm_dir), "prompt_template": "{problem}"})
    judge.load(JudgeContext(tokenizer=tok, vocab_size=len(tok)))

    # its own values: the saved body and head, one plain forward per prefix
    own = _saved_prm(prm_dir)

    table = read_labels(root / "labels", "test")
    batches = labelled_batches(table, 0, 8)[:3]
    tree = judge_predictions(judge, batches, None, torch.device("cpu"))
    direct = []
    for batch, mask, _ in batches:
        for b, t in mask.nonzero().tolist():
            problem = batch.examples[b].prompt
            n_prompt = int(batch.prompt_lengths[b])
            prefix = batch.input_ids[b, n_prompt : t + 1].tolist()
            ids = torch.tensor([render_prompt("{problem}", tok, problem) + prefix])
            with torch.no_grad():
                z = own.point_logits(ids, torch.ones_like(ids), torch.tensor([0]), torch.tensor([ids.shape[1] - 1]))
            direct.append(torch.sigmoid(z).item())
    assert len(direct) == len(tree) > 20
    np.testing.assert_allclose(tree, direct, rtol=0, atol=1e-5)


def test_the_learned_prm_beats_the_constant_predictor_and_the_report_matches_numpy(pipeline: dict[str, Any]) -> None:
    root = pipeline["root"]
    out = root / "calibration"
    prm = "learned PRM={name: prm_value_head, params: {path: " + str(root / "prm") + ", prompt_template: '{problem}'}}"
    result = run_vcrd(
        "prm", "calibrate", str(root / "run.yaml"), "--labels", str(root / "labels"), "--out", str(out),
        "--judge", "oracle=oracle", "--judge", "teacher likelihood=teacher_likelihood",
        "--judge", prm,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "calibration.json").read_text())
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| learned PRM |" in (out / "calibration.md").read_text()
    labels = np.array(read_labels(root / "labels", "test")["label"].to_pylist())
    for s in report["judges"].values():
        assert s["n"] == report["points"]
        assert s["mean_label"] == pytest.approx(labels.mean())
    learned = report["judges"]["learned PRM"]
    constant = float(np.mean((labels.mean() - labels) ** 2))
    assert learned["brier_constant"] == pytest.approx(constant)
    assert learned["brier"] < constant * (1 - MIN_SKILL), learned
    # the oracle's 0.9 / 0.1 scores, recomputed in numpy from the labelled prefixes' validity
    tok = load_tokenizer(str(root / "teacher"), "x")
    test_rows = sorted(
        read_labels(root / "labels", "test").to_pylist(),
        key=lambda r: (r["role"], r["prompt_index"], r["sample_index"], r["position"]),
    )  # the report's order: rollouts in order, points in order
    preds_list = []
    for r in test_rows:
        prefix = r["response_token_ids"][: r["position"] + 1]
        text = tok.decode(prefix, skip_special_tokens=True)
        ended = prefix[-1] == tok.eos_token_id
        valid = is_complete(r["problem"], text) if ended else is_valid_prefix(r["problem"], text)
        preds_list.append(float(np.float32(0.9 if valid else 0.1)))  # the judge scores in float32
    preds = np.array(preds_list)
    ordered = np.array([r["label"] for r in test_rows])
    assert report["judges"]["oracle"]["brier"] == pytest.approx(float(np.mean((preds - ordered) ** 2)), rel=1e-9)
    edges = np.linspace(0, 1, 11)
    idx = np.clip(np.searchsorted(edges, preds, side="right") - 1, 0, 9)
    ece = sum(
        (idx == b).sum() / len(preds) * abs(preds[idx == b].mean() - ordered[idx == b].mean())
        for b in range(10)
        if (idx == b).any()
    )
    assert report["judges"]["oracle"]["ece"] == pytest.approx(ece, rel=1e-9)
    assert not math.isnan(report["judges"]["teacher likelihood"]["brier"])


def test_training_records_its_numbers_and_the_temperature_is_folded_into_the_head(pipeline: dict[str, Any]) -> None:
    info = pipeline["info"]
    root = pipeline["root"]
    assert info["train_points"] > 1000 and info["validation_points"] > 100
    assert info["temperature"] > 0 and info["prompt_template"] == "{problem}"
    # the saved head, reloaded, on the validation split: its Brier score is the recorded scaled one, and a
    # temperature fitted again to its logits is 1 (the fitted T is inside the saved head)
    own = _saved_prm(root / "prm")
    tok = load_tokenizer(str(root / "teacher"), "x")
    seqs = sequences_of(read_labels(root / "labels", "validation"), tok, "{problem}")
    with torch.no_grad():
        logits, targets = predict(own, seqs, int(tok.pad_token_id), 16)
    assert len(targets) == info["validation_points"]
    probs = 1 / (1 + np.exp(-np.array(logits, dtype=np.float64)))
    assert float(np.mean((probs - np.array(targets)) ** 2)) == pytest.approx(info["validation_brier_scaled"], abs=1e-6)
    assert fit_temperature_to_logits(logits, targets) == pytest.approx(1.0, rel=1e-3)
    assert info["temperature"] != pytest.approx(1.0, abs=1e-3)  # so the check above could fail


def test_bad_training_and_report_arguments_are_one_line_before_any_work(pipeline: dict[str, Any]) -> None:
    root = pipeline["root"]
    small = save_model(root / "small-vocab", 16, seed=2, vocab=12)  # embeds fewer ids than the labels hold
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = root / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=17, n_embd=16, n_layer=1, n_head=2, n_positions=64)).save_pretrained(gpt2)
    build_char_tokenizer().save_pretrained(gpt2)
    template = ["--prompt-template", "{problem}"]
    cases = [
        (["--base", str(small), *template], "embeds 12 token ids but the labelled responses hold id"),
        (["--base", str(gpt2), *template], "its body is 'transformer'"),
        (["--base", str(small), "--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
        (["--base", str(root / "teacher")], "the tokenizer cannot encode the rendered prompt"),  # '\n': not a char
    ]
    for i, (extra, message) in enumerate(cases):
        out = root / f"bad-{i}"
        result = run_vcrd("prm", "train", "--labels", str(root / "labels"), "--out", str(out), *extra)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert not (out / "model.safetensors").exists()
    bins = run_vcrd(
        "prm", "calibrate", str(root / "run.yaml"), "--labels", str(root / "labels"), "--out", str(root / "c0"),
        "--judge", "oracle=oracle", "--bins", "0",
    )  # fmt: skip
    assert bins.returncode == 2 and "--bins: expected an integer >= 1, got 0" in bins.stderr
    assert not (root / "c0").exists()
    twice = run_vcrd(
        "prm", "calibrate", str(root / "run.yaml"), "--labels", str(root / "labels"), "--out", str(root / "c1"),
        "--judge", "a=oracle", "--judge", "a=teacher_likelihood",
    )  # fmt: skip
    assert twice.returncode != 0 and "--judge a: this label is given twice" in twice.stderr
    assert "Traceback" not in twice.stderr and not (root / "c1").exists()
