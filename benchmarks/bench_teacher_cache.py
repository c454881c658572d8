"""What the top-k teacher cache costs in accuracy, and what it saves in time, on this CPU.

**Error table.** At N decision points of a real-sized vocabulary (V = 151,936, Qwen2.5's lm_head), the teacher's
logits follow a Zipf profile (logit of the id of rank r = -s log r, ids shuffled per point, s uniform in [0.8, 2.5]
per point, so that peaked and flat next-token distributions both occur, as in a trained LM; the top-1 probabilities
are printed; random-weight models give near-uniform logits, which no trained teacher has), the student's are the
teacher's plus Gaussian noise (a student near the teacher). For each k: the mean tail mass, the relative error of
SKL, SRKL and JSD (|D_k - D| / D, mean and max over points), the relative error of the student-logit gradient (‖g_k
- g‖ / ‖g‖ over the batch), and the relative error of ``teacher_likelihood``'s ``r_t = Σ p²`` computed from the
top-k alone. The cache's bytes per million decision points are ``6k + 4`` (float16 log-probabilities) before
compression. With ``--demo DIR`` (a ``make demo`` output), the same table on the toy task's trained teacher and
student over their teacher rollouts (V = 17).

**Step time.** The same static VCRD step (``vcrd train``, constant weights, both streams, LoRA) with the teacher
forward and from a top-k cache, side by side in one process: tiny Qwen2s (teacher hidden ``--teacher-hidden``, 4
layers; student hidden 64, 2 layers; ASCII vocabulary), median step time.

``python benchmarks/bench_teacher_cache.py [--points 256] [--demo runs/demo]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KS = (8, 32, 64, 128, 256, 512)


def zipf_logits(n: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = 0.8 + 1.7 * torch.rand(n, 1, generator=g)  # Zipf exponents
    ranks = torch.arange(1, vocab + 1, dtype=torch.float32)
    teacher = torch.empty(n, vocab)
    for i in range(n):
        teacher[i, torch.randperm(vocab, generator=g)] = -s[i] * ranks.log()
    student = teacher + torch.randn(n, vocab, generator=g)
    return teacher, student


def error_rows(teacher: torch.Tensor, student: torch.Tensor, ks: tuple[int, ...], vocab: int) -> list[dict]:
    import vcrd_core
    from vcrd_core.losses.chunked import chunked_divergence
    from vcrd_core.losses.sparse import sparse_divergence, topk_teacher

    rows = torch.arange(teacher.shape[0])
    out = []
    p = torch.softmax(teacher.double()[:, :vocab], -1)
    r_t = (p * p).sum(-1)
    for name in ("skl", "srkl", "jsd"):
        div = vcrd_core.create(vcrd_core.DIVERGENCES, name, {})
        s = student.clone().requires_grad_(True)
        exact = chunked_divergence(div, teacher, s, vocab_size=vocab)
        exact.sum().backward()
        g_exact = s.grad.clone()
        for k in ks:
            if k > vocab:
                continue
            sparse = topk_teacher(teacher, rows, k, vocab_size=vocab)
            sparse = type(sparse)(sparse.ids, sparse.logp.half().float(), sparse.tail, 1.0)  # as stored (float16)
            s = student.clone().requires_grad_(True)
            approx = sparse_divergence(div, sparse, s, rows=rows, vocab_size=vocab)
            approx.sum().backward()
            rel = (approx.double() - exact.double()).abs() / exact.double().clamp_min(1e-12)
            r_t_k = (sparse.logp.double().exp() ** 2).sum(-1)
            out.append({
                "divergence": name, "k": k, "tail_mass": float(sparse.tail_mass().double().mean()),
                "rel_err_mean": float(rel.mean()), "rel_err_max": float(rel.max()),
                "grad_rel_err": float((s.grad - g_exact).norm() / g_exact.norm()),
                "r_t_rel_err_mean": float(((r_t - r_t_k).abs() / r_t).mean()),
            })  # fmt: skip
    return out


def demo_logits(demo: Path, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    from vcrd_core.rollouts.sequences import RolloutSequence, StreamBatch
    from vcrd_core.rollouts.store import RolloutStore

    teacher = __import__("transformers").AutoModelForCausalLM.from_pretrained(demo / "teacher-sft" / "final").eval()
    student = __import__("transformers").AutoModelForCausalLM.from_pretrained(demo / "student-sft" / "final").eval()
    rows = RolloutStore(demo / "rollouts").read(["teacher"]).to_pylist()
    t_rows, s_rows, n = [], [], 0
    for start in range(0, len(rows), 32):
        seqs = [RolloutSequence(r["prompt_token_ids"], r["response_token_ids"]) for r in rows[start : start + 32]]
        batch = StreamBatch.of(seqs, 0)
        with torch.no_grad():
            t = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            s = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        t_rows.append(batch.points.logits_at(t))
        s_rows.append(batch.points.logits_at(s))
        n += batch.points.num_points
        if n >= points:
            break
    return torch.cat(t_rows)[:points].float(), torch.cat(s_rows)[:points].float()


def step_times(args: argparse.Namespace, root: Path) -> list[dict]:
    import yaml

    from tests.rollout_helpers import save_tiny_model
    from vcrd_core.config.loader import load_config
    from vcrd_core.rollouts.run import generate_rollouts
    from vcrd_core.rollouts.teacher_cache import build_teacher_cache
    from vcrd_core.training.run import build_trainer, prepare

    teacher = save_tiny_model(root / "teacher", seed=0, hidden_size=args.teacher_hidden, layers=4)
    student = save_tiny_model(root / "student", seed=1, hidden_size=64, layers=2)
    prompts = root / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{i}+{i % 7}="}) + "\n" for i in range(64)))
    cfg = {
        "seed": 0,
        "models": {"teacher": {"path": str(teacher), "dtype": "float32"},
                   "student": {"path": str(student), "dtype": "float32"}},
        "data": {"train": str(prompts), "template": "plain", "max_prompt_length": 16, "max_length": 64},
        "rollouts": {"max_new_tokens": 48, "temperature": 1.0, "chunk_size": 32, "store": str(root / "store"),
                     "generator": {"name": "hf", "params": {"batch_size": 64}}},
        "weighting": {"name": "constant"},
        "judge": None,
        "training": {"learning_rate": 1e-4, "max_steps": args.steps, "per_device_batch_size": 8,
                     "mixed_precision": "no", "warmup_ratio": 0.0, "logging_steps": 1, "loss_engine": "logits",
                     "lora": {"r": 16, "alpha": 32},
                     "args": {"use_cpu": True, "disable_tqdm": True, "dataloader_num_workers": 0}},
        "output": {"dir": str(root / "run")},
    }  # fmt: skip
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    config = load_config(root / "run.yaml")
    generate_rollouts(config)
    build_teacher_cache(config, k=args.k, out=root / "cache")
    out = []
    for label, extra in (("teacher forward", {}), (f"top-{args.k} cache", {"teacher_cache": str(root / "cache")})):
        c = load_config(root / "run.yaml", [f"training.{k}={v}" for k, v in extra.items()] + [
            f"output.dir={root / label.replace(' ', '-')}"])  # fmt: skip
        trainer = build_trainer(c, prepare(c, resume=False, rows=None))
        times: list[float] = []
        original = trainer.training_step

        def timed(*a: Any, _orig: Any = original, _times: list[float] = times, **kw: Any) -> Any:
            t0 = time.perf_counter()
            result = _orig(*a, **kw)
            _times.append(time.perf_counter() - t0)
            return result

        trainer.training_step = timed  # type: ignore[method-assign]
        trainer.train()
        out.append({"variant": label, "step_s": statistics.median(times[1:]), "loss_engine": trainer.loss_engine})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--demo", type=Path, default=None, help="a `make demo` output (runs/demo) for the toy-task table")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--k", type=int, default=32, help="k of the step-time comparison")
    ap.add_argument("--teacher-hidden", type=int, default=512)
    args = ap.parse_args()
    torch.manual_seed(0)
    teacher, student = zipf_logits(args.points, args.vocab, seed=0)
    tables = {"zipf": error_rows(teacher, student, KS, args.vocab)}
    p = torch.softmax(teacher, -1)
    print(f"Zipf teacher, V = {args.vocab:,}, {args.points} points: top-1 probability mean "
          f"{float(p.max(-1).values.mean()):.2f} (min {float(p.max(-1).values.min()):.2f}, max "
          f"{float(p.max(-1).values.max()):.2f}); student = teacher + N(0, 1) logits")  # fmt: skip
    if args.demo is not None:
        t, s = demo_logits(args.demo, args.points)
        tables["toy"] = error_rows(t, s, (1, 2, 4, 8), int(t.shape[-1]))
    for name, rows in tables.items():
        print(f"\n{name}: | divergence | k | tail mass | rel. error mean | rel. error max | grad rel. error | "
              "r_t rel. error | bytes / 1M points |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['divergence']} | {r['k']} | {r['tail_mass']:.3g} | {r['rel_err_mean']:.2e} | "
                  f"{r['rel_err_max']:.2e} | {r['grad_rel_err']:.2e} | {r['r_t_rel_err_mean']:.2e} | "
                  f"{(6 * r['k'] + 4):,} MB |")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        steps = step_times(args, Path(tmp))
    base = steps[0]["step_s"]
    print(f"\nstatic VCRD step on this CPU ({args.steps} steps, the first not timed; teacher hidden "
          f"{args.teacher_hidden} x 4 layers, student hidden 64 x 2; 8 sequences per stream)")  # fmt: skip
    print("| variant | loss engine | step (s) | speed-up |")
    print("|---|---|---:|---:|")
    for r in steps:
        print(f"| {r['variant']} | {r['loss_engine']} | {r['step_s']:.4f} | {base / r['step_s']:.2f}x |")
    print(json.dumps({"errors": tables, "steps": steps}))


if __name__ == "__main__":
    main()
