"""The evaluation runner: generate with a generator plugin, grade with evaluator plugins, write records.

:func:`evaluate` is the API that ``vcrd eval``, the trainer's evaluation block and grids call: it takes a
*loaded* generator (any :class:`vcrd_core.rollouts.generator.Generator`), the tokenizer and the
evaluators, and returns the summary. Every sample becomes one JSON line of ``samples.jsonl`` (evaluator,
dataset, row, prompt, output, extracted answer, reference, score, error and the evaluator's details) beside
``summary.json``, both written atomically, so that every failure can be inspected.

:func:`run_evaluation` is ``vcrd eval``: config → which model (:func:`eval_target`) → checks (evaluators,
datasets, model path, tokenizer) → generator loaded once → :func:`evaluate`.

Which model: by default the run's trained model, ``<output.dir>/final`` as ``vcrd train`` (or ``vcrd sft``)
leaves it — a whole model, or a LoRA adapter merged onto the model it was trained from before generating
(``merged/`` is used as it is when ``--merge`` wrote it after ``final/``). Without ``final/`` nothing is
evaluated: the untrained student is ``--model student`` (alias ``base``), so that its score is never read as
the trained one's. The label (``trained``, ``student``, ``teacher`` or a directory's name) names the output
directory (``<output.dir>/eval/<label>``) and the printed table.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from vcrd_core import __version__
from vcrd_core.config.models import TORCH_DTYPES, ModelSpec, RunConfig
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
    """One table row per (evaluator, dataset) and one per evaluator average; the title names the model
    (``summary["model"]``, as :func:`run_evaluation` records it)."""
    model = summary.get("model") or {}
    table = Table(title=escape(f"evaluation of the {model['name']}") if model.get("name") else "evaluation")
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
    if model.get("description"):
        console.print(escape(f"evaluated: {model['description']}"), soft_wrap=True)
    if "samples" in summary:
        console.print(f"records: {summary['samples']}")


#: Files of a LoRA adapter as PEFT saves it.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class EvalTarget:
    """The model ``vcrd eval`` evaluates.

    ``label`` names the output directory (``<output.dir>/eval/<label>``) and the records; ``name`` the printed
    table ("trained student"); ``description`` the log line and the line under the table ("the trained student
    out/final (LoRA adapter on ...)"). ``path`` is a whole HF-format model
    directory, or a LoRA adapter (``adapter_onto``: the model it was trained from, named at
    ``adapter_onto_where``) merged before generating.
    """

    label: str
    name: str
    path: str
    dtype: str
    description: str
    where: str
    adapter_onto: ModelSpec | None = None
    adapter_onto_where: str = "models.student.path"


def is_adapter(path: str | Path) -> bool:
    """A LoRA adapter directory (PEFT's ``adapter_config.json``, no ``config.json``)."""
    root = Path(path)
    return (root / ADAPTER_CONFIG).is_file() and not (root / "config.json").is_file()


def _trained_role(out: Path) -> str:
    """Which model the run in ``out`` trained: ``vcrd sft --model teacher`` fine-tunes the teacher."""
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "student"
    return "teacher" if isinstance(summary, dict) and summary.get("sft_model") == "teacher" else "student"


def trained_target(config: RunConfig) -> EvalTarget:
    """``<output.dir>/final`` as an :class:`EvalTarget`, or a one-line error saying what is there instead."""
    out = Path(config.output.dir)
    final = out / "final"
    if not final.is_dir():
        checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1] or 0))
        hint = (
            f"; {out} holds checkpoints (up to {checkpoints[-1].name}) of a run that did not finish: `vcrd train "
            "CONFIG --resume` finishes it"
            if checkpoints
            else "; `vcrd train CONFIG` writes it"
        )
        raise ConfigError(
            "output.dir",
            f"no trained model to evaluate: '{final}' does not exist{hint}. Evaluate the untrained student with "
            "--model student, the teacher with --model teacher, or a model directory with --model PATH",
        )
    role = _trained_role(out)
    spec: ModelSpec = getattr(config.models, role)
    if is_adapter(final):
        merged = out / "merged"
        adapter_files = [final / f for f in ADAPTER_WEIGHTS if (final / f).is_file()]
        if not adapter_files:
            raise ConfigError("output.dir", f"'{final}' holds a LoRA adapter config but no adapter weights")
        if (merged / "config.json").is_file() and (merged / "config.json").stat().st_mtime >= max(
            f.stat().st_mtime for f in adapter_files
        ):  # `vcrd train --merge` wrote it after this final/ (an older merged/ is another run's)
            text = f"the trained {role} {merged} (LoRA merged)"
            return EvalTarget("trained", f"trained {role}", str(merged), spec.dtype, text, "output.dir")
        return EvalTarget(
            "trained",
            f"trained {role}",
            str(final),
            spec.dtype,
            f"the trained {role} {final} (LoRA adapter on models.{role}.path {spec.path})",
            "output.dir",
            adapter_onto=spec,
            adapter_onto_where=f"models.{role}.path",
        )
    return EvalTarget("trained", f"trained {role}", str(final), spec.dtype, f"the trained {role} {final}", "output.dir")


