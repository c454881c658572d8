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

import contextlib
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vcrd_core.config.loader import resolved_dict
from vcrd_core.config.models import RunConfig
from vcrd_core.errors import ConfigError, VcrdError
from vcrd_core.judging.judge import JudgeContext
from vcrd_core.plan import RunPlan
from vcrd_core.plugins.manager import get_plugin_manager
from vcrd_core.rollouts.scoring import check_scored_with
from vcrd_core.rollouts.store import RolloutStore
from vcrd_core.rollouts.teacher_cache import TeacherCache
from vcrd_core.runs.atomic import atomic_write_text
from vcrd_core.runs.models import load_causal_lm, pad_token_id
from vcrd_core.runs.preflight import RUN_MARKERS, Preflight, load_tokenizer, preflight
from vcrd_core.runs.provenance import first_difference, write_run_metadata
from vcrd_core.training.arguments import training_arguments_kwargs
from vcrd_core.training.base import COMPLETE_MARKER, METRICS_FILE
from vcrd_core.training.data import RolloutCollator, RolloutExamples, rows_from_store
from vcrd_core.training.evaluation import PeriodicEvaluation
from vcrd_core.training.on_policy import StudentRollouts, steps_per_epoch
from vcrd_core.training.step import VCRDTrainer
from vcrd_core.training.weight_sources import InPassWeights


def world_size() -> int:
    """Processes of this launch (``accelerate launch`` / ``torchrun`` set ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


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


def resume_checkpoint(out: Path) -> Path:
    """The checkpoint ``--resume`` continues from: the latest complete one. A finished run (``summary.json``) or a
    run without a complete checkpoint is refused with one line saying what was found and what to do; nothing in
    ``out`` is touched then."""
    summary = out / "summary.json"
    if summary.is_file():
        try:
            step = json.loads(summary.read_text(encoding="utf-8")).get("global_step")
        except (OSError, ValueError):
            step = None
        raise ConfigError(
            "output.dir",
            f"'{out}' holds a finished run ({summary.name}, step {step}); --resume continues an interrupted run "
            "only. Train longer in a new output.dir, or set output.overwrite: true to start over",
        )
    found = sorted(d.name for d in out.glob("checkpoint-*"))  # before latest_checkpoint drops incomplete ones
    checkpoint = latest_checkpoint(out)
    if checkpoint is None:
        seen = f"only incomplete checkpoints ({', '.join(found)})" if found else "no checkpoint-N directory"
        raise ConfigError(
            "output.dir",
            f"'{out}' has no complete checkpoint to resume from ({seen}); checkpoints are written every "
            "training.save_steps steps (or once per epoch). Run without --resume and output.overwrite: true to "
            "start over",
        )
    return checkpoint


def resume_command() -> str:
    """The command line that resumes this process's run: its own arguments with ``--resume``."""
    argv = ["vcrd", *sys.argv[1:]] if Path(sys.argv[0]).name in ("vcrd", "__main__.py") else list(sys.argv)
    if "--resume" not in argv:
        argv.append("--resume")
    return " ".join(shlex.quote(a) for a in argv)


@contextlib.contextmanager
def say_how_to_resume(out: Path) -> Iterator[None]:
    """On Ctrl-C or SIGTERM during training: one line naming the last complete checkpoint and the command that
    resumes from it (or that there is none yet), then the interruption goes on as before."""
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "Terminated":
            if is_main_process():
                found = latest_checkpoint(out)
                if found is not None:
                    print(f"interrupted; last complete checkpoint: {found}; resume with: {resume_command()}",
                          file=sys.stderr, flush=True)  # fmt: skip
                else:
                    print(f"interrupted; no complete checkpoint in {out} yet (training.save_steps sets how often "
                          "one is written): nothing to resume", file=sys.stderr, flush=True)  # fmt: skip
        raise


