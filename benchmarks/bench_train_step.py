"""One VCRD training step's time split (teacher forward, student forward, judge, loss, backward) for four
variants on the same tiny models, measured in one run so the ratios compare:

* constant weights (no judge), * offline VCRD (weights from the rollouts), * online teacher_likelihood,
* online prm_value_head (a tiny value-head PRM; the student-prefix stream is scored once, the teacher-prefix
  stream every step).

Each variant runs on each loss engine (``training.loss_engine``: ``logits`` and ``fused_linear``), every ratio
against the constant-weight step of the same engine.

``python benchmarks/bench_train_step.py [--steps 10] [--batch 8] [--hidden 128] [--engines logits fused_linear]``.
CPU by default; the times are means over the steps after the first (warm-up).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from tests.core.training.helpers import (
    config_dict,
    run_config,
    save_model,
)
from tests.plugins.judges.test_prm import CHARS, SPECIALS, make_tokenizer, write_checkpoint
from vcrd_core.training.run import build_trainer, prepare

PARTS = ("teacher_forward", "student_forward", "judge", "loss", "backward")


def data(n: int, length: int, offline: bool) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        for role in ("teacher", "student"):
            response = [*torch.randint(3, 98, (length,), generator=g).tolist(), 0]
            row = {"prompt_index": i, "sample_index": 0, "role": role, "prompt_token_ids": [10, 20, 30, 40],
                   "response_token_ids": response}  # fmt: skip
            if offline:
                row["weights"] = [1.0] * len(response)
            out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=48)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--engines", nargs="+", default=["logits", "fused_linear"], choices=["logits", "fused_linear"])
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vcrd-bench-"))
    vocab = len(SPECIALS) + len(CHARS)
    teacher = save_model(root / "t", args.hidden * 2, 0, vocab=vocab)
    student = save_model(root / "s", args.hidden, 1, vocab=vocab)
    for d in (teacher, student):
        make_tokenizer([*SPECIALS, *CHARS]).save_pretrained(d)
    prm = write_checkpoint(root / "prm", "value_head")
    variants = {
        "warm-up (not reported)": ({"weighting": {"name": "constant"}, "judge": None}, False),
        "constant": ({"weighting": {"name": "constant"}, "judge": None}, False),
        "offline VCRD": ({"scoring": {"mode": "offline"}, "judge": {"name": "teacher_likelihood"}}, True),
        "online teacher_likelihood": ({"judge": {"name": "teacher_likelihood"}}, False),
        "online prm_value_head": ({"judge": {"name": "prm_value_head", "params": {"path": str(prm)}}}, False),
    }
    results: dict[tuple[str, str], dict[str, float]] = {}
    for engine in args.engines:
        for name, (sections, offline) in variants.items():
            training = {"max_steps": args.steps, "per_device_batch_size": args.batch, "logging_steps": 1000,
                        "loss_engine": engine}  # fmt: skip
            cfg = config_dict(root / engine / name.replace(" ", "_"), teacher, student, training=training, **sections)
            config = run_config(cfg)
            prepared = prepare(config, resume=False, rows=data(args.batch * args.steps, args.length, offline))
            trainer = build_trainer(config, prepared)
            trainer.train()
            assert trainer.loss_engine == engine, (trainer.loss_engine, trainer.loss_engine_reason)
            lines = (Path(cfg["output"]["dir"]) / "metrics.jsonl").read_text().splitlines()
            steps = [json.loads(line) for line in lines][1:]
            mean = {p: sum(s[f"time/{p}"] for s in steps) / len(steps) for p in PARTS}
            mean["step"] = sum(s["step_seconds"] for s in steps) / len(steps)
            mean["static_scoring"] = trainer.static_scoring_seconds
            if not name.startswith("warm-up"):
                results[(engine, name)] = mean
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch} x 2 streams, response {args.length + 1}, "
          f"student hidden {args.hidden}, teacher hidden {2 * args.hidden}, {args.steps - 1} timed steps")  # fmt: skip
    print("| engine | variant | step (s) | vs constant | teacher fwd | student fwd | judge | loss "
          "| backward+optimizer | static scoring (s, once) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (engine, name), m in results.items():
        base = results[(engine, "constant")]["step"]
        shares = " | ".join(f"{m[p] / m['step']:.0%}" for p in PARTS)
        print(
            f"| {engine} | {name} | {m['step']:.3f} | {m['step'] / base:.2f}x | {shares} | {m['static_scoring']:.2f} |"
        )


if __name__ == "__main__":
    main()
