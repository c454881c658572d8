"""``vcrd prm label|train|calibrate``: the parsers (what runs: :mod:`vcrd_core.commands.prm_run`).

Monte-Carlo value labels for a rollout store, a value-head PRM trained on them, and a calibration report of any
judges against held-out labels (README "Calibrated judges").
"""

from __future__ import annotations

import argparse

from vcrd_core.commands import add_command, add_config_arguments, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "prm",
        "vcrd_core.commands.prm_run:run",
        help="Monte-Carlo value labels, a value-head PRM trained on them, and judges' calibration reports",
        description="label: Monte-Carlo labels of a rollout store's decision points (the config's mc_value judge) "
        "into a Parquet dataset; train: a value-head PRM (Skywork layout, loaded by prm_value_head) fitted to them "
        "with soft binary cross-entropy; calibrate: Brier score, ECE and a reliability diagram of judges on the "
        "held-out labels.",
    )
    actions = p.add_subparsers(dest="prm_command", metavar="ACTION", required=True)

    label = actions.add_parser("label", help="Monte-Carlo value labels of a rollout store (Parquet)")
    add_config_arguments(label, "judge.params.samples=16")
    label.add_argument("--out", required=True, metavar="DIR", help="labels directory (resumable)")
    label.add_argument("--role", action="append", choices=("teacher", "student"), help="label only these rollouts")
    label.add_argument(
        "--limit", type=positive_int, default=None, metavar="N", help="label the first N rollouts per role"
    )
    label.add_argument("--validation", type=float, default=0.1, help="share of prompts held out for validation")
    label.add_argument("--test", type=float, default=0.2, help="share of prompts held out for testing")
    label.add_argument("--batch-size", type=positive_int, default=16, help="rollouts per generate call (default 16)")

    train = actions.add_parser("train", help="a value-head PRM fitted to Monte-Carlo labels")
    train.add_argument("--labels", required=True, metavar="DIR", help="a `vcrd prm label` directory")
    train.add_argument("--base", required=True, metavar="MODEL", help="causal LM directory whose body the PRM uses")
    train.add_argument("--out", required=True, metavar="DIR", help="where the PRM is saved")
    train.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer directory (default: --base)")
    train.add_argument(
        "--prompt-template",
        default="{bos}{problem}\n",
        help="the PRM's prompt; the prm_value_head judge must be given the same (default: Skywork's)",
    )
    train.add_argument("--epochs", type=float, default=3.0)
    train.add_argument("--learning-rate", type=float, default=1e-4)
    train.add_argument("--batch-size", type=positive_int, default=16, help="labelled rollouts per step")
    train.add_argument("--lora-r", type=int, default=0, help="LoRA rank on the body (0: full fine-tuning)")
    train.add_argument("--no-temperature-scaling", action="store_true", help="do not fit T on the validation split")
    train.add_argument("--dtype", default="float32", help="body dtype (float32, bfloat16, ...)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")

    cal = actions.add_parser("calibrate", help="Brier, ECE and a reliability diagram of judges on held-out labels")
    add_config_arguments(cal, "models.teacher.dtype=float32")
    cal.add_argument("--labels", required=True, metavar="DIR", help="a `vcrd prm label` directory")
    cal.add_argument(
        "--judge",
        action="append",
        default=[],
        metavar="LABEL=SPEC",
        help="a judge to report, SPEC as YAML: a name or {name: ..., params: {...}} (repeatable)",
    )
    cal.add_argument("--out", required=True, metavar="DIR", help="report directory")
    cal.add_argument(
        "--split", default="test", choices=("train", "validation", "test"), help="labels to report on (default test)"
    )
    cal.add_argument(
        "--bins", type=positive_int, default=10, help="equal-width bins of the ECE and the diagram (default 10)"
    )
    cal.add_argument("--batch-size", type=positive_int, default=16, help="rollouts per judge call (default 16)")
