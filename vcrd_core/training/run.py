"""``vcrd train`` and ``vcrd sft``: a whole training job, from a config to a loadable adapter.

Order (everything that can be checked is checked before any model weight is loaded):

1. ``training`` -> ``TrainingArguments`` keyword arguments (unknown ``training.args`` fields, the effective
   batch), the output directory (a directory holding a *different* run is refused; one holding this run is
   refused unless ``--resume``), the run-time preflight (paths, shared tokenizer, judge checkpoints), the
   rollouts (offline: they must carry scores);
2. the run directory receives ``config.yaml`` and ``provenance.json`` (DESIGN.md §2.8), then
   ``vcrd_on_run_start`` fires;
3. models (teacher frozen in its own dtype; student with PEFT LoRA, Table 9 defaults, or fully), judges
   (none when every weighting rule is ``constant``), the trainer; ``train`` (from the latest complete
   checkpoint with ``--resume``);
4. ``final/`` (the adapter, or the whole model without LoRA, plus the tokenizer; ``merged/`` with ``--merge``),
   ``summary.json``, ``vcrd_on_run_end``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from vcrd_core.config.loader import resolved_dict
from vcrd_core.config.models import TORCH_DTYPES, ModelSpec, RunConfig
from vcrd_core.decision_points import Stream
from vcrd_core.errors import ConfigError, VcrdError
from vcrd_core.judging.judge import Judge, JudgeContext
from vcrd_core.losses.objective import VCRDObjective
from vcrd_core.losses.weighting import WeightingRule
from vcrd_core.plugins.manager import get_plugin_manager
from vcrd_core.plugins.registry import create
from vcrd_core.rollouts.scoring import check_scored_with
from vcrd_core.rollouts.store import RolloutStore
from vcrd_core.runs.atomic import atomic_write_text
from vcrd_core.runs.preflight import RUN_MARKERS, load_tokenizer, preflight
from vcrd_core.runs.provenance import first_difference, write_run_metadata
from vcrd_core.training.arguments import training_arguments_kwargs
from vcrd_core.training.data import STREAM_ROLE, RolloutCollator, RolloutExamples, rows_from_store
from vcrd_core.training.evaluation import PeriodicEvaluation
from vcrd_core.training.trainer import COMPLETE_MARKER, METRICS_FILE, StreamScoring, VCRDTrainer

WEIGHT_FILES = ("model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def world_size() -> int:
    """Processes of this launch (``accelerate launch`` / ``torchrun`` set ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def active_streams(config: RunConfig) -> list[str]:
    """The streams that are computed: enabled with ``λ > 0`` (others cost nothing)."""
    return [name for name, s in config.streams().items() if s.lam > 0]


def stream_rule(config: RunConfig, stream: str) -> tuple[Any, str]:
    spec = config.streams()[stream].weighting
    return (spec, f"objective.{stream}.weighting") if spec is not None else (config.weighting, "weighting")


def stream_judge_spec(config: RunConfig, stream: str) -> tuple[Any, str]:
    spec = config.streams()[stream].judge
    return (spec, f"objective.{stream}.judge") if spec is not None else (config.judge, "judge")


def build_rules(config: RunConfig) -> dict[str, WeightingRule]:
    out = {}
    for stream in active_streams(config):
        spec, path = stream_rule(config, stream)
        out[stream] = create(spec.kind or "weighting", spec.name, spec.params, path=path)
    return out  # type: ignore[return-value]


def check_output_dir(config: RunConfig, resume: bool) -> Path:
    """Refuse an output directory that holds a different run, or this run without ``--resume``."""
    out = Path(config.output.dir)
    if out.exists() and not out.is_dir():
        raise ConfigError("output.dir", f"'{out}' exists and is not a directory")
    holds_run = out.is_dir() and any((out / m).exists() for m in RUN_MARKERS)
    if resume:
        if not holds_run:
            raise ConfigError("output.dir", f"'{out}' holds no run to resume; run without --resume to start one")
        try:
            stored = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            stored = None
        now = yaml.safe_load(yaml.safe_dump(resolved_dict(config), sort_keys=False))
        if stored != now:
            diff = first_difference(stored, now) or "config.yaml unreadable"
            raise ConfigError(
                "output.dir", f"'{out}' holds a different run ({diff}); --resume continues the same config only"
            )
        return out
    if holds_run and not config.output.overwrite:
        raise ConfigError(
            "output.dir",
            f"'{out}' already holds a run; pass --resume to continue it, choose another directory or set "
            "output.overwrite: true",
        )
    return out


def latest_checkpoint(out: Path) -> Path | None:
    """The newest ``checkpoint-N`` that was completely written (``vcrd-complete``); incomplete newer ones (a kill
    during saving) are removed so that nothing resumes from them."""
    found = []
    for d in out.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", d.name)
        if m and d.is_dir():
            found.append((int(m.group(1)), d))
    complete = [(n, d) for n, d in found if (d / COMPLETE_MARKER).is_file()]
    best = max(complete, default=None, key=lambda t: t[0])
    for n, d in found:
        if not (d / COMPLETE_MARKER).is_file() and (best is None or n > best[0]) and is_main_process():
            shutil.rmtree(d, ignore_errors=True)
    return best[1] if best else None


def _truncate_metrics(out: Path, step: int) -> None:
    """Drop the metrics of steps after ``step`` (they are recomputed after a resume)."""
    file = out / METRICS_FILE
    if not file.is_file() or not is_main_process():
        return
    kept = [line for line in file.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(file, "".join(f"{line}\n" for line in kept))


def store_path(config: RunConfig) -> Path:
    return Path(config.rollouts.store) if config.rollouts.store else Path(config.output.dir) / "rollouts"


def load_causal_lm(spec: ModelSpec, where: str, *, from_scratch: bool = False) -> Any:
    """A causal LM from a local directory (weights required unless ``from_scratch``: then random init from its
    ``config.json``, seeded by the caller)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = spec.dtype
    kwargs: dict[str, Any] = {}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if from_scratch:
        cfg = AutoConfig.from_pretrained(spec.path, local_files_only=True)
        model = AutoModelForCausalLM.from_config(cfg, **kwargs)
        return model.to(TORCH_DTYPES[dtype]) if dtype != "auto" else model
    root = Path(spec.path)
    if not any((root / f).is_file() for f in WEIGHT_FILES) and not list(root.glob("*.safetensors")):
        raise ConfigError(
            where,
            f"'{spec.path}' has no model weights (model.safetensors); to train it from random initialization "
            "use `vcrd sft --from-scratch`",
        )
    return AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype, local_files_only=True, **kwargs)


def apply_lora(config: RunConfig, model: Any) -> Any:
    lora = config.training.lora
    if not lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in lora.target_modules if t not in names]
    if missing:
        raise ConfigError("training.lora.target_modules", f"the student has no module named {', '.join(missing)}")
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def _training_arguments(kwargs: dict[str, Any]) -> Any:
    from transformers import TrainingArguments

    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError("training", f"transformers refused the training arguments: {first}") from None


def build_judges(config: RunConfig, rules: Mapping[str, WeightingRule]) -> dict[str, Judge | None]:
    """Per stream the judge its rule needs (None for score-free rules: a run of constant rules loads none)."""
    judges: dict[str, Judge | None] = {}
    made: dict[str, Judge] = {}
    for stream, rule in rules.items():
        if not rule.uses_scores():
            judges[stream] = None
            continue
        spec, path = stream_judge_spec(config, stream)
        if spec is None:
            raise ConfigError(path, f"the weighting rule '{rule.name}' of the {stream} stream needs a judge")
        if path not in made:
            made[path] = create(spec.kind or "judges", spec.name, spec.params, path=path)  # type: ignore[assignment]
        judges[stream] = made[path]
    return judges


def prepare(config: RunConfig, *, resume: bool, rows: Iterable[Mapping[str, Any]] | None) -> dict[str, Any]:
    """Every check before a model is loaded; returns what the run needs next."""
    kwargs = training_arguments_kwargs(config, world_size())
    out = check_output_dir(config, resume)
    checked = preflight(config.model_copy(update={"output": config.output.model_copy(update={"overwrite": True})}))
    streams = active_streams(config)
    rules = build_rules(config)
    offline = config.scoring.mode == "offline"
    need_weights = [s for s in streams if offline and rules[s].uses_scores()]
    if rows is None:
        roles = [STREAM_ROLE[s] for s in streams]
        scored_roles = [STREAM_ROLE[s] for s in need_weights]
        rows = rows_from_store(store_path(config), roles, need_weights=scored_roles)
        if scored_roles:  # weights made by another judge, rule, seed or models are never trained on
            check_scored_with(config, RolloutStore(store_path(config)), scored_roles)
    dataset = RolloutExamples(rows, streams, max_length=config.data.max_length, with_weights=need_weights)
    evaluation = PeriodicEvaluation.from_config(config, tokenizer=checked.tokenizer, out_dir=out)
    return {
        "kwargs": kwargs,
        "out": out,
        "preflight": checked,
        "rules": rules,
        "dataset": dataset,
        "evaluation": evaluation,
    }


def build_trainer(
    config: RunConfig,
    prepared: dict[str, Any],
    *,
    teacher: Any = None,
    student: Any = None,
    trainer_class: type[VCRDTrainer] = VCRDTrainer,
) -> VCRDTrainer:
    """Models, judges, objective and the trainer (models may be passed in, e.g. by tests and benchmarks)."""
    import torch
    from transformers import set_seed

    tokenizer, vocab_size = prepared["preflight"].tokenizer, prepared["preflight"].vocab_size
    set_seed(config.seed)
    if teacher is None:
        teacher = load_causal_lm(config.models.teacher, "models.teacher.path")
    if student is None:
        student = load_causal_lm(config.models.student, "models.student.path")
    student = apply_lora(config, student)
    args = _training_arguments(prepared["kwargs"])
    rules = prepared["rules"]
    judges = build_judges(config, rules)
    context_dtype = next(teacher.parameters()).dtype
    loaded: set[int] = set()
    for judge in judges.values():
        if judge is not None and id(judge) not in loaded:
            context = JudgeContext(tokenizer=tokenizer, device=args.device, dtype=context_dtype, vocab_size=vocab_size)
            judge.load(context)
            loaded.add(id(judge))
    r = config.rollouts
    scoring = {}
    for stream, rule in rules.items():
        other = config.proposals.student if stream == Stream.TEACHER_PREFIX.value else config.proposals.teacher
        scoring[stream] = StreamScoring(judges[stream], rule, other, r.temperature, r.top_p)
    objective_config = config.objective.model_copy(deep=True)
    for name in (Stream.TEACHER_PREFIX.value, Stream.STUDENT_PREFIX.value):
        if name not in rules:
            getattr(objective_config, name).enabled = False
    objective = VCRDObjective.from_config(objective_config, vocab_size=vocab_size)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ConfigError("models.tokenizer", "the tokenizer has neither a pad nor an eos token to pad batches with")
    del torch
    trainer = trainer_class(
        model=student,
        args=args,
        train_dataset=prepared["dataset"],
        data_collator=RolloutCollator(pad),
        teacher=teacher,
        objective=objective,
        scoring=scoring,
        mode=config.scoring.mode,
        cache_static=config.scoring.cache_static,
        vocab_size=vocab_size,
        pad_token_id=int(pad),
        metrics_file=Path(prepared["out"]) / METRICS_FILE,
        max_nonfinite_steps=config.training.max_nonfinite_steps,
        loss_engine=config.training.loss_engine,
    )
    if prepared.get("evaluation") is not None:
        trainer.add_callback(prepared["evaluation"])
    return trainer


def start_run(config: RunConfig, out: Path, resume: bool, **extra: Any) -> None:
    """Provenance first (unless resuming: the original stays), then ``vcrd_on_run_start``."""
    if is_main_process():
        if not resume:
            if config.output.overwrite:
                for d in out.glob("checkpoint-*"):
                    shutil.rmtree(d, ignore_errors=True)
                (out / METRICS_FILE).unlink(missing_ok=True)
            write_run_metadata(out, config, **extra)
        get_plugin_manager().hook.vcrd_on_run_start(config=config, output_dir=str(out))


def finish_run(trainer: Any, tokenizer: Any, out: Path, merge: bool, extra: dict[str, Any]) -> dict[str, Any]:
    """Save ``final/`` (and ``merged/``), write ``summary.json``, fire ``vcrd_on_run_end``."""
    final = out / "final"
    trainer.save_model(str(final))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(str(final))
    if merge:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if not hasattr(model, "merge_and_unload"):
            raise VcrdError("--merge needs a LoRA run (training.lora.enabled); without LoRA final/ holds the model")
        if trainer.accelerator.is_main_process:
            import copy

            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(str(out / "merged"))
            tokenizer.save_pretrained(str(out / "merged"))
    history = [h for h in trainer.state.log_history if "loss" in h]
    summary = {
        "global_step": int(trainer.state.global_step),
        "nonfinite_steps": int(getattr(trainer, "nonfinite_steps", 0)),
        "final_loss": history[-1]["loss"] if history else None,
        "final_dir": str(final),
        **extra,
    }
    if trainer.accelerator.is_main_process:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        get_plugin_manager().hook.vcrd_on_run_end(output_dir=str(out), summary=dict(summary))
    return summary


def run_train(
    config: RunConfig,
    *,
    resume: bool = False,
    merge: bool = False,
    rows: Iterable[Mapping[str, Any]] | None = None,
    teacher: Any = None,
    student: Any = None,
) -> dict[str, Any]:
    """``vcrd train``: the whole job (see the module docstring); returns the summary."""
    prepared = prepare(config, resume=resume, rows=rows)
    out: Path = prepared["out"]
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        _truncate_metrics(out, int(checkpoint.name.split("-")[1]))
    elif resume:
        _truncate_metrics(out, 0)
    start_run(config, out, resume, training={"streams": active_streams(config)})
    trainer = build_trainer(config, prepared, teacher=teacher, student=student)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    extra = {
        "scoring_mode": config.scoring.mode,
        "static_scoring_seconds": trainer.static_scoring_seconds,
        "resumed_from": str(checkpoint) if checkpoint else None,
        "examples": len(prepared["dataset"]),
        "examples_left_out": {
            "prompt_fills_max_length": prepared["dataset"].too_long,
            "missing_a_role": prepared["dataset"].incomplete,
        },
    }
    if prepared["evaluation"] is not None:
        extra["evaluation"] = {str(step): r for step, r in prepared["evaluation"].results.items()}
    return finish_run(trainer, prepared["preflight"].tokenizer, out, merge, extra)


__all__ = ["load_tokenizer", "run_train"]
