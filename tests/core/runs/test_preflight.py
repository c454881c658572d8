"""Run-time checks at run start: real directories, real tokenizers, real prompt files; no model weights."""

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
from vcrd_core.runs.preflight import preflight


def model_dir(root: Path, name: str, extra_tokens: list[str] | None = None) -> Path:
    """A model directory as `save_pretrained` writes it, minus the weights (preflight never reads them)."""
    path = root / name
    tokenizer = build_char_tokenizer()
    if extra_tokens:
        tokenizer.add_tokens(extra_tokens)
    tiny_qwen2_config(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def run_files(tmp_path: Path) -> dict[str, Any]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ("2*3+4=", "1-2+3=")) + "\n")
    return {
        "models": {
            "teacher": {"path": str(model_dir(tmp_path, "teacher"))},
            "student": {"path": str(model_dir(tmp_path, "student"))},
        },
        "data": {"train": str(prompts), "template": "plain"},  # the char tokenizer has no chat template
        "judge": {"name": "oracle"},
        "output": {"dir": str(tmp_path / "out")},
    }


def check(write_config, data: dict[str, Any]) -> Any:
    return preflight(load_config(write_config(data)))


def test_a_complete_run_passes_and_reports_the_shared_vocabulary(write_config, run_files) -> None:
    found = check(write_config, run_files)
    assert found.vocab_size == 17  # the char tokenizer as saved, not a Qwen2Tokenizer with extra tokens
    assert found.tokenizer.encode("2*3=6") == build_char_tokenizer().encode("2*3=6")


def test_missing_model_directory_is_refused_at_its_yaml_path(write_config, run_files, tmp_path: Path) -> None:
    run_files["models"]["teacher"]["path"] = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"models.teacher.path: '.*nope' is not a directory; a local HF-format"):
        check(write_config, run_files)


def test_teacher_and_student_with_different_tokenizers_are_refused(write_config, run_files, tmp_path: Path) -> None:
    run_files["models"]["teacher"]["path"] = str(model_dir(tmp_path, "other", extra_tokens=["/"]))
    with pytest.raises(ConfigError) as info:
        check(write_config, run_files)
    assert info.value.path == "models.teacher.path"
    assert "the teacher's tokenizer differs from the run's (token '/': run id None, teacher id 17" in str(info.value)
    assert "cross-tokenizer distillation is out of scope" in str(info.value)


def test_prompt_file_without_the_prompt_field_is_refused(write_config, run_files) -> None:
    Path(run_files["data"]["train"]).write_text(json.dumps({"question": "2+2="}) + "\n")
    with pytest.raises(
        ConfigError,
        match=r"data.train: .*prompts.jsonl:1: no field 'prompt' \(data.prompt_field\); the record has: question",
    ):
        check(write_config, run_files)


def test_missing_prompt_file_is_refused(write_config, run_files, tmp_path: Path) -> None:
    run_files["data"]["train"] = str(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match=r"data.train: prompt file '.*missing.jsonl' does not exist"):
        check(write_config, run_files)


def test_existing_run_is_not_overwritten_unless_asked(write_config, run_files) -> None:
    out = Path(run_files["output"]["dir"])
    out.mkdir()
    (out / "provenance.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"output.dir: '.*out' already holds a run"):
        check(write_config, run_files)
    assert (out / "provenance.json").read_text() == "{}"
    run_files["output"]["overwrite"] = True
    assert check(write_config, run_files).vocab_size == 17


def test_judge_checkpoint_is_checked_before_any_model_is_loaded(write_config, run_files, tmp_path: Path) -> None:
    run_files["judge"] = {"name": "prm_value_head", "params": {"path": str(tmp_path / "no-prm")}}
    with pytest.raises(ConfigError) as info:
        check(write_config, run_files)
    assert info.value.path == "judge"
    assert "no-prm" in info.value.message


def test_cli_check_reports_ready_or_one_line(write_config, run_files, tmp_path: Path) -> None:
    ok = run_vcrd("config", "check", str(write_config(run_files)))
    assert ok.returncode == 0, ok.stderr
    assert "ready to run" in ok.stdout and "17 ids" in ok.stdout
    run_files["models"]["student"]["path"] = str(tmp_path / "gone")
    bad = run_vcrd("config", "check", str(write_config(run_files, name="bad.yaml")))
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "models.student.path" in bad.stderr and "Traceback" not in bad.stderr