def _truncate_metrics(out: Path, step: int) -> None:
    """Drop the metrics of steps after ``step`` (they are recomputed after a resume)."""
    file = out / METRICS_FILE
    if not file.is_file() or not is_main_process():
        return
    kept = [line for line in file.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(file, "".join(f"{line}\n" for line in kept))


def store_path(config: RunConfig) -> Path:
    return Path(config.rollouts.store) if config.rollouts.store else Path(config.output.dir) / "rollouts"


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


def training_arguments(kwargs: dict[str, Any]) -> Any:
    from transformers import TrainingArguments

    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError("training", f"transformers refused the training arguments: {first}") from None


@dataclass
class PreparedRun:
    """Everything :func:`prepare` checked and built before any model weight is loaded."""

    plan: RunPlan
    training_kwargs: dict[str, Any]
    out: Path
    preflight: Preflight
    dataset: RolloutExamples
    evaluation: PeriodicEvaluation | None
    #: On-policy student rollouts (``on_policy.schedule`` not ``static``), its generator created and checked.
    student_rollouts: StudentRollouts | None = None


def check_teacher_cache_setup(plan: RunPlan) -> None:
    """A run that reads the teacher from its top-k cache runs no teacher, so nothing else may need one (one line
    each, before any model loads): online scoring other than a row judge in the fused-linear pass (the teacher's
    proposals, its ``[B, L, V]`` logits) and a divergence reading the teacher's log-probability of every rollout
    token (on-policy rollouts: the config's own validation)."""
    where = "training.teacher_cache"  # on-policy rollouts: refused by the config's own validation
    online = {k: s for k, s in plan.computed().items() if s.rule.uses_scores() and plan.mode != "offline"}
    for name, s in online.items():
        if not InPassWeights.applies(s):  # its judge reads the teacher's proposals or the whole [B, L, V] logits
            judge = s.judge.name if s.judge is not None else "none"
            raise ConfigError(
                where, f"online scoring of the {name} stream with the judge '{judge}' reads the teacher's logits "
                "or proposals, which the cache does not hold; only a row judge scored inside the loss pass "
                "(teacher_likelihood) runs online with it; score the store offline (`vcrd score`, scoring.mode: "
                "offline) or train without the cache",
            )  # fmt: skip
    if online and plan.config.training.loss_engine == "logits":
        raise ConfigError(
            where, f"online scoring of the {', '.join(online)} stream{'s' if len(online) > 1 else ''} from the cache "
            "is made inside the fused-linear "
            "loss pass; set training.loss_engine to auto or fused_linear",
        )  # fmt: skip
    for name, s in plan.computed().items():
        if s.divergence.uses_sequence_stats:
            raise ConfigError(
                where, f"the {name} stream's divergence '{s.divergence.name}' reads the teacher's log-probability of "
                "every rollout token, which a top-k cache does not hold; train without the cache",
            )  # fmt: skip


def prepare(config: RunConfig, *, resume: bool, rows: Iterable[Mapping[str, Any]] | None) -> PreparedRun:
    """Every check before a model is loaded (``rows``: rollout rows instead of the store's, e.g. from tests)."""
    kwargs = training_arguments_kwargs(config, world_size())
    out = check_output_dir(config, resume)
    checked = preflight(config, output_dir=False)
    plan = RunPlan.of(config)
    computed = plan.computed()
    need_weights = plan.offline_weights()
    roles_of = {name: s.role for name, s in computed.items()}
    if config.on_policy.fresh and config.on_policy.fallback == "teacher" and "student_prefix" in roles_of:
        roles_of["student_prefix"] = "teacher"  # a step that is not fresh trains on the teacher's rollouts (GKD)
    if rows is None:
        roles = sorted(set(roles_of.values()), key=("teacher", "student").index)
        scored_roles = [computed[s].role for s in need_weights]
        rows = rows_from_store(store_path(config), roles, need_weights=scored_roles)
        if scored_roles:  # weights made by another judge, rule, seed or models are never trained on
            check_scored_with(plan, RolloutStore(store_path(config)), scored_roles)
    dataset = RolloutExamples(
        rows, list(computed), max_length=config.data.max_length, with_weights=need_weights, roles=roles_of
    )
    if config.training.teacher_cache is not None:
        check_teacher_cache_setup(plan)
        cache = TeacherCache.open(config.training.teacher_cache, roles=tuple(sorted(set(roles_of.values()))))
        cache.check_matches(config, RolloutStore(store_path(config)), int(checked.vocab_size))
        dataset.set_teacher_cache(cache)
    evaluation = PeriodicEvaluation.from_config(config, tokenizer=checked.tokenizer, out_dir=out)
    student_rollouts = None
    if config.on_policy.fresh:
        check_colocated_generator(config)
        validation = dataset.hold_out(config.on_policy.validation_examples)
        student_rollouts = StudentRollouts(
            config,
            tokenizer=checked.tokenizer,
            vocab_size=checked.vocab_size,
            pad_token_id=pad_token_id(checked.tokenizer),
            slots=list(dataset.slots),
            out_dir=out,
            steps_per_epoch=steps_per_epoch(
                len(dataset),
                int(kwargs["per_device_train_batch_size"]),
                world_size(),
                int(kwargs.get("gradient_accumulation_steps", 1)),
            ),
            validation=validation,
            batch_size=int(kwargs["per_device_train_batch_size"]),
        )
    return PreparedRun(plan, kwargs, out, checked, dataset, evaluation, student_rollouts)


def build_trainer(
    config: RunConfig,
    prepared: PreparedRun,
    *,
    teacher: Any = None,
    student: Any = None,
    trainer_class: type[VCRDTrainer] = VCRDTrainer,
) -> VCRDTrainer:
    """Models, judges, objective and the trainer (models may be passed in, e.g. by tests and benchmarks)."""
    from transformers import set_seed

    tokenizer, vocab_size = prepared.preflight.tokenizer, prepared.preflight.vocab_size
    set_seed(config.seed)
    if teacher is None and config.training.teacher_cache is None:  # with the cache no teacher is loaded at all
        teacher = load_causal_lm(config.models.teacher, "models.teacher.path")
    if student is None:
        student = load_causal_lm(config.models.student, "models.student.path")
    dtype = next((teacher if teacher is not None else student).parameters()).dtype
    student = apply_lora(config, student)
    args = training_arguments(prepared.training_kwargs)
    plan = prepared.plan
    context = JudgeContext.for_run(config, tokenizer=tokenizer, device=args.device, dtype=dtype, vocab_size=vocab_size)
    if config.training.teacher_cache is None or plan.mode != "offline":  # with the cache and offline weights no
        plan.load_judges(context, computed_only=True)  # judge runs (an mc_value judge would load the teacher)
    trainer = trainer_class(
        model=student,
        args=args,
        train_dataset=prepared.dataset,
        data_collator=RolloutCollator(pad_token_id(tokenizer)),
        teacher=teacher,
        plan=plan,
        objective=plan.objective(vocab_size=vocab_size),
        vocab_size=vocab_size,
        pad_token_id=pad_token_id(tokenizer),
        metrics_file=prepared.out / METRICS_FILE,
        max_nonfinite_steps=config.training.max_nonfinite_steps,
        loss_engine=config.training.loss_engine,
        student_rollouts=prepared.student_rollouts,
    )
    if prepared.evaluation is not None:
        trainer.add_callback(prepared.evaluation)
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


def check_colocated_generator(config: RunConfig) -> None:
    """A colocated vLLM engine runs in one training process on one device: refused under several processes or
    tensor parallelism, with one line (DESIGN.md §5 designs the server mode for that)."""
    spec = config.on_policy.generator_spec()
    if spec.name != "vllm":
        return
    if world_size() > 1:
        raise ConfigError(
            "on_policy.generator",
            f"the colocated vllm engine runs inside one process; this launch has {world_size()} (each would build "
            "its engine on the first device). Use {name: hf} with several processes",
        )
    if int(spec.params.get("tensor_parallel_size", 1)) > 1:
        raise ConfigError("on_policy.generator.params.tensor_parallel_size", "a colocated engine runs on 1 device")


def student_rollouts_record(config: RunConfig, rollouts: StudentRollouts | None) -> dict[str, Any]:
    """What provenance records of the student rollouts' schedule."""
    on = config.on_policy
    if rollouts is None:
        return {"schedule": "static", "source": "rollout store"}
    gen = rollouts.generator
    return {
        "schedule": on.schedule,
        "every_steps": on.every_steps if on.schedule == "steps" else None,
        "lambda": on.lam,
        "sync": on.sync,
        "buffer_size": on.buffer_size,
        "sync_every": rollouts.sync_every,
        "fallback": on.fallback,
        "validation_examples": len(rollouts.validation),
        "mixing": {"name": rollouts.mixing.name, "params": rollouts.mixing.params.model_dump(mode="json")},
        "generator": {"name": gen.name, "params": gen.params.model_dump(mode="json")},
    }


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
    out = prepared.out
    checkpoint = resume_checkpoint(out) if resume else None
    if checkpoint is not None:
        step = int(checkpoint.name.split("-")[1])
        _truncate_metrics(out, step)
        print(f"resuming from {checkpoint} (step {step})", file=sys.stderr, flush=True)
    start_run(config, out, resume, training={"streams": list(prepared.plan.computed())},
              student_rollouts=student_rollouts_record(config, prepared.student_rollouts))  # fmt: skip
    trainer = build_trainer(config, prepared, teacher=teacher, student=student)
    with say_how_to_resume(out):
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    extra = {
        "scoring_mode": config.scoring.mode,
        "static_scoring_seconds": trainer.static_scoring_seconds,
        "resumed_from": str(checkpoint) if checkpoint else None,
        # the teacher's distributions: a forward each step, or a top-k cache (no teacher loaded)
        "teacher": {"cache": config.training.teacher_cache, "loaded": trainer.teacher is not None},
        "examples": len(prepared.dataset),
        "examples_left_out": {
            "prompt_fills_max_length": prepared.dataset.too_long,
            "missing_a_role": prepared.dataset.incomplete,
        },
    }
    if prepared.evaluation is not None:
        extra["evaluation"] = {str(step): r for step, r in prepared.evaluation.results.items()}
    return finish_run(trainer, prepared.preflight.tokenizer, out, merge, extra)


__all__ = ["load_tokenizer", "run_train"]