def eval_target(config: RunConfig, model: str | None = None) -> EvalTarget:
    """What ``--model`` names: ``None`` or ``trained`` the run's ``<output.dir>/final`` (:func:`trained_target`),
    ``student`` / ``base`` the untrained student (``models.student.path``), ``teacher``, or a model directory
    (a LoRA adapter directory is merged onto ``models.student.path``)."""
    if model is None or model == "trained":
        return trained_target(config)
    if model in ("student", "base"):
        spec = config.models.student
        text = f"the untrained student {spec.path} (models.student.path, before distillation)"
        return EvalTarget("student", "untrained student", spec.path, spec.dtype, text, "models.student.path")
    if model == "teacher":
        spec = config.models.teacher
        text = f"the teacher {spec.path}"
        return EvalTarget("teacher", "teacher", spec.path, spec.dtype, text, "models.teacher.path")
    label = Path(model).name or "model"
    if is_adapter(model):
        spec = config.models.student
        text = f"the model {model} (LoRA adapter on models.student.path {spec.path})"
        return EvalTarget(label, f"model {label}", model, spec.dtype, text, "--model", adapter_onto=spec)
    return EvalTarget(label, f"model {label}", model, config.models.student.dtype, f"the model {model}", "--model")


def model_of(config: RunConfig, model: str) -> tuple[str, str, str]:
    """``(label, model path, dtype)`` of ``--model`` (see :func:`eval_target`)."""
    target = eval_target(config, model)
    return target.label, target.path, target.dtype


def merge_adapter(adapter: str | Path, base: ModelSpec, dest: str | Path) -> Path:
    """Load ``base`` (its dtype), apply the LoRA ``adapter``, merge it into the weights and save the whole model
    (and the adapter's tokenizer, when it has one) in ``dest``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = TORCH_DTYPES[base.dtype] if base.dtype in TORCH_DTYPES else "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=dtype, local_files_only=True)
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except Exception as exc:  # a base the adapter was not trained on: shapes, missing modules, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VcrdError(f"cannot merge the LoRA adapter '{adapter}' onto '{base.path}': {reason}") from None
    out = Path(dest)
    merged.save_pretrained(str(out))
    if any((Path(adapter) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        load_tokenizer(str(adapter), "--model").save_pretrained(str(out))
    return out


@contextmanager
def _whole_model(target: EvalTarget, scratch: Path, console: Console) -> Iterator[str]:
    """The directory of a whole model for ``target``: its own, or its adapter merged into a temporary
    directory under ``scratch`` (removed afterwards)."""
    if target.adapter_onto is None:
        yield target.path
        return
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".merged-", dir=scratch))
    try:
        console.print(f"merging the LoRA adapter {target.path} onto {target.adapter_onto.path} (temporary copy)")
        yield str(merge_adapter(target.path, target.adapter_onto, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    model: str | None = None,
    out_dir: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """``vcrd eval``: the model :func:`eval_target` names (default: the trained run's ``final/``), every check
    first (evaluators, datasets, the model directory, its tokenizer), then the generator is loaded once and
    :func:`evaluate` runs. The summary's ``model`` records what was evaluated."""
    console = console or make_console(stderr=True)
    ev_config = config.evaluation
    if not ev_config.evaluators:
        raise ConfigError("evaluation.evaluators", "empty: name at least one evaluator (see `vcrd plugins`)")
    target = eval_target(config, model)
    path = target.path
    if target.adapter_onto is None and not (Path(path) / "config.json").is_file():
        raise ConfigError(target.where, f"'{path}' is not an HF-format model directory (no config.json)")
    if target.adapter_onto is not None and not (Path(target.adapter_onto.path) / "config.json").is_file():
        raise ConfigError(
            target.adapter_onto_where,
            f"'{target.adapter_onto.path}' is not an HF-format model directory (no config.json); the LoRA adapter "
            f"'{path}' is merged onto it",
        )
    evaluators, items = load_evaluators(config)
    gen_spec = ev_config.generator or config.rollouts.generator_spec()
    generator: Generator = create(GENERATORS, gen_spec.name, gen_spec.params, path="evaluation.generator")  # type: ignore[assignment]
    generator.check()
    own_tokenizer = any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tok_path = path if own_tokenizer else (config.models.tokenizer or config.models.student.path)
    tokenizer = load_tokenizer(tok_path, target.where if own_tokenizer else "models.tokenizer")
    out = Path(out_dir or ev_config.dir or Path(config.output.dir) / "eval" / target.label)
    console.print(f"evaluating {target.description}", soft_wrap=True)  # one line whatever the width
    with _whole_model(target, out, console) as model_dir:
        generator.load(
            GeneratorContext(
                model_path=model_dir,
                tokenizer=tokenizer,
                tokenizer_path=tok_path,
                vocab_size=len(tokenizer),
                dtype=target.dtype,
                role=target.label,
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
    summary["model"] = {
        "label": target.label,
        "name": target.name,
        "path": str(Path(path).resolve()),
        "description": target.description,
    }
    if target.adapter_onto is not None:
        summary["model"]["merged_onto"] = str(Path(target.adapter_onto.path).resolve())
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary
