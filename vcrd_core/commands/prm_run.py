"""``vcrd prm`` (the parsers: :mod:`vcrd_core.commands.prm`)."""

from __future__ import annotations

import argparse
import json

import yaml

from vcrd_core.config.loader import load_config
from vcrd_core.errors import VcrdError
from vcrd_core.prm.calibrate import calibrate, markdown_table
from vcrd_core.prm.labels import label_store
from vcrd_core.prm.train import train_prm
from vcrd_core.runs.console import console


def _judge_specs(values: list[str]) -> dict[str, dict]:
    specs: dict[str, dict] = {}
    for value in values:
        label, sep, text = value.partition("=")
        if not sep or not label.strip() or not text.strip():
            raise VcrdError(f"--judge {value!r}: expected LABEL=SPEC, e.g. oracle=oracle or 'PRM={{name: ...}}'")
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise VcrdError(f"--judge {label}: SPEC is not YAML ({str(exc).splitlines()[0]})") from None
        if label.strip() in specs:
            raise VcrdError(f"--judge {label.strip()}: this label is given twice; give each judge its own label")
        specs[label.strip()] = {"name": spec} if isinstance(spec, str) else spec
    return specs


def run(args: argparse.Namespace) -> int:
    out = console()
    if args.prm_command == "label":
        summary = label_store(
            load_config(args.file, args.set),
            args.out,
            roles=args.role,
            limit=args.limit,
            validation=args.validation,
            test=args.test,
            batch_size=args.batch_size,
            console=console(stderr=True),
        )
        work, mean = summary["work"], summary["label_mean"]
        ungraded = f", {work['ungraded']:.0f} continuations ungraded (counted as failures)" if work["ungraded"] else ""
        out.print(
            f"{summary['points']} labelled points in {args.out} (splits {summary['splits']}, mean label "
            f"{'-' if mean is None else f'{mean:.3f}'}); {work['continuations']} continuations for {work['unique']} "
            f"unique of {work['prefixes']} prefixes, {work['eos_graded']} graded at EOS{ungraded}, "
            f"{summary['seconds']:.1f} s"
        )
        return 0
    if args.prm_command == "train":
        info = train_prm(
            args.labels,
            args.base,
            args.out,
            tokenizer_path=args.tokenizer,
            prompt_template=args.prompt_template,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            lora_r=args.lora_r,
            temperature_scaling=not args.no_temperature_scaling,
            seed=args.seed,
            dtype=args.dtype,
            overwrite=args.overwrite,
        )
        out.print(json.dumps(info, indent=2))
        return 0
    report = calibrate(
        load_config(args.file, args.set),
        args.labels,
        _judge_specs(args.judge),
        args.out,
        split=args.split,
        bins=args.bins,
        batch_size=args.batch_size,
    )
    out.print(markdown_table(report))
    return 0
