"""``vcrd config check``: every problem of a config's run-time checks, one line each, most fundamental first
(models and tokenizer, prompt files read in full as a run reads them, judges, output directory last); real
directories, tokenizers and prompt files, the CLI in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from vcrd_arithmetic.char_tokenizer import build_char_tokenizer

from tests.conftest import run_vcrd
from tests.tiny_models import tiny_qwen2_config
from vcrd_core.config.loader import load_config
from vcrd_core.errors import ConfigError
from vcrd_core.runs.preflight import check_all, preflight


def _model_dir(path: Path) -> Path:
    """A model directory as `save_pretrained` writes it, minus the weights (the checks never read them)."""
    tokenizer = build_char_tokenizer()
    tiny_qwen2_config(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _lines(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def run_files(tmp_path: Path) -> dict[str, Any]:
    prompts = _lines(tmp_path / "prompts.jsonl", [{"prompt": "2*3+4="}, {"prompt": "1-2+3="}, {"prompt": "5*5="}])
    return {
        "models": {
            "teacher": {"path": str(_model_dir(tmp_path / "teacher"))},
            "student": {"path": str(_model_dir(tmp_path / "student"))},
        },
        "data": {"train": str(prompts), "template": "plain"},
        "judge": {"name": "oracle"},
        "output": {"dir": str(tmp_path / "out")},
    }


def _errors(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    assert all(line.startswith("error: ") for line in lines), stderr
    return [line.removeprefix("error: ") for line in lines]


def test_a_ready_config_says_so_with_its_prompt_count(write_config, run_files) -> None:
    result = run_vcrd("config", "check", str(write_config(run_files)))
    assert result.returncode == 0, result.stderr
    assert "ready to run" in result.stdout and "17 ids" in result.stdout and "data.train: 3 prompts" in result.stdout
    assert result.stderr == ""


def test_a_malformed_record_after_the_first_is_reported_with_its_line(write_config, run_files) -> None:
    train = Path(run_files["data"]["train"])
    _lines(train, [{"prompt": "2*3="}, {"prompt": "1+1="}, '{"prompt": "3*3=", \n'])
    result = run_vcrd("config", "check", str(write_config(run_files)))
    assert result.returncode == 2
    [error] = _errors(result.stderr)
    assert error.startswith(f"data.train: {train}:3: not valid JSON (")
    assert "Traceback" not in result.stderr


def test_a_prompt_without_text_further_down_is_reported(write_config, run_files) -> None:
    train = Path(run_files["data"]["train"])
    _lines(train, [{"prompt": "2*3="}, {"prompt": None}])
    result = run_vcrd("config", "check", str(write_config(run_files)))
    assert result.returncode == 2
    assert _errors(result.stderr) == [f"data.train: {train}:2: field 'prompt' holds null, expected the prompt text"]


def test_every_problem_is_reported_most_fundamental_first(write_config, run_files, tmp_path: Path) -> None:
    out = Path(run_files["output"]["dir"])
    out.mkdir()
    (out / "provenance.json").write_text("{}")  # a run is there: reported last
    _lines(Path(run_files["data"]["train"]), [{"prompt": "2*3="}, "not json\n"])
    run_files["data"]["eval"] = str(tmp_path / "held-out.jsonl")  # missing
    run_files["models"]["teacher"]["path"] = str(tmp_path / "no-teacher")
    result = run_vcrd("config", "check", str(write_config(run_files)))
    assert result.returncode == 2
    errors = _errors(result.stderr)
    assert [e.split(":")[0] for e in errors] == ["models.teacher.path", "data.train", "data.eval", "output.dir"]
    assert "'" + str(tmp_path / "no-teacher") + "' is not a directory" in errors[0]
    assert "prompts.jsonl:2: not valid JSON" in errors[1]
    assert "held-out.jsonl' does not exist" in errors[2]
    assert "already holds a run" in errors[3]


def test_a_missing_student_skips_what_needs_its_tokenizer_but_still_reads_the_prompts(
    write_config, run_files, tmp_path: Path
) -> None:
    run_files["models"]["student"]["path"] = str(tmp_path / "gone")
    Path(run_files["data"]["train"]).write_text(json.dumps({"question": "2+2="}) + "\n")
    found = check_all(load_config(write_config(run_files)))
    assert [(p.path, p.message.split(";")[0]) for p in found.problems] == [
        ("models.student.path", f"'{tmp_path / 'gone'}' is not a directory"),
        ("data.prompt_field", f"{run_files['data']['train']} has no field 'prompt'"),
    ]
    assert found.preflight is None


def test_overlong_prompts_refused_as_the_run_would(write_config, run_files) -> None:
    run_files["data"] |= {"max_prompt_length": 4, "max_length": 8, "overlong": "refuse"}
    result = run_vcrd("config", "check", str(write_config(run_files)))
    assert result.returncode == 2
    [error] = _errors(result.stderr)
    assert (
        error.startswith("data.train: ")
        and "prompts.jsonl:1: prompt of 6 tokens is over data.max_prompt_length (4)" in error
    )


def test_an_invalid_config_is_the_one_problem_reported(write_config, run_files, tmp_path: Path) -> None:
    run_files["models"]["teacher"]["path"] = str(tmp_path / "no-teacher")
    run_files["data"]["max_prompt_length"] = 0
    result = run_vcrd("config", "check", str(write_config(run_files)))
    assert result.returncode == 2
    [error] = _errors(result.stderr)
    assert "data.max_prompt_length" in error


def test_preflight_raises_the_first_problem_models_before_the_output_directory(write_config, run_files) -> None:
    out = Path(run_files["output"]["dir"])
    out.mkdir()
    (out / "config.yaml").write_text("{}")
    run_files["models"]["student"]["path"] = str(out / "missing-student")
    with pytest.raises(ConfigError) as info:
        preflight(load_config(write_config(run_files)))
    assert info.value.path == "models.student.path"
