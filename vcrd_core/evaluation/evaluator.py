"""The evaluator interface (the ``evaluators`` kind).

An evaluator names its datasets (``params.datasets``), says how their prompts are rendered (a template of
:data:`vcrd_core.data.prompts.TEMPLATES`) and grades one model output per problem. The runner
(:mod:`vcrd_core.evaluation.run`) generates the outputs through a generator plugin and writes one record
per sample; the evaluator only sees text. Creating one loads nothing; :meth:`Evaluator.check` runs the
cheap run-time checks (optional dependencies, a sandbox, an endpoint) before any model is loaded.

A grade is a :class:`Verdict`: ``score`` in [0, 1] (1 correct, 0 wrong; a pairwise tie is 0.5) or ``None``
when the output could not be graded (an unparseable judge verdict): such samples are counted and
reported, not averaged. The summary is the mean score (Pass@1 for greedy single samples) per dataset and
the average over datasets, as the paper's Tables 1–4 report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from vcrd_core.data.examples import Example
from vcrd_core.data.prompts import load_rows
from vcrd_core.errors import VcrdError
from vcrd_core.plugins.component import Component
from vcrd_core.plugins.kinds import EVALUATORS

Template = Literal["chat", "qwen25_math_cot", "plain"]


class EvalDataset(BaseModel):
    """One dataset of an evaluator: a JSONL/Parquet file or a ``datasets`` directory and its fields."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Its name in the summary (gsm8k, math500, humaneval, ...).")
    path: str | None = Field(None, description="JSONL, Parquet or a datasets directory; None: built-in data.")
    prompt_field: str = "prompt"
    answer_field: str | None = Field("answer", description="The reference (answer, tests, reference response).")
    limit: int | None = Field(None, gt=0, description="Use only the first N problems.")


class EvaluatorParams(BaseModel):
    """Params every evaluator has; a plugin's ``Params`` subclasses this and adds its own."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[EvalDataset] = Field(default_factory=list, description="What to evaluate on.")
    template: Template | None = Field(None, description="Prompt template; default: the evaluator's own.")
    max_new_tokens: int | None = Field(None, gt=0, description="Default: evaluation.max_new_tokens.")
    temperature: float | None = Field(None, ge=0, description="Default: evaluation.temperature (0: greedy).")


@dataclass
class EvalItem:
    """One problem: its dataset, row, prompt text, reference and the whole source row."""

    dataset: str
    index: int
    prompt: str
    reference: Any = None
    row: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    """The grade of one output (see the module docstring); ``details`` go into the sample's record."""

    score: float | None
    extracted: Any = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def read_dataset(dataset: EvalDataset, required: Sequence[str] = ()) -> list[EvalItem]:
    """The problems of ``dataset`` (its prompt and reference fields must exist, as must ``required``)."""
    if dataset.path is None:
        raise VcrdError(f"dataset '{dataset.name}': no path given and no built-in data of that name")
    if not Path(dataset.path).exists():
        raise VcrdError(f"dataset '{dataset.name}': data file '{dataset.path}' does not exist")
    rows = load_rows(dataset.path)
    columns = list(rows.column_names)
    for key, name in (("prompt_field", dataset.prompt_field), ("answer_field", dataset.answer_field)):
        if name is not None and name not in columns:
            raise VcrdError(
                f"dataset '{dataset.name}' ({dataset.path}) has no field '{name}' ({key}); its rows have: "
                f"{', '.join(columns) or 'no field'}"
            )
    for name in required:
        if name not in columns:
            raise VcrdError(
                f"dataset '{dataset.name}' ({dataset.path}) has no field '{name}'; its rows have: {', '.join(columns)}"
            )
    if dataset.limit is not None and dataset.limit < len(rows):
        rows = rows.select(range(dataset.limit))
    items = []
    for i, row in enumerate(rows):
        prompt = row[dataset.prompt_field]
        if not isinstance(prompt, str) or not prompt.strip():
            raise VcrdError(
                f"dataset '{dataset.name}' ({dataset.path}) row {i}: field '{dataset.prompt_field}' holds no prompt"
            )
        reference = row[dataset.answer_field] if dataset.answer_field else None
        items.append(EvalItem(dataset.name, i, prompt, reference, dict(row)))
    if not items:
        raise VcrdError(f"dataset '{dataset.name}' ({dataset.path}) holds no record")
    return items


class Evaluator(Component):
    """Base of evaluators. Subclasses set ``template`` and implement :meth:`grade` (or :meth:`score` for a
    whole batch at once, e.g. in parallel); :meth:`load_items` reads ``params.datasets`` by default."""

    kind: ClassVar[str] = EVALUATORS

    #: The prompt template used unless ``params.template`` says otherwise.
    template: ClassVar[Template] = "chat"
    #: What the summary's numbers are called.
    metric: ClassVar[str] = "pass@1"

    #: What the grading item of a *training* example holds as ``reference`` (for judges that grade outcomes, such
    #: as ``mc_value``): the example's reference answer (``data.answer_field``) or its tests (``data.tests_field``).
    grades_against: ClassVar[Literal["reference", "tests"]] = "reference"

    Params = EvaluatorParams

    def example_item(self, example: Example, index: int = 0) -> EvalItem:
        """The grading item of one training example: its prompt text, its reference or tests
        (:attr:`grades_against`) and its other fields as the row."""
        reference = example.tests if self.grades_against == "tests" else example.reference
        return EvalItem("train", index, example.prompt, reference, dict(example.fields))

    def check(self) -> None:
        """Cheap run-time checks before any model is loaded (dependencies, data files, sandbox, endpoint)."""

    def prompt_template(self) -> Template:
        return self.params.template or self.template

    def load_items(self) -> list[EvalItem]:
        """Every problem of every dataset, in order."""
        if not self.params.datasets:
            raise VcrdError(f"evaluator '{self.name}': params.datasets is empty; name at least one dataset")
        return [item for ds in self.params.datasets for item in self.read(ds)]

    def read(self, dataset: EvalDataset) -> list[EvalItem]:
        """The problems of one dataset (override for built-in data or extra fields)."""
        return read_dataset(dataset)

    def grade(self, item: EvalItem, output: str) -> Verdict:
        """The grade of one output."""
        raise NotImplementedError

    def score(self, items: list[EvalItem], outputs: list[str], advance: Callable[[int], None]) -> list[Verdict]:
        """Grades of all outputs, in order; calls ``advance(n)`` as ``n`` more are done."""
        verdicts = []
        for item, output in zip(items, outputs, strict=True):
            verdicts.append(self.grade(item, output))
            advance(1)
        return verdicts

    def summarize(self, items: list[EvalItem], verdicts: list[Verdict]) -> dict[str, Any]:
        """Per dataset: the mean score, the problems, those graded and those with an error; and the average
        over datasets."""
        per: dict[str, dict[str, Any]] = {}
        for item, verdict in zip(items, verdicts, strict=True):
            d = per.setdefault(item.dataset, {"n": 0, "graded": 0, "errors": 0, "total": 0.0})
            d["n"] += 1
            d["errors"] += verdict.error is not None
            if verdict.score is not None:
                d["graded"] += 1
                d["total"] += verdict.score
        datasets = {
            name: {
                self.metric: (d["total"] / d["graded"]) if d["graded"] else None,
                "n": d["n"],
                "graded": d["graded"],
                "errors": d["errors"],
            }
            for name, d in per.items()
        }
        values = [d[self.metric] for d in datasets.values() if d[self.metric] is not None]
        return {"metric": self.metric, "datasets": datasets, "average": sum(values) / len(values) if values else None}
