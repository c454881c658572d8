"""What the ``mc_value`` judge costs per decision point, and ``vcrd prm train``'s throughput, on this CPU.

``mc_value``: one teacher-prefix batch of toy-task derivations (``--rollouts`` rollouts, the student's proposal
differing from the rollout token at ``--mismatch`` of the points), scored with K continuations per prefix by a
tiny random Qwen2 completer (hidden ``--hidden``, ASCII tokenizer, ``--new-tokens`` new tokens at most) through the
``hf`` and ``vllm`` generators, each with deduplication on and off and with step-boundary scoring (``=``). A table:
decision points, prefixes asked for, unique prefixes (the share deduplication saves), prefixes graded at EOS,
continuations generated, seconds, continuations/s and decision points/s. A random completer writes until the
budget, so the continuation lengths (and times) are the budget's worst case.

``vcrd prm train``: a value-head PRM on Monte-Carlo labels of the toy task (rule-based rollouts and completer, so
the labels are cheap), on tiny Qwen2 bodies of two widths: labelled sequences/s and points/s over the epochs.

``python benchmarks/bench_mc_value.py [--rollouts 16] [--samples 4] [--new-tokens 24] [--hidden 128]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def request(tok: object, rollouts: int, mismatch: float, seed: int = 0) -> object:
    import torch
    from vcrd_arithmetic.grammar import canonical_derivation, evaluate, random_problem

    from vcrd_core.data.examples import Example
    from vcrd_core.decision_points import DecisionPoints, Stream
    from vcrd_core.judging.judge import JudgeRequest

    rng = random.Random(seed)
    problems = [random_problem(rng, rng.choice((3, 4))) for _ in range(rollouts)]
    prompts = [tok.encode(p, add_special_tokens=False) for p in problems]
    responses = [[*tok.encode(canonical_derivation(p), add_special_tokens=False), tok.eos_token_id] for p in problems]
    length = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    ids = torch.zeros(rollouts, length, dtype=torch.long)
    attn, resp = torch.zeros_like(ids), torch.zeros_like(ids)
    alt = torch.zeros_like(ids)
    digits = tok.encode("0123456789", add_special_tokens=False)
    for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[b, : len(p) + len(r)] = torch.tensor(p + r)
        attn[b, : len(p) + len(r)] = 1
        resp[b, len(p) : len(p) + len(r)] = 1
        alt[b, len(p) : len(p) + len(r)] = torch.tensor(
            [rng.choice(digits) if rng.random() < mismatch else t for t in r]
        )
    return JudgeRequest(
        stream=Stream.TEACHER_PREFIX,
        input_ids=ids,
        attention_mask=attn,
        points=DecisionPoints.from_masks(attn, resp),
        proposals=alt,
        prompt_lengths=torch.tensor([len(p) for p in prompts]),
        examples=[Example(str(i), p, str(evaluate(p))) for i, p in enumerate(problems)],
    )


def bench_judge(args: argparse.Namespace, root: Path) -> list[dict]:
    from tests.rollout_helpers import ascii_tokenizer, save_tiny_model
    from vcrd_core import create
    from vcrd_core.judging.judge import JudgeContext

    model = save_tiny_model(root / "completer", seed=0, hidden_size=args.hidden)
    tok = ascii_tokenizer()

    class Spec:
        path, dtype = str(model), "float32"

    generators = {"hf": {"device": "cpu", "batch_size": 64}}
    if importlib.util.find_spec("vllm") is not None:
        generators["vllm"] = {"gpu_memory_utilization": 0.3, "enforce_eager": True, "max_model_len": 256}
    req = request(tok, args.rollouts, args.mismatch)
    rows = []
    for gen, gen_params in generators.items():
        params = {
            "evaluator": {"name": "exact", "params": {"extract": "vcrd_arithmetic.grammar:final_answer"}},
            "generator": {"name": gen, "params": gen_params},
            "samples": args.samples,
            "max_new_tokens": args.new_tokens,
        }
        judge = create("judges", "mc_value", params)
        judge.load(JudgeContext(tokenizer=tok, vocab_size=len(tok), models={"teacher": Spec}))
        judge.score(request(tok, 2, 0.0, seed=99))  # warm-up (engine start, first kernels)
        base = judge.params
        variants = [("dedup", {}), ("no dedup", {"deduplicate": False}), ("dedup + steps '='", {"step_separator": "="})]
        for label, extra in variants:  # one loaded completer: only the judge's own switches change
            judge.params = base.model_copy(update=extra)
            times = []
            for _ in range(args.repeats):  # the median of --repeats timed calls on the same request
                judge.reset_stats()
                start = time.perf_counter()
                judge.score(req)
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            s = judge.stats
            rows.append(
                {
                    "generator": gen,
                    "variant": label,
                    "points": int(s["points"]),
                    "prefixes": int(s["prefixes"]),
                    "unique": int(s["unique"]),
                    "saved": 1 - s["unique"] / s["prefixes"],
                    "eos_graded": int(s["eos_graded"]),
                    "continuations": int(s["continuations"]),
                    "seconds": seconds,
                    "continuations_per_s": s["continuations"] / seconds,
                    "points_per_s": s["points"] / seconds,
                }
            )
        judge.close()
    return rows


def bench_prm_train(args: argparse.Namespace, root: Path) -> list[dict]:
    import yaml
    from vcrd_arithmetic.task import build_task

    from tests.core.training.helpers import save_model
    from vcrd_core.config.loader import load_config
    from vcrd_core.prm.labels import label_store
    from vcrd_core.prm.train import train_prm
    from vcrd_core.rollouts.run import generate_rollouts

    build_task(root / "task")
    lines = (root / "task" / "distill.jsonl").read_text().splitlines()[: args.prm_prompts]
    (root / "p.jsonl").write_text("\n".join(lines) + "\n")
    save_model(root / "teacher", 32, seed=0)
    save_model(root / "student", 16, seed=1)
    cfg = {
        "models": {
            "teacher": {"path": str(root / "teacher"), "dtype": "float32"},
            "student": {"path": str(root / "student"), "dtype": "float32"},
        },
        "data": {"train": str(root / "p.jsonl"), "template": "plain", "answer_field": "answer",
                 "max_prompt_length": 16, "max_length": 48},
        "rollouts": {"generator": {"name": "arithmetic_solver", "params": {"error_rate": 0.08}}, "max_new_tokens": 32,
                     "chunk_size": 100, "store": str(root / "store")},
        "judge": {"name": "mc_value", "params": {
            "samples": 8, "generator": {"name": "arithmetic_solver", "params": {"error_rate": 0.03}},
            "evaluator": {"name": "exact", "params": {"extract": "vcrd_arithmetic.grammar:final_answer"}}}},
        "output": {"dir": str(root / "out")},
    }  # fmt: skip
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    config = load_config(root / "run.yaml")
    generate_rollouts(config)
    label_store(config, root / "labels")
    rows = []
    for hidden in (32, 128):
        base = save_model(root / f"base-{hidden}", hidden, seed=0)
        info = train_prm(root / "labels", base, root / f"prm-{hidden}", prompt_template="{problem}", epochs=2,
                         batch_size=16)  # fmt: skip
        rows.append(
            {
                "hidden": hidden,
                "sequences": info["train_sequences"],
                "points": info["train_points"],
                "seconds": info["train_seconds"],
                "sequences_per_s": info["sequences_per_second"],
                "points_per_s": info["train_points"] * 2 / info["train_seconds"],
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--mismatch", type=float, default=0.2, help="share of points where the proposal differs")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--prm-prompts", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per variant (the median is reported)")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        judge_rows = bench_judge(args, Path(tmp) / "judge")
        prm_rows = bench_prm_train(args, Path(tmp) / "prm")
    print(f"mc_value, K={args.samples}, budget {args.new_tokens} new tokens, {args.rollouts} rollouts, "
          f"{args.mismatch:.0%} proposals differ, completer hidden {args.hidden}, "
          f"median of {args.repeats}")  # fmt: skip
    head = ("generator", "variant", "points", "prefixes", "unique", "saved", "EOS-graded", "continuations", "s",
            "cont/s", "points/s")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in judge_rows:
        print(f"| {r['generator']} | {r['variant']} | {r['points']} | {r['prefixes']} | {r['unique']} | "
              f"{r['saved']:.0%} | {r['eos_graded']} | {r['continuations']} | {r['seconds']:.2f} | "
              f"{r['continuations_per_s']:.0f} | {r['points_per_s']:.1f} |")  # fmt: skip
    print("\nvcrd prm train (2 epochs, batch 16, full fine-tuning)")
    print("| body hidden | sequences | points | s | sequences/s | points/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in prm_rows:
        print(f"| {r['hidden']} | {r['sequences']} | {r['points']} | {r['seconds']:.2f} | "
              f"{r['sequences_per_s']:.0f} | {r['points_per_s']:.0f} |")  # fmt: skip
    print(json.dumps({"mc_value": judge_rows, "prm_train": prm_rows}))


if __name__ == "__main__":
    main()
