"""One VCRD training step's time split (teacher forward, student forward, judge, loss, backward) for four
variants on the same tiny models, measured in one run so the ratios compare:

* constant weights (no judge), * offline VCRD (weights from the rollouts), * online teacher_likelihood,
* online prm_value_head (a tiny value-head PRM; the student-prefix stream is scored once, the teacher-prefix
  stream every step).

``python benchmarks/bench_train_step.py [--steps 10] [--batch 8] [--hidden 128]``. CPU by default; the times are
means over the steps after the first (warm-up).
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
    results = {}
    for name, (sections, offline) in variants.items():
        training = {"max_steps": args.steps, "per_device_batch_size": args.batch, "logging_steps": 1000}
        cfg = config_dict(root / name.replace(" ", "_"), teacher, student, training=training, **sections)
        config = run_config(cfg)
        prepared = prepare(config, resume=False, rows=data(args.batch * args.steps, args.length, offline))
        trainer = build_trainer(config, prepared)
        trainer.train()
        steps = [json.loads(line) for line in (Path(cfg["output"]["dir"]) / "metrics.jsonl").read_text().splitlines()]
        steps = steps[1:]
        mean = {p: sum(s[f"time/{p}"] for s in steps) / len(steps) for p in PARTS}
        mean["step"] = sum(s["step_seconds"] for s in steps) / len(steps)
        mean["static_scoring"] = trainer.static_scoring_seconds
        results[name] = mean
    results.pop("warm-up (not reported)")
    base = results["constant"]["step"]
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch} x 2 streams, response {args.length + 1}, "
          f"student hidden {args.hidden}, teacher hidden {2 * args.hidden}, {args.steps - 1} timed steps")  # fmt: skip
    print("| variant | step (s) | vs constant | teacher fwd | student fwd | judge | loss | backward+optimizer | "
          "static scoring (s, once) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, m in results.items():
        shares = " | ".join(f"{m[p] / m['step']:.0%}" for p in PARTS)
        print(f"| {name} | {m['step']:.3f} | {m['step'] / base:.2f}x | {shares} | {m['static_scoring']:.2f} |")


if __name__ == "__main__":
    main()
