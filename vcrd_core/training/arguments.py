"""The config's ``training`` section as transformers ``TrainingArguments`` (checked before any model is loaded).

Mapped fields (config -> ``TrainingArguments``): ``learning_rate``, ``epochs`` -> ``num_train_epochs``,
``max_steps``, ``per_device_batch_size`` -> ``per_device_train_batch_size``, ``gradient_accumulation_steps``
(or derived from ``batch_size``), ``lr_scheduler`` -> ``lr_scheduler_type``, ``warmup_ratio`` ->
``warmup_steps`` (a float in [0, 1) is a ratio in transformers 5), ``weight_decay``, ``max_grad_norm`` (None ->
0: no clipping), ``mixed_precision`` -> ``bf16`` / ``fp16``, ``gradient_checkpointing``, ``logging_steps``,
``save_steps`` (None: one checkpoint per epoch), the run's ``seed`` -> ``seed`` and ``data_seed``, and
``output.dir`` -> ``output_dir``. Any other ``TrainingArguments`` field goes in ``training.args`` (e.g.
``save_total_limit``, ``report_to``, ``optim``); a name that is not a field, or that a mapped field already
sets, is refused with one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from typing import Any

from vcrd_core.config.models import RunConfig
from vcrd_core.errors import ConfigError

#: TrainingArguments fields that vcrd sets itself (from the config, or because the engine needs them).
MAPPED: dict[str, str] = {
    "output_dir": "output.dir",
    "learning_rate": "training.learning_rate",
    "num_train_epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "per_device_train_batch_size": "training.per_device_batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps (or training.batch_size)",
    "lr_scheduler_type": "training.lr_scheduler",
    "warmup_steps": "training.warmup_ratio",
    "weight_decay": "training.weight_decay",
    "max_grad_norm": "training.max_grad_norm",
    "bf16": "training.mixed_precision",
    "fp16": "training.mixed_precision",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "logging_steps": "training.logging_steps",
    "save_steps": "training.save_steps",
    "seed": "seed",
    "remove_unused_columns": "(the engine: its batches are not model inputs)",
}


def training_argument_names() -> list[str]:
    from transformers import TrainingArguments

    return [f.name for f in dataclasses.fields(TrainingArguments) if f.init]


def check_args(extra: dict[str, Any]) -> None:
    """Refuse an unknown ``training.args`` name (with the closest field) or one that a mapped field sets."""
    names = training_argument_names()
    for key in extra:
        if key in MAPPED:
            raise ConfigError(f"training.args.{key}", f"is set by {MAPPED[key]}; set it there")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"training.args.{key}", f"'{key}' is not a transformers TrainingArguments field{hint}")


def accumulation_steps(config: RunConfig, world_size: int) -> int:
    """Gradient accumulation steps: ``training.batch_size / (per_device_batch_size x world_size)`` when the
    effective batch is given (it must divide exactly), else ``training.gradient_accumulation_steps``."""
    t = config.training
    micro = t.per_device_batch_size * world_size
    if t.batch_size is None:
        return t.gradient_accumulation_steps
    if micro > t.batch_size:
        raise ConfigError(
            "training.per_device_batch_size",
            f"the micro-batch ({t.per_device_batch_size} per device x {world_size} processes = {micro}) is larger "
            f"than the effective batch training.batch_size ({t.batch_size})",
        )
    if t.batch_size % micro:
        raise ConfigError(
            "training.batch_size",
            f"{t.batch_size} is not a multiple of per_device_batch_size x processes ({micro}); the accumulation "
            "steps would not be whole",
        )
    steps = t.batch_size // micro
    if t.gradient_accumulation_steps not in (1, steps):
        raise ConfigError(
            "training.gradient_accumulation_steps",
            f"{t.gradient_accumulation_steps} disagrees with training.batch_size ({t.batch_size} = {micro} x "
            f"{steps}); set one of them",
        )
    return steps


def training_arguments_kwargs(config: RunConfig, world_size: int = 1) -> dict[str, Any]:
    """The keyword arguments of ``TrainingArguments`` for ``config`` (no transformers object is built)."""
    t = config.training
    check_args(t.args)
    kwargs: dict[str, Any] = {
        "output_dir": config.output.dir,
        "learning_rate": t.learning_rate,
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps if t.max_steps is not None else -1,
        "per_device_train_batch_size": t.per_device_batch_size,
        "gradient_accumulation_steps": accumulation_steps(config, world_size),
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_ratio,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm if t.max_grad_norm is not None else 0.0,
        "bf16": t.mixed_precision == "bf16",
        "fp16": t.mixed_precision == "fp16",
        "gradient_checkpointing": t.gradient_checkpointing,
        "logging_steps": t.logging_steps,
        "save_strategy": "steps" if t.save_steps else "epoch",
        "seed": config.seed,
        "data_seed": config.seed,
        "remove_unused_columns": False,
        "report_to": "none",
    }
    if t.save_steps:
        kwargs["save_steps"] = t.save_steps
    strategy = t.args.get("save_strategy")
    if strategy not in (None, "steps") and t.save_steps:
        raise ConfigError(
            "training.save_steps",
            f"is ignored under training.args.save_strategy: {strategy!r} (no checkpoint would be written every N "
            "steps, so --resume would have nothing to resume); drop save_strategy to save every N steps, or drop "
            "save_steps",
        )
    if "disable_tqdm" not in t.args and not sys.stderr.isatty():
        kwargs["disable_tqdm"] = True  # into a log: one line per logging step, no carriage-return progress bar
    import torch

    if not torch.cuda.is_available():
        # Without a GPU, transformers only sets up torch.distributed (gloo) for several processes with use_cpu.
        kwargs["use_cpu"] = True
    kwargs.update(t.args)
    return kwargs


def build_training_arguments(config: RunConfig, world_size: int = 1) -> Any:
    """``TrainingArguments`` of ``config``; a value transformers rejects is one ConfigError line."""
    from transformers import TrainingArguments

    kwargs = training_arguments_kwargs(config, world_size)
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError("training", f"transformers refused the training arguments: {first}") from None
