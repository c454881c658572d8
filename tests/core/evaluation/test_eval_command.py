"""``vcrd eval`` end to end on a tiny random model (the real ``hf`` generator, greedy): records and summary
written, a table printed; bad input one line with exit code 2; the ``evaluate`` API with its hook."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from tests.conftest import run_vcrd
from tests.rollout_helpers import save_tiny_model, write_jsonl
from vcrd_core import create, hookimpl
from vcrd_core.config.loader import load_config
from vcrd_core.errors import ConfigError
from vcrd_core.evaluation.run import evaluate, flat_results, run_evaluation
from vcrd_core.rollouts.generator import GeneratorContext
from vcrd_core.runs.preflight import load_tokenizer


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "m", hidden_size=64, layers=1)


def _config(tmp_path: Path, model: Path, evaluators: list[dict[str, Any]]) -> Path:
    data = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "1+1="}])
    config = {
        "models": {
            "teacher": {"path": str(model), "dtype": "float32"},
            "student": {"path": str(model), "dtype": "float32"},
        },
        "data": {"train": str(data)},
        "weighting": {"name": "constant"},
        "rollouts": {"generator": {"name": "hf", "params": {"device": "cpu"}}},
        "evaluation": {"evaluators": evaluators, "max_new_tokens": 4},
        "output": {"dir": str(tmp_path / "run")},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _exact(data: Path, **extra: Any) -> dict[str, Any]:
    dataset = {"name": "toy", "path": str(data), "prompt_field": "question", **extra}
    return {"name": "exact", "params": {"datasets": [dataset], "extract": "vcrd_arithmetic.grammar:final_answer"}}


@pytest.mark.slow
def test_vcrd_eval_writes_records_and_summary(tmp_path: Path, model: Path) -> None:
    rows = [{"question": f"{i}+1=", "answer": str(i + 1)} for i in range(5)]
    toy = write_jsonl(tmp_path / "toy.jsonl", rows)
    math = write_jsonl(tmp_path / "math.jsonl", [{"problem": "1/2 = ?", "solution": "\\frac12"}])
    math_ev = {
        "name": "math",
        "params": {
            "datasets": [{"name": "tiny", "path": str(math), "prompt_field": "problem", "answer_field": "solution"}],
            "template": "plain",
        },
    }
    config = _config(tmp_path, model, [_exact(toy), math_ev])
    result = run_vcrd("eval", str(config), "--model", "teacher")
    assert result.returncode == 0, result.stderr
    assert "evaluation" in result.stdout and "toy" in result.stdout and "pass@1" in result.stdout
    out = tmp_path / "run" / "eval" / "teacher"
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["evaluator"], r["dataset"], r["index"]) for r in records] == [
        *(("exact", "toy", i) for i in range(5)),
        ("math", "tiny", 0),
    ]
    first = records[0]
    assert first["prompt"] == "0+1=" and first["reference"] == "1"
    assert set(first) >= {"output", "extracted", "score", "correct", "error", "finish_reason"}
    summary = json.loads((out / "summary.json").read_text())
    toy_result = summary["evaluators"]["exact"]
    assert toy_result["datasets"]["toy"]["n"] == 5
    assert toy_result["sampling"]["temperature"] == 0.0  # greedy by default
    assert toy_result["datasets"]["toy"]["pass@1"] == sum(r["score"] for r in records[:5]) / 5
    assert summary["model"]["label"] == "teacher"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"path": "missing.jsonl"}, "dataset 'toy': data file '{tmp}/missing.jsonl' does not exist"),
        ({"prompt_field": "text"}, "has no field 'text' (prompt_field); its rows have: question, answer"),
        ({"answer_field": "gold"}, "has no field 'gold' (answer_field); its rows have: question, answer"),
    ],
)
def test_bad_datasets_are_one_line_before_the_model_loads(
    tmp_path: Path, model: Path, change: dict[str, str], message: str
) -> None:
    toy = write_jsonl(tmp_path / "toy.jsonl", [{"question": "1+1=", "answer": "2"}])
    if "path" in change:
        change = {"path": str(tmp_path / change["path"])}
    config = load_config(_config(tmp_path, model, [_exact(toy, **change)]))
    with pytest.raises(ConfigError, match=r"^evaluation\.evaluators\.0: ") as err:
        run_evaluation(config, model="student", console=Console(quiet=True))
    assert message.format(tmp=tmp_path) in str(err.value)
    assert not (tmp_path / "run").exists()


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, model: Path) -> None:
    config = _config(tmp_path, model, [_exact(tmp_path / "nope.jsonl")])
    result = run_vcrd("eval", str(config), "--model", str(tmp_path / "no-model"))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: --model: '{tmp_path / 'no-model'}' is not an HF-format model directory (no config.json)"
    )


def test_evaluate_api_calls_the_evaluation_hook(tmp_path: Path, model: Path, register_plugin: Any) -> None:
    seen: list[tuple[int, dict[str, float]]] = []

    class Logger:
        @hookimpl
        def vcrd_on_evaluation_end(self, step: int, results: dict[str, float]) -> None:
            seen.append((step, results))

    register_plugin(Logger(), "test-eval-logger")
    toy = write_jsonl(tmp_path / "toy.jsonl", [{"question": "1+1=", "answer": "2"}])
    evaluator = create("evaluators", "exact", _exact(toy)["params"])
    generator = create("generators", "hf", {"device": "cpu"})
    tokenizer = load_tokenizer(str(model), "model")
    generator.load(GeneratorContext(str(model), tokenizer, str(model), len(tokenizer), "float32"))
    summary = evaluate(generator, tokenizer, [evaluator], max_new_tokens=3, step=7, console=Console(quiet=True))
    assert seen == [(7, flat_results(summary))]
    assert set(seen[0][1]) == {"exact/toy/pass@1", "exact/average"}
