"""``vcrd train`` (validity-weighted distillation) and ``vcrd sft`` (cross-entropy on references); the parsers:
:mod:`vcrd_core.commands.train`."""

from __future__ import annotations

import argparse
import shlex

from vcrd_core.config.loader import load_config
from vcrd_core.training.run import run_train
from vcrd_core.training.sft import run_sft


def train(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    summary = run_train(config, resume=args.resume, merge=args.merge)
    saved = "LoRA adapter" if config.training.lora.enabled else "model"
    evaluate = shlex.join(["vcrd", "eval", args.file, *(a for value in args.set for a in ("--set", value))])
    print(f"trained {summary['global_step']} steps; {saved} in {summary['final_dir']} (evaluate it: {evaluate})")
    return 0


def sft(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    summary = run_sft(config, role=args.model, from_scratch=args.from_scratch, resume=args.resume, merge=args.merge)
    print(f"fine-tuned {args.model} for {summary['global_step']} steps; model in {summary['final_dir']}")
    return 0
