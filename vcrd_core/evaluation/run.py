"""The evaluation runner: generate with a generator plugin, grade with evaluator plugins, write records.

:func:`evaluate` is the API that ``vcrd eval``, the trainer's evaluation block and grids call: it takes a
*loaded* generator (any :class:`vcrd_core.rollouts.generator.Generator`), the tokenizer and the
evaluators, and returns the summary. Every sample becomes one JSON line of ``samples.jsonl`` (evaluator,
dataset, row, prompt, output, extracted answer, reference, score, error and the evaluator's details) beside
``summary.json``, both written atomically, so that every failure can be inspected.

:func:`run_evaluation` is ``vcrd eval``: config → checks (evaluators, datasets, model path, tokenizer) →
generator loaded once → :func:`evaluate`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from vcrd_core import __version__
from vcrd_core.config.models import RunConfig
from vcrd_core.data.prompts import render_prompt
from vcrd_core.errors import ConfigError, VcrdError
from vcrd_core.evaluation.evaluator import EvalItem, Evaluator, Verdict
from vcrd_core.plugins.kinds import EVALUATORS, GENERATORS
from vcrd_core.plugins.manager import get_plugin_manager
from vcrd_core.plugins.registry import create
from vcrd_core.rollouts.generator import Generator, GeneratorContext, Sampling
from vcrd_core.runs.atomic import atomic_write_text, atomic_writer
from vcrd_core.runs.console import console as make_console
from vcrd_core.runs.preflight import load_tokenizer

#: Prompts per ``generate`` call (the progress bar's unit of advance).
GENERATE_BATCH = 64


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def labels_of(evaluators: list[Evaluator]) -> list[str]:
    """A unique label per evaluator: its name, ``name-2`` for the second of the same name, ..."""
    seen: dict[str, int] = {}
    out = []
    for ev in evaluators:
        seen[ev.name] = seen.get(ev.name, 0) + 1
        out.append(ev.name if seen[ev.name] == 1 else f"{ev.name}-{seen[ev.name]}")
    return out


def _record(label: str, item: EvalItem, output: str, finish: str, verdict: Verdict) -> dict[str, Any]:
    return {
        "evaluator": label,
        "dataset": item.dataset,
        "index": item.index,
        "prompt": item.prompt,
        "output": output,
        "finish_reason": finish,
        "extracted": verdict.extracted,
        "reference": item.reference,
        "score": verdict.score,
        "correct": verdict.score == 1,
        "error": verdict.error,
        **verdict.details,
    }


def evaluate(
    generator: Generator,
    tokenizer: Any,
    evaluators: list[Evaluator],
    *,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    out_dir: str | Path | None = None,
    items: dict[str, list[EvalItem]] | None = None,
    step: int | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Generate one output per problem with ``generator`` (loaded), grade them, write ``samples.jsonl`` and
    ``summary.json`` into ``out_dir`` (when given) and return the summary. ``items`` (by label) skips reading
    the datasets again; ``step`` (a training step) calls the ``vcrd_on_evaluation_end`` hook."""
    console = console or make_console(stderr=True)
    labels = labels_of(evaluators)
    summary: dict[str, Any] = {"vcrd": __version__, "evaluators": {}}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for label, ev in zip(labels, evaluators, strict=True):
        problems = items[label] if items is not None else ev.load_items()
        template = ev.prompt_template()
        sampling = Sampling(
            max_new_tokens=ev.params.max_new_tokens or max_new_tokens,
            temperature=temperature if ev.params.temperature is None else ev.params.temperature,
            top_p=top_p,
            seed=seed,
        )
        prompt_ids = [render_prompt(tokenizer, template, item.prompt)[1] for item in problems]
        outputs: list[str] = []
        finishes: list[str] = []
        start = time.perf_counter()
        with _progress(console) as bar:
            task = bar.add_task(f"{label}: generate", total=len(problems))
            for i in range(0, len(prompt_ids), GENERATE_BATCH):
                for samples in generator.generate(prompt_ids[i : i + GENERATE_BATCH], sampling):
                    outputs.append(samples[0].text)
                    finishes.append(samples[0].finish_reason)
                bar.update(task, advance=min(GENERATE_BATCH, len(prompt_ids) - i))
            generated = time.perf_counter() - start
            task = bar.add_task(f"{label}: grade", total=len(problems))
            verdicts = ev.score(problems, outputs, lambda n, task=task: bar.update(task, advance=n))
        result = ev.summarize(problems, verdicts)
        result |= {
            "name": ev.name,
            "params": ev.params.model_dump(mode="json"),
            "template": template,
            "sampling": sampling.as_dict(),
            "generation_seconds": round(generated, 3),
            "grading_seconds": round(time.perf_counter() - start - generated, 3),
        }
        summary["evaluators"][label] = result
        records += [
            _record(label, item, o, f, v) for item, o, f, v in zip(problems, outputs, finishes, verdicts, strict=True)
        ]
    if out is not None:
        with atomic_writer(out / "samples.jsonl") as handle:
            for record in records:
                handle.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        summary["samples"] = str(out / "samples.jsonl")
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    if step is not None:
        get_plugin_manager().hook.vcrd_on_evaluation_end(step=step, results=flat_results(summary))
    return summary


