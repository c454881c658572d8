"""``vcrd train CONFIG`` and ``vcrd sft CONFIG``: the parsers (what runs: :mod:`vcrd_core.commands.train_run`)."""

from __future__ import annotations

import argparse

from vcrd_core.commands import add_command, add_config_arguments


def _common(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "training.learning_rate=1e-5")
    parser.add_argument("--resume", action="store_true", help="continue output.dir's run from its latest checkpoint")
    parser.add_argument("--merge", action="store_true", help="also save LoRA-merged weights in <output.dir>/merged")


def add_parser(sub: argparse._SubParsersAction) -> None:
    train = add_command(
        sub,
        "train",
        "vcrd_core.commands.train_run:train",
        help="validity-weighted distillation of the student (online or offline scoring)",
        description="Distill models.teacher into models.student on the rollout store's rollouts (transformers "
        "Trainer; launch with `accelerate launch` for several processes).",
    )
    _common(train)
    sft = add_command(
        sub,
        "sft",
        "vcrd_core.commands.train_run:sft",
        help="supervised fine-tuning on reference responses (cross-entropy)",
        description="Fine-tune models.<role> on data.train's reference responses (data.response_field).",
    )
    _common(sft)
    sft.add_argument("--model", choices=("student", "teacher"), default="student", help="which model to train")
    sft.add_argument(
        "--from-scratch", action="store_true", help="random initialization from the model directory's config.json"
    )
