"""Prompt datasets: JSONL, Parquet and ``datasets`` directories, field mapping, templates, limits, errors."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from tests.rollout_helpers import ascii_tokenizer, write_jsonl
from vcrd_core.config.models import DataConfig
from vcrd_core.data.prompts import QWEN25_MATH_COT_SYSTEM, load_prompts, source_sha256
from vcrd_core.errors import ConfigError, VcrdError

ROWS = [
    {"q": "1+2=", "a": "3", "t": ["assert 3"]},
    {"q": "2*3+4=", "a": "10", "t": ["assert 10"]},
    {"q": "9-8=", "a": "1", "t": []},
]


def data(**kw: object) -> DataConfig:
    settings: dict[str, object] = {"train": "unused", "prompt_field": "q", "template": "plain"}
    return DataConfig(**(settings | kw))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tok():
    return ascii_tokenizer()


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    jsonl = write_jsonl(tmp_path / "p.jsonl", ROWS)
    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "p.parquet"))
    ds.save_to_disk(str(tmp_path / "p_dir"))
    return {"jsonl": jsonl, "parquet": tmp_path / "p.parquet", "disk": tmp_path / "p_dir"}


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "disk"])
def test_every_source_kind_reads_the_same_prompts(sources: dict[str, Path], tok, kind: str) -> None:
    got = load_prompts(sources[kind], data(answer_field="a", tests_field="t"), tok)
    assert [p.text for p in got.prompts] == [r["q"] for r in ROWS]
    assert [p.answer for p in got.prompts] == [r["a"] for r in ROWS]
    assert [p.tests for p in got.prompts] == [r["t"] for r in ROWS]
    assert [p.index for p in got.prompts] == [0, 1, 2]
    assert got.prompts[0].token_ids == tok("1+2=")["input_ids"]


def test_templates(sources: dict[str, Path], tok) -> None:
    plain = load_prompts(sources["jsonl"], data(), tok).prompts[0]
    assert plain.rendered == "1+2="
    chat = load_prompts(sources["jsonl"], data(template="chat"), tok).prompts[0]
    assert chat.rendered == "<bos>user:1+2=\n<bos>assistant:"
    cot = load_prompts(sources["jsonl"], data(template="qwen25_math_cot"), tok).prompts[0]
    assert cot.rendered == f"<bos>system:{QWEN25_MATH_COT_SYSTEM}\n<bos>user:1+2=\n<bos>assistant:"
    assert cot.token_ids == tok(cot.rendered, add_special_tokens=False)["input_ids"]
    assert QWEN25_MATH_COT_SYSTEM == "Please reason step by step, and put your final answer within \\boxed{}."


def test_chat_template_missing_is_one_line(sources: dict[str, Path]) -> None:
    with pytest.raises(VcrdError, match="no chat template; use template: plain"):
        load_prompts(sources["jsonl"], data(template="chat"), ascii_tokenizer(chat_template=False))


def test_num_prompts_and_overlong_drop(tmp_path: Path, tok) -> None:
    rows = [{"q": "1+1="}, {"q": "1+1+1+1+1+1="}, {"q": "2="}, {"q": "3="}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    got = load_prompts(path, data(max_prompt_length=5, num_prompts=3), tok)
    assert got.rows == 3 and got.dropped == [1]
    assert [p.index for p in got.prompts] == [0, 2]


def test_overlong_refused_names_the_line(tmp_path: Path, tok) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", ["", {"q": "1="}, {"q": "1+1+1+1+1+1="}])
    with pytest.raises(VcrdError, match=r"p\.jsonl:3: prompt of 12 tokens is over data.max_prompt_length \(5\)"):
        load_prompts(path, data(max_prompt_length=5, overlong="refuse"), tok)


def test_every_prompt_over_the_limit(tmp_path: Path, tok) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"q": "1+1+1="}, {"q": "2+2+2="}])
    with pytest.raises(VcrdError, match=r"every prompt \(2\) is over data.max_prompt_length \(3 tokens\)"):
        load_prompts(path, data(max_prompt_length=3), tok)


def test_malformed_json_line(tmp_path: Path, tok) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"q": "1="}\n\n{"q": "2=",\n')
    with pytest.raises(VcrdError) as err:
        load_prompts(path, data(), tok)
    assert str(err.value).startswith(f"{path}:3: not valid JSON")
    assert "\n" not in str(err.value)


def test_non_object_json_line(tmp_path: Path, tok) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"q": "1="}, [1, 2]])
    with pytest.raises(VcrdError, match=r"p\.jsonl:2: expected a JSON object, got list"):
        load_prompts(path, data(), tok)


def test_null_prompt_names_line_and_row(tmp_path: Path, tok) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"q": "1="}, {"q": None}])
    with pytest.raises(VcrdError, match=r"p\.jsonl:2: field 'q' holds null"):
        load_prompts(path, data(), tok)
    datasets.Dataset.from_list([{"q": "1="}, {"q": None}]).to_parquet(str(tmp_path / "p.parquet"))
    with pytest.raises(VcrdError, match=r"p\.parquet: row 1: field 'q' holds null"):
        load_prompts(tmp_path / "p.parquet", data(), tok)


def test_wrong_field_names(sources: dict[str, Path], tok) -> None:
    for kind in ("jsonl", "parquet", "disk"):
        with pytest.raises(ConfigError, match=r"data.prompt_field: .* has no field 'prompt'; its rows have: q, a, t"):
            load_prompts(sources[kind], data().model_copy(update={"prompt_field": "prompt"}), tok)
    with pytest.raises(ConfigError, match=r"data.answer_field: .* has no field 'answer'"):
        load_prompts(sources["jsonl"], data(answer_field="answer"), tok)


def test_missing_and_empty(tmp_path: Path, tok) -> None:
    with pytest.raises(VcrdError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl", data(), tok)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(VcrdError, match="is empty"):
        load_prompts(tmp_path / "empty.jsonl", data(), tok)
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(VcrdError, match="holds no record"):
        load_prompts(tmp_path / "blank.jsonl", data(), tok)
    datasets.Dataset.from_dict({"q": []}).to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(VcrdError, match="holds no record"):
        load_prompts(tmp_path / "empty.parquet", data(), tok)
    (tmp_path / "p.csv").write_text("q\n1=\n")
    with pytest.raises(VcrdError, match="unknown prompt file type"):
        load_prompts(tmp_path / "p.csv", data(), tok)


def test_sha256_changes_with_content(sources: dict[str, Path], tmp_path: Path) -> None:
    a = source_sha256(sources["jsonl"])
    assert a == source_sha256(sources["jsonl"])
    write_jsonl(sources["jsonl"], [*ROWS, {"q": "5="}])
    assert source_sha256(sources["jsonl"]) != a
    assert len(source_sha256(sources["disk"])) == 64


def test_example_configs_still_validate() -> None:
    from tests.conftest import ROOT
    from vcrd_core.config.loader import load_config, validate_components

    for path in sorted((ROOT / "examples" / "configs").glob("*.yaml")):
        config = load_config(path)
        validate_components(config)
        assert config.data.template == "chat" and config.data.overlong == "drop"
