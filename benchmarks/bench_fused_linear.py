"""Loss forward+backward from hidden states: full tensors vs chunked logits vs fused-linear (vs Liger-Kernel).

The task of one training step's loss: student hidden states ``[N, H]`` (requires grad) and lm_head ``[V, H]``,
teacher hidden states and lm_head (no grad), divergence per row, the token-mean ``Σ_n D_n / N``, backward to
the student hidden states and (by default; ``--frozen-head`` turns it off, as with LoRA) the lm_head weight.

Variants (each measured in its own subprocess so that peak RSS is its own):

* ``full``: ``logits = h @ W.T`` for both models, float32 log-softmax and the divergence on ``[N, V]`` under
  plain autograd;
* ``chunked``: the same logits by one matmul each, then :func:`vcrd_core.losses.chunked.chunked_divergence`
  (memory-bounded over the vocabulary, but the ``[N, V]`` logits and their gradient exist);
* ``fused``: :func:`vcrd_core.losses.fused_linear.fused_linear_divergence` (no ``[N, V]`` tensor at all);
* ``liger``: Liger-Kernel's ``LigerFusedLinearJSDLoss`` (``liger_kernel.chunked_loss``, pure PyTorch,
  ``weight_hard_loss=0``, ``compiled=False`` unless ``--liger-compiled``), only with ``--divergence jsd``
  (the loss it implements; ``beta=0.5`` as vcrd's ``jsd`` default). Liger always computes the lm_head
  weight gradient.

Peak memory is the peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` once the inputs exist, so
the temporaries that built them do not count) minus the RSS right after the inputs (hidden states and both
lm_heads) were allocated: what the loss needs beyond its inputs, gradient buffers included (the
``[V, H]`` weight gradient is 0.87 GiB at V = 151,936, H = 1536, float32). The workers run with
``MALLOC_MMAP_THRESHOLD_=1MiB`` so that freed blocks leave the RSS. Times are the median of ``--repeats``
runs after ``--warmup`` warm-up runs. Every variant's loss, hidden gradient and weight gradient are
compared with the first variant that ran (max abs difference). A variant that cannot run prints
``n/a: reason``; ``--skip`` leaves variants out (e.g. those that do not fit in memory).

    .venv/bin/python benchmarks/bench_fused_linear.py --rows 512 1024
    python3 benchmarks/bench_fused_linear.py --device cuda --dtype bfloat16 --real-vocab 151665 --rows 1024 8192

``--device cuda``: peak memory is the CUDA allocator's peak above what the inputs hold (instead of the RSS), and
each step synchronizes before its time is taken. ``--real-vocab``: only the tokenizer's first ids are compared
(as in training with a padded lm_head; Qwen2.5: 151,665 of 151,936).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _measure import current_rss_bytes, gib, median_seconds, peak_rss_bytes, report, reset_peak_rss, run_worker

VARIANTS = ("full", "chunked", "fused", "liger")


def worker(args: argparse.Namespace) -> None:
    """Run one variant at one N; print a JSON line with its timings and peak memory."""
    import torch

    import vcrd_core
    from vcrd_core.losses.chunked import chunked_divergence
    from vcrd_core.losses.fused_linear import fused_linear_divergence

    torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    n, v, h = args.n, args.vocab, args.hidden
    div = vcrd_core.create(vcrd_core.DIVERGENCES, args.divergence, {})
    liger_loss = None
    if args.variant == "liger":
        if args.real_vocab:
            raise SystemExit("n/a: Liger-Kernel's loss has no real-vocabulary option (run without --real-vocab)")
        if args.divergence != "jsd":
            raise SystemExit("n/a: Liger-Kernel's fused distillation loss here is JSD only (use --divergence jsd)")
        try:
            from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
        except Exception as e:  # reported in the table
            raise SystemExit(f"n/a: liger_kernel does not import ({type(e).__name__}: {e})".splitlines()[0]) from None
        liger_loss = LigerFusedLinearJSDLoss(
            weight_hard_loss=0.0,
            weight_soft_loss=1.0,
            beta=0.5,
            compiled=args.liger_compiled,
            chunk_size=args.chunk_size,
        )

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    scale = 3.0 / h**0.5  # logits of standard deviation ~3, like a trained model's
    student_hidden = torch.randn(n, h, generator=g).to(device, dtype).requires_grad_(True)
    teacher_hidden = torch.randn(n, h, generator=g).to(device, dtype)
    student_weight = (torch.randn(v, h, generator=g) * scale).to(device, dtype).requires_grad_(not args.frozen_head)
    teacher_weight = (torch.randn(v, h, generator=g) * scale).to(device, dtype)
    labels = torch.zeros(n, dtype=torch.long, device=device)
    coefficients = torch.full((n,), 1.0 / n, device=device)
    if cuda:  # GPU memory: the allocator's peak above what the inputs hold
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = current_rss_bytes()
        reset_peak_rss()

    def step() -> torch.Tensor:
        student_hidden.grad = None
        student_weight.grad = None
        real = args.real_vocab or v
        if args.variant == "full":
            lq = torch.log_softmax((student_hidden @ student_weight.T)[:, :real].float(), -1)
            with torch.no_grad():
                lp = torch.log_softmax((teacher_hidden @ teacher_weight.T)[:, :real].float(), -1)
            loss = (div.value(lp, lq) * coefficients).sum()
        elif args.variant == "chunked":
            student_logits = student_hidden @ student_weight.T
            with torch.no_grad():
                teacher_logits = teacher_hidden @ teacher_weight.T
            values = chunked_divergence(
                div, teacher_logits, student_logits, chunk_size=args.chunk_size, vocab_size=args.real_vocab
            )
            loss = (values * coefficients).sum()
        elif args.variant == "fused":
            out = fused_linear_divergence(
                div,
                student_hidden,
                student_weight,
                teacher_hidden,
                teacher_weight,
                weights=coefficients,
                chunk_size=args.chunk_size,
                vocab_size=args.real_vocab,
            )
            loss = out.loss
        else:
            assert liger_loss is not None
            loss = liger_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, labels)
        loss.backward()
        if cuda:
            torch.cuda.synchronize(device)
        return loss.detach()

    seconds, loss = median_seconds(step, warmup=args.warmup, repeats=args.repeats)
    peak = (torch.cuda.max_memory_allocated(device) if cuda else peak_rss_bytes()) - baseline
    grads = {"loss": loss.float().cpu(), "hidden": student_hidden.grad.cpu()}
    if student_weight.grad is not None:
        grads["weight"] = student_weight.grad.cpu()
    torch.save(grads, args.out)
    report(args.variant, seconds, peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[512], help="decision points N (several allowed)")
    parser.add_argument("--vocab", type=int, default=151_936, help="V (Qwen2.5-1.5B lm_head)")
    parser.add_argument("--hidden", type=int, default=1536, help="H (Qwen2.5-1.5B)")
    parser.add_argument(
        "--real-vocab", type=int, default=None, help="the tokenizer's real ids (Qwen2.5: 151,665; not for liger)"
    )
    parser.add_argument("--chunk-size", type=int, default=128, help="rows per chunk (chunked, fused, liger)")
    parser.add_argument("--divergence", default="jsd", help="vcrd divergence (jsd: comparable with Liger)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--frozen-head", action="store_true", help="the student lm_head does not require grad")
    parser.add_argument("--liger-compiled", action="store_true", help="let Liger torch.compile its chunk step")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the box is shared)")
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="cuda: peak is the allocator's, above the inputs"
    )
    parser.add_argument("--skip", nargs="*", default=[], help="variants to leave out, as VARIANT or VARIANT@N")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        worker(args)
        return

    import torch

    print(
        f"{args.divergence}, V={args.vocab:,} (real {args.real_vocab or args.vocab:,}), H={args.hidden}, {args.dtype}, "
        f"chunk={args.chunk_size} rows, "
        f"lm_head {'frozen' if args.frozen_head else 'trained'}, {args.device}, {args.threads} thread(s), "
        f"median of {args.repeats} after {args.warmup} warm-up"
    )
    columns = ("fwd+bwd s", "peak extra", "max|dloss|", "max|dgrad_h|", "max|dgrad_W|")
    header = f"{'N':>6} {'variant':<8} " + " ".join(f"{c:>12}" for c in columns)
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.rows:
            ref = None
            for variant in VARIANTS:
                if variant in args.skip or f"{variant}@{n}" in args.skip:
                    print(f"{n:>6} {variant:<8} skipped")
                    continue
                out = Path(tmp) / f"{variant}-{n}.pt"
                proc, r = run_worker(__file__, "--variant", variant, "--n", str(n), "--out", str(out))
                if r is None:
                    lines = (proc.stderr.strip() or f"exit {proc.returncode}").splitlines()
                    reason = next((x for x in lines if x.startswith("n/a:")), lines[-1])
                    print(f"{n:>6} {variant:<8} {reason if reason.startswith('n/a') else 'failed: ' + reason}")
                    continue
                tensors = torch.load(out)
                out.unlink()
                if ref is None:
                    ref = tensors
                diffs = []
                for key in ("loss", "hidden", "weight"):
                    if key in tensors and key in ref:
                        diffs.append(f"{(tensors[key].double() - ref[key].double()).abs().max().item():>12.2e}")
                    else:
                        diffs.append(f"{'-':>12}")
                print(f"{n:>6} {variant:<8} {r['seconds']:>12.2f} {gib(r['peak_bytes']):>12} " + " ".join(diffs))
                sys.stdout.flush()


if __name__ == "__main__":
    main()
