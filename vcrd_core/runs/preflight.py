"""Run-time checks at the start of a run, before any model weight is loaded (DESIGN.md §2.2).

``vcrd config validate`` is static; these checks touch the paths a config names: model directories,
the tokenizer (teacher and student must share one: DESIGN.md §2.6), prompt files, the judges'
checkpoints (through :meth:`vcrd_core.Judge.check`), the accelerate config and the output directory (an
existing run is never overwritten unless ``output.overwrite`` says so). Each failure is one
:class:`~vcrd_core.errors.ConfigError` at the YAML path that named the thing.

:func:`check_all` (``vcrd config check``) collects every problem, most fundamental first: models and the
tokenizer, then the prompt files (read and tokenized exactly as a run reads them), judges, the accelerate
config, and last the output directory. A check that needs what failed before it (the judges need the
tokenizer) is skipped rather than reported twice. :func:`preflight` (every run's start) raises the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vcrd_core.config.models import DataConfig, RunConfig
from vcrd_core.data.prompts import PromptSet, check_fields, check_source, load_prompts, load_rows
from vcrd_core.errors import ConfigError, VcrdError
from vcrd_core.judging.judge import Judge, JudgeContext
from vcrd_core.plan import RunPlan

#: Files that mark a directory as holding a vcrd run.
RUN_MARKERS = ("provenance.json", "config.yaml")


@dataclass
class Preflight:
    """What the checks found: the shared tokenizer and its real vocabulary size."""

    tokenizer: Any
    vocab_size: int


def _model_dir(path: str, where: str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(
            where, f"'{path}' is not a directory; a local HF-format model directory is needed (vcrd never downloads)"
        )
    if not (root / "config.json").is_file():
        raise ConfigError(where, f"'{path}' has no config.json; is it an HF-format model directory?")
    return root


#: ``tokenizer_class`` values that name no model-specific class.
GENERIC_TOKENIZER_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})


def load_tokenizer(path: str, where: str) -> Any:
    """The HF tokenizer saved in ``path`` (local files only), or a ConfigError at ``where``.

    A tokenizer saved with a generic ``tokenizer_class`` (a plain ``tokenizers`` tokenizer, such as the toy
    task's char-level one) is loaded as exactly that: transformers 5's ``AutoTokenizer`` would otherwise
    pick the class of the ``model_type`` in a ``config.json`` beside it (e.g. ``Qwen2Tokenizer``), which
    rebuilds the pipeline and adds its own special tokens.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config_file = Path(path) / "tokenizer_config.json"
    try:
        saved_class = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
        loader = PreTrainedTokenizerFast if saved_class in GENERIC_TOKENIZER_CLASSES else AutoTokenizer
        return loader.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises several types for a missing or broken tokenizer
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(where, f"no tokenizer could be loaded from '{path}': {reason}") from None


def check_same_vocabulary(run: Any, model: Any, label: str, where: str) -> None:
    """Refuse a model (``label``: teacher or student) whose tokenizer's vocabulary differs from the run's
    tokenizer: teacher and student must share one (cross-tokenizer distillation is out of scope)."""
    rv, mv = run.get_vocab(), model.get_vocab()
    if rv == mv:
        return
    for token in sorted(set(rv) | set(mv)):
        if rv.get(token) != mv.get(token):
            raise ConfigError(
                where,
                f"the {label}'s tokenizer differs from the run's (token {token!r}: run id {rv.get(token)}, "
                f"{label} id {mv.get(token)}; sizes {len(rv)} vs {len(mv)}); teacher and student must share a "
                "tokenizer (cross-tokenizer distillation is out of scope)",
            )


def check_prompts(path: str, field: str, where: str) -> None:
    """The prompt file exists and its first record is a JSON object with ``field`` holding a string."""
    file = Path(path)
    if not file.exists():
        raise ConfigError(where, f"prompt file '{path}' does not exist")
    if file.is_dir() or file.suffix.lower() == ".parquet":  # a datasets directory or Parquet: read it
        check_source(path, field, where)
        return
    if not file.is_file():
        raise ConfigError(where, f"prompt file '{path}' is not a file")
    try:
        with file.open(encoding="utf-8") as f:
            first = next(((n, text) for n, text in enumerate(f, 1) if text.strip()), None)
    except UnicodeDecodeError as exc:
        raise ConfigError(where, f"prompt file '{path}' is not UTF-8 text (byte {exc.start})") from None
    if first is None:
        raise ConfigError(where, f"prompt file '{path}' holds no record")
    number, line = first
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(where, f"{path}:{number}: not JSON Lines ({exc.msg})") from None
    if not isinstance(record, dict):
        raise ConfigError(where, f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    if field not in record:
        raise ConfigError(
            where, f"{path}:{number}: no field '{field}' (data.prompt_field); the record has: {', '.join(record)}"
        )
    if not isinstance(record[field], str):
        raise ConfigError(
            where, f"{path}:{number}: field '{field}' holds a {type(record[field]).__name__}, expected the prompt text"
        )


def _judges(config: RunConfig) -> dict[str, Judge]:
    """The run's judges by the YAML path they come from (the run plan's: only those a stream's rule reads)."""
    return {s.judge_path: s.judge for s in RunPlan.of(config).streams.values() if s.judge is not None}


@dataclass
class Check:
    """What :func:`check_all` found: every problem, in the order checked, the shared tokenizer (``preflight``,
    None when it could not be loaded) and the prompt files that were read in full, by YAML path."""

    problems: list[ConfigError]
    preflight: Preflight | None
    prompts: dict[str, PromptSet] = field(default_factory=dict)


def _as_config_error(exc: VcrdError, where: str) -> ConfigError:
    return exc if isinstance(exc, ConfigError) else ConfigError(where, str(exc))


def _read_prompts(path: str, data: DataConfig, tokenizer: Any, where: str) -> PromptSet | None:
    """Every record of a prompt file: tokenized with ``data``'s template and lengths as a run reads it when the
    tokenizer is there (:func:`~vcrd_core.data.prompts.load_prompts`), else read and its fields checked."""
    if tokenizer is not None:
        return load_prompts(path, data, tokenizer)
    rows = load_rows(path)
    if len(rows) == 0:
        raise ConfigError(where, f"prompt file '{path}' holds no record")
    check_fields(path, list(rows.column_names), data)
    return None


def check_all(config: RunConfig, *, read_prompts: bool = True, output_dir: bool = True) -> Check:
    """Every run-time check, each problem collected (none stops the others), most fundamental first: model
    directories and the tokenizer, the prompt files, the judges, the accelerate config, the output directory.

    ``read_prompts``: read every record of ``data.train`` and ``data.eval`` (``vcrd config check``); otherwise
    only the first record is checked (a run's start: the stage that uses the prompts reads them itself).
    ``data.eval`` needs only ``data.prompt_field``. ``output_dir``: check the output directory too (False for a
    command that checks its own: ``vcrd train``'s resume rules, the store of ``vcrd rollouts`` / ``vcrd score``).
    Loads tokenizers and checkpoint headers, never model weights.
    """
    problems: list[ConfigError] = []

    def attempt(where: str, check: Any, *args: Any) -> Any:
        try:
            return check(*args)
        except VcrdError as exc:
            problems.append(_as_config_error(exc, where))
            return None

    teacher_dir = attempt("models.teacher.path", _model_dir, config.models.teacher.path, "models.teacher.path")
    student_dir = attempt("models.student.path", _model_dir, config.models.student.path, "models.student.path")
    tokenizer = None
    tok_where = "models.tokenizer" if config.models.tokenizer else "models.student.path"
    tok_path = config.models.tokenizer or (str(student_dir) if student_dir is not None else None)
    if tok_path is not None:
        tokenizer = attempt(tok_where, load_tokenizer, tok_path, tok_where)
    if tokenizer is not None:
        for label, root in (("teacher", teacher_dir), ("student", student_dir)):
            if root is None or str(root) == tok_path:
                continue
            if any((root / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
                where = f"models.{label}.path"
                own = attempt(where, load_tokenizer, str(root), where)
                if own is not None:
                    attempt(where, check_same_vocabulary, tokenizer, own, label, where)

    prompts: dict[str, PromptSet] = {}
    files = [("data.train", config.data.train, config.data)]
    if config.data.eval:
        only_prompts = config.data.model_copy(update={"answer_field": None, "tests_field": None, "num_prompts": None})
        files.append(("data.eval", config.data.eval, only_prompts))
    for where, path, data in files:
        if not read_prompts:
            attempt(where, check_prompts, path, data.prompt_field, where)
            continue
        found = attempt(where, _read_prompts, path, data, tokenizer, where)
        if found is not None:
            prompts[where] = found

    if tokenizer is not None:
        context = JudgeContext.for_run(config, tokenizer=tokenizer, vocab_size=len(tokenizer))
        judges = attempt("judge", _judges, config) or {}
        for path, judge in judges.items():
            attempt(path, judge.check, context)
    if config.training.accelerate_config and not Path(config.training.accelerate_config).is_file():
        problems.append(
            ConfigError("training.accelerate_config", f"'{config.training.accelerate_config}' does not exist")
        )

    out = Path(config.output.dir)
    if not output_dir:
        pass
    elif out.exists() and not out.is_dir():
        problems.append(ConfigError("output.dir", f"'{out}' exists and is not a directory"))
    elif out.exists() and any((out / m).exists() for m in RUN_MARKERS) and not config.output.overwrite:
        problems.append(
            ConfigError(
                "output.dir", f"'{out}' already holds a run; choose another directory or set output.overwrite: true"
            )
        )
    found = Preflight(tokenizer=tokenizer, vocab_size=len(tokenizer)) if tokenizer is not None else None
    return Check(problems=problems, preflight=found, prompts=prompts)


def preflight(config: RunConfig, *, output_dir: bool = True) -> Preflight:
    """Every run-time check (:func:`check_all`, the prompt files' first records only); raises the first problem.
    Each command calls it once, at its start."""
    check = check_all(config, read_prompts=False, output_dir=output_dir)
    if check.problems:
        raise check.problems[0]
    assert check.preflight is not None
    return check.preflight