def flat_results(summary: dict[str, Any]) -> dict[str, float]:
    """``{"math/gsm8k/pass@1": 0.85, "math/average": ...}`` for loggers (graded values only)."""
    flat: dict[str, float] = {}
    for label, result in summary["evaluators"].items():
        for name, d in result["datasets"].items():
            if d[result["metric"]] is not None:
                flat[f"{label}/{name}/{result['metric']}"] = d[result["metric"]]
        if result["average"] is not None:
            flat[f"{label}/average"] = result["average"]
    return flat


def metric_names(evaluators: list[Evaluator]) -> list[str]:
    """Every name :func:`flat_results` can give these evaluators' results, known before anything runs:
    ``<label>/<dataset>/<metric>`` per dataset of ``params.datasets`` and ``<label>/average``."""
    names: list[str] = []
    for label, ev in zip(labels_of(evaluators), evaluators, strict=True):
        names += [f"{label}/{ds.name}/{ev.metric}" for ds in ev.params.datasets]
        names.append(f"{label}/average")
    return names


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """One table row per (evaluator, dataset) and one per evaluator average."""
    table = Table(title="evaluation")
    for col in ("evaluator", "dataset", "metric", "score", "n", "graded", "errors"):
        table.add_column(col, justify="left" if col in ("evaluator", "dataset", "metric") else "right")
    for label, result in summary["evaluators"].items():
        metric = result["metric"]
        for name, d in result["datasets"].items():
            value = d[metric]
            table.add_row(
                label,
                name,
                metric,
                "-" if value is None else f"{100 * value:.2f}",
                str(d["n"]),
                str(d["graded"]),
                str(d["errors"]),
            )
        if len(result["datasets"]) > 1:
            avg = result["average"]
            table.add_row(label, "[bold]average", metric, "-" if avg is None else f"{100 * avg:.2f}", "", "", "")
    console.print(table)
    if "samples" in summary:
        console.print(f"records: {summary['samples']}")


def model_of(config: RunConfig, model: str) -> tuple[str, str, str]:
    """``(label, model path, dtype)`` of ``--model``: ``student``, ``teacher`` or a model directory."""
    if model in ("student", "teacher"):
        spec = getattr(config.models, model)
        return model, spec.path, spec.dtype
    return Path(model).name or "model", model, config.models.student.dtype


def make_evaluators(config: RunConfig) -> list[Evaluator]:
    """The config's evaluators, created from their params (nothing read, nothing checked yet)."""
    evaluators: list[Evaluator] = []
    for i, spec in enumerate(config.evaluation.evaluators):
        evaluators.append(create(EVALUATORS, spec.name, spec.params, path=f"evaluation.evaluators.{i}"))  # type: ignore[arg-type]
    return evaluators


def load_evaluators(config: RunConfig) -> tuple[list[Evaluator], dict[str, list[EvalItem]]]:
    """The config's evaluators, checked, and their problems by label (one-line errors at their YAML path);
    loads no model."""
    if not config.evaluation.evaluators:
        raise ConfigError("evaluation.evaluators", "empty: name at least one evaluator (see `vcrd plugins`)")
    evaluators = make_evaluators(config)
    items: dict[str, list[EvalItem]] = {}
    for i, (name, ev) in enumerate(zip(labels_of(evaluators), evaluators, strict=True)):
        try:
            ev.check()
            items[name] = ev.load_items()
        except ConfigError:
            raise
        except VcrdError as exc:
            raise ConfigError(f"evaluation.evaluators.{i}", str(exc)) from None
    return evaluators, items


def run_evaluation(
    config: RunConfig,
    *,
    model: str = "student",
    out_dir: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """``vcrd eval``: every check first (evaluators, datasets, the model directory, its tokenizer), then
    the generator is loaded once and :func:`evaluate` runs."""
    console = console or make_console(stderr=True)
    ev_config = config.evaluation
    if not ev_config.evaluators:
        raise ConfigError("evaluation.evaluators", "empty: name at least one evaluator (see `vcrd plugins`)")
    label, path, dtype = model_of(config, model)
    where = f"models.{model}.path" if model in ("student", "teacher") else "--model"
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(where, f"'{path}' is not an HF-format model directory (no config.json)")
    evaluators, items = load_evaluators(config)
    gen_spec = ev_config.generator or config.rollouts.generator_spec()
    generator: Generator = create(GENERATORS, gen_spec.name, gen_spec.params, path="evaluation.generator")  # type: ignore[assignment]
    generator.check()
    own_tokenizer = any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tok_path = path if own_tokenizer else (config.models.tokenizer or config.models.student.path)
    tokenizer = load_tokenizer(tok_path, where if own_tokenizer else "models.tokenizer")
    out = Path(out_dir or ev_config.dir or Path(config.output.dir) / "eval" / label)
    generator.load(
        GeneratorContext(
            model_path=path,
            tokenizer=tokenizer,
            tokenizer_path=tok_path,
            vocab_size=len(tokenizer),
            dtype=dtype,
            role=label,
            extra={"seed": config.seed},
        )
    )
    try:
        summary = evaluate(
            generator,
            tokenizer,
            evaluators,
            max_new_tokens=ev_config.max_new_tokens,
            temperature=ev_config.temperature,
            top_p=ev_config.top_p,
            seed=config.seed,
            out_dir=out,
            items=items,
            console=console,
        )
    finally:
        generator.close()
    summary["model"] = {"label": label, "path": str(Path(path).resolve())}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary
