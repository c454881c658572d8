"""``vcrd teacher-cache`` (the parser: :mod:`vcrd_core.commands.teacher_cache`)."""

from __future__ import annotations

import argparse

from vcrd_core.config.loader import load_config
from vcrd_core.rollouts.teacher_cache import build_teacher_cache
from vcrd_core.runs.console import console


def run(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    summary = build_teacher_cache(
        config,
        k=args.k,
        out=args.out,
        batch_size=args.batch_size,
        logp_dtype=args.logp_dtype,
        overwrite=args.overwrite,
        console=console(stderr=True),
    )
    per_million = summary["bytes"] / summary["points"] * 1e6 if summary["points"] else None
    size = f"{summary['bytes'] / 2**20:.1f} MiB"
    rate = f" ({per_million / 2**20:.0f} MiB per million decision points)" if per_million else ""
    console().print(
        f"teacher cache {summary['dir']}: top-{summary['identity']['k']} of {summary['rollouts']} rollouts, "
        f"{summary['points']} decision points ({summary['parts_written']} parts written now), {size}{rate}, "
        f"{summary['seconds']:.1f} s"
    )
    if summary["tail_mass_mean"] is not None:
        console().print(
            f"mean teacher mass outside the top-{summary['identity']['k']}: {100 * summary['tail_mass_mean']:.2f}% "
            "(the error of the tail bucket grows with it; README 'Teacher-free steps')"
        )
    return 0
