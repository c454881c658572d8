"""Prompt datasets: JSONL, Parquet or a local ``datasets`` directory, read through the ``datasets`` library.

A config's ``data`` section names the file, the field mapping (prompt, optional reference answer,
optional tests), how prompts are rendered (:data:`TEMPLATES`), ``num_prompts`` and what happens to
prompts longer than ``max_prompt_length`` tokens (dropped and counted, or the run refused). Every problem
is one :class:`~vcrd_core.errors.VcrdError` line naming the file and the line (JSONL) or row (Parquet,
``datasets`` directories) where it is.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vcrd_core.data.examples import Example
from vcrd_core.errors import ConfigError, VcrdError, last_line

#: Qwen2.5-Math's chain-of-thought system prompt (the format the paper evaluates with).
QWEN25_MATH_COT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)


def _chat(system: str | None) -> Callable[[Any, str], str]:
    def render(tokenizer: Any, prompt: str) -> str:
        if not getattr(tokenizer, "chat_template", None):
            raise VcrdError(
                "data.template: the tokenizer has no chat template; use template: plain (the prompt text as it "
                "is) or a tokenizer that has one"
            )
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return render


def _plain(tokenizer: Any, prompt: str) -> str:
    return prompt


#: Named prompt templates: ``template(tokenizer, prompt_text) -> rendered text``.
TEMPLATES: dict[str, Callable[[Any, str], str]] = {
    "chat": _chat(None),
    "qwen25_math_cot": _chat(QWEN25_MATH_COT_SYSTEM),
    "plain": _plain,
}


def render_prompt(tokenizer: Any, template: str, prompt: str) -> tuple[str, list[int]]:
    """``prompt`` rendered with ``template`` and its token ids, as every stage (rollouts, SFT, evaluation) feeds
    it to a model: special tokens (BOS) are added only for ``plain``, since a chat template writes its own."""
    text = TEMPLATES[template](tokenizer, prompt)
    return text, list(tokenizer(text, add_special_tokens=template == "plain")["input_ids"])


@dataclass
class Prompt:
    """One prompt: ``index`` is its row in the source (0-based; the store's ``prompt_index``)."""

    index: int
    text: str
    rendered: str
    token_ids: list[int]
    answer: Any = None
    tests: Any = None
    fields: dict[str, Any] = field(default_factory=dict)

    def example(self) -> Example:
        """What judges and later stages see of this prompt (:class:`~vcrd_core.data.examples.Example`)."""
        return Example(str(self.index), self.text, self.answer, self.tests, self.fields)


@dataclass
class PromptSet:
    """The prompts of a run and what was left out."""

    prompts: list[Prompt]
    source: str
    rows: int  # rows read (after num_prompts)
    dropped: list[int] = field(default_factory=list)  # row indices over max_prompt_length

    @property
    def token_ids(self) -> list[list[int]]:
        return [p.token_ids for p in self.prompts]


def source_kind(path: str | Path) -> str:
    """``json``, ``parquet`` or ``disk`` (a ``save_to_disk`` directory), from the path alone."""
    p = Path(path)
    if p.is_dir():
        return "disk"
    name = p.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(JSON_SUFFIXES):
        return "json"
    raise VcrdError(f"{path}: unknown prompt file type; expected .jsonl, .json, .parquet or a datasets directory")


def source_sha256(path: str | Path) -> str:
    """The sha256 of a prompt file, or of every file of a ``datasets`` directory (names and contents)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with f.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _json_line_numbers(path: Path) -> list[int]:
    """The 1-based line number of every record (non-blank line) of a JSON Lines file."""
    with path.open("rb") as f:
        return [n for n, line in enumerate(f, 1) if line.strip()]


def _find_bad_json_line(path: Path) -> str | None:
    """The first line of a JSON Lines file that is not a JSON object, as ``file:line: reason``."""
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    return f"{path}:{n}: not valid JSON ({exc.msg})"
                if not isinstance(record, dict):
                    return f"{path}:{n}: expected a JSON object, got {type(record).__name__}"
    except UnicodeDecodeError as exc:
        return f"{path}: not UTF-8 text (byte {exc.start})"
    return None


def load_rows(path: str | Path) -> Any:
    """The rows of a prompt source as a ``datasets.Dataset`` (read in memory; no cache is left behind)."""
    import datasets

    p = Path(path)
    if not p.exists():
        raise VcrdError(f"prompt file '{path}' does not exist")
    kind = source_kind(p)
    datasets.disable_progress_bars()
    if kind == "disk":
        try:
            loaded = datasets.load_from_disk(str(p))
        except Exception as exc:  # datasets raises FileNotFoundError / ValueError for non-dataset dirs
            raise VcrdError(f"{path}: not a datasets directory (save_to_disk): {last_line(exc)}") from None
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise VcrdError(f"{path}: a DatasetDict without a 'train' split (splits: {', '.join(loaded)})")
            loaded = loaded["train"]
        return loaded
    if p.stat().st_size == 0:
        raise VcrdError(f"prompt file '{path}' is empty")
    if kind == "json":
        bad = _find_bad_json_line(p)
        if bad:
            raise VcrdError(bad)
        if not _json_line_numbers(p):
            raise VcrdError(f"prompt file '{path}' holds no record")
    with tempfile.TemporaryDirectory(prefix="vcrd-datasets-") as cache:
        try:
            return datasets.load_dataset(kind, data_files=str(p), split="train", cache_dir=cache, keep_in_memory=True)
        except Exception as exc:  # pyarrow / datasets errors for mixed types, broken Parquet
            if "corresponds to no data" in str(exc):  # datasets' words for a file without rows
                raise VcrdError(f"prompt file '{path}' holds no record") from None
            raise VcrdError(f"{path}: cannot be read as {kind}: {last_line(exc)}") from None


def _where(path: str | Path, kind: str, row: int, lines: list[int] | None) -> str:
    if kind == "json" and lines is not None and row < len(lines):
        return f"{path}:{lines[row]}"
    return f"{path}: row {row}"


def check_fields(path: str | Path, columns: list[str], data: Any) -> None:
    """Refuse a dataset without the mapped fields, naming the config key and the fields it has."""
    for key in ("prompt_field", "answer_field", "tests_field"):
        name = getattr(data, key)
        if name is not None and name not in columns:
            raise ConfigError(
                f"data.{key}", f"{path} has no field '{name}'; its rows have: {', '.join(columns) or 'no field'}"
            )


def load_prompts(path: str | Path, data: Any, tokenizer: Any) -> PromptSet:
    """Read, render and tokenize the prompts of ``path`` as ``data`` (a :class:`DataConfig`) says.

    Prompts over ``data.max_prompt_length`` tokens are dropped and counted (``overlong: drop``) or refused
    (``overlong: refuse``); a source with no usable prompt is refused.
    """
    rows = load_rows(path)
    kind = source_kind(path)
    if len(rows) == 0:
        raise VcrdError(f"prompt file '{path}' holds no record")
    check_fields(path, list(rows.column_names), data)
    if data.num_prompts is not None and data.num_prompts < len(rows):
        rows = rows.select(range(data.num_prompts))
    lines = _json_line_numbers(Path(path)) if kind == "json" and Path(path).is_file() else None
    prompts: list[Prompt] = []
    dropped: list[int] = []
    used = {data.prompt_field, data.answer_field, data.tests_field}
    for i, row in enumerate(rows):
        text = row[data.prompt_field]
        if not isinstance(text, str):
            raise VcrdError(
                f"{_where(path, kind, i, lines)}: field '{data.prompt_field}' holds "
                f"{'null' if text is None else type(text).__name__}, expected the prompt text"
            )
        if not text.strip():
            raise VcrdError(f"{_where(path, kind, i, lines)}: field '{data.prompt_field}' is empty")
        rendered, ids = render_prompt(tokenizer, data.template, text)
        if len(ids) > data.max_prompt_length:
            if data.overlong == "refuse":
                raise VcrdError(
                    f"{_where(path, kind, i, lines)}: prompt of {len(ids)} tokens is over data.max_prompt_length "
                    f"({data.max_prompt_length}); raise it, or set data.overlong: drop to drop such prompts"
                )
            dropped.append(i)
            continue
        prompts.append(
            Prompt(
                index=i,
                text=text,
                rendered=rendered,
                token_ids=ids,
                answer=row[data.answer_field] if data.answer_field else None,
                tests=row[data.tests_field] if data.tests_field else None,
                fields={k: v for k, v in row.items() if k not in used},
            )
        )
    if not prompts:
        raise VcrdError(
            f"{path}: every prompt ({len(rows)}) is over data.max_prompt_length ({data.max_prompt_length} tokens); "
            "raise it or shorten the prompts"
        )
    return PromptSet(prompts=prompts, source=str(path), rows=len(rows), dropped=dropped)


def check_source(path: str | Path, field: str, where: str) -> None:
    """Run-time check of a Parquet file or ``datasets`` directory: readable, not empty, has ``field``."""
    try:
        rows = load_rows(path)
    except VcrdError as exc:
        raise ConfigError(where, str(exc)) from None
    if len(rows) == 0:
        raise ConfigError(where, f"prompt file '{path}' holds no record")
    if field not in rows.column_names:
        raise ConfigError(
            where, f"{path} has no field '{field}' (data.prompt_field); its rows have: {', '.join(rows.column_names)}"
        )
