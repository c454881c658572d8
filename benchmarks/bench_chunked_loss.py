"""Forward+backward time and peak memory of a full-vocabulary divergence, three ways.

Variants (each measured in its own subprocess so that peak RSS is its own):

* ``full``: the straightforward version: log-softmax of both ``[N, V]`` logits and the divergence
  under autograd; every intermediate lives until backward.
* ``loop``: a plain row-chunk loop under autograd; it saves nothing, since every chunk's
  intermediates are kept for backward (DESIGN.md §2.5).
* ``engine``: :func:`vcrd_core.losses.chunked.chunked_divergence`, the custom autograd.Function that
  computes each chunk's gradient in forward and frees the chunk.

Peak memory is the peak RSS at the end minus the RSS right after the inputs were allocated, i.e.
what the loss needs beyond its inputs (the gradient buffer included). The workers run with
``MALLOC_MMAP_THRESHOLD_=1MiB`` so that freed blocks leave the RSS (this adds page-fault time to
every variant alike). For reference the table also shows the bytes of the two logits tensors plus
one gradient. Times are the median of ``--repeats`` runs after one warm-up.
Finally each variant's values and gradients are compared with ``full`` (max abs difference).

    .venv/bin/python benchmarks/bench_chunked_loss.py --rows 256
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _measure import current_rss_bytes, gib, median_seconds, peak_rss_bytes, report, run_worker

VARIANTS = ("full", "loop", "engine")


def worker(args: argparse.Namespace) -> None:
    """Run one variant; print a JSON line with its timings and peak memory."""
    import torch

    import vcrd_core
    from vcrd_core.losses.chunked import chunked_divergence

    torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    div = vcrd_core.create(vcrd_core.DIVERGENCES, args.divergence, {})
    g = torch.Generator().manual_seed(0)
    teacher = (torch.randn(args.rows, args.vocab, generator=g) * 3).to(dtype)
    student = (torch.randn(args.rows, args.vocab, generator=g) * 3).to(dtype).requires_grad_(True)
    baseline = current_rss_bytes()

    def step() -> torch.Tensor:
        student.grad = None
        if args.variant == "full":
            lp = torch.log_softmax(teacher.float(), -1)
            lq = torch.log_softmax(student.float(), -1)
            values = div.value(lp, lq)
        elif args.variant == "loop":
            parts = []
            for start in range(0, args.rows, args.chunk_size):
                t, s = teacher[start : start + args.chunk_size], student[start : start + args.chunk_size]
                parts.append(div.value(torch.log_softmax(t.float(), -1), torch.log_softmax(s.float(), -1)))
            values = torch.cat(parts)
        else:
            values = chunked_divergence(div, teacher, student, chunk_size=args.chunk_size)
        values.sum().backward()
        return values.detach()

    seconds, values = median_seconds(step, warmup=1, repeats=args.repeats)
    peak = peak_rss_bytes() - baseline
    assert student.grad is not None
    torch.save({"values": values, "grad": student.grad}, args.out)
    report(args.variant, seconds, peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="decision points N")
    parser.add_argument("--vocab", type=int, default=151_936, help="V (Qwen2.5 1.5B lm_head)")
    parser.add_argument("--chunk-size", type=int, default=32, help="rows per chunk for loop and engine")
    parser.add_argument("--divergence", default="skl")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the box is shared)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        worker(args)
        return

    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            out = Path(tmp) / f"{variant}.pt"
            proc, result = run_worker(__file__, "--variant", variant, "--out", str(out))
            if result is None:
                sys.exit(f"variant {variant} failed:\n{proc.stderr}")
            results[variant] = {**result, "tensors": torch.load(out)}

        elem = 2 if args.dtype == "bfloat16" else 4
        io_bytes = 3 * args.rows * args.vocab * elem  # teacher + student logits + student grad
        print(
            f"{args.divergence}, N={args.rows}, V={args.vocab:,}, chunk={args.chunk_size} rows, {args.dtype} logits, "
            f"{args.threads} thread(s), median of {args.repeats}"
        )
        print(
            f"logits + grad (reference): {gib(io_bytes)}; one [N, V] float32 block: {gib(args.rows * args.vocab * 4)}"
        )
        columns = ("fwd+bwd s", "peak extra", "max|dvalue|", "max|dgrad|", "max|grad|")
        header = f"{'variant':<8} " + " ".join(f"{c:>12}" for c in columns)
        print(header)
        print("-" * len(header))
        ref = results["full"]["tensors"]
        for variant in VARIANTS:
            r = results[variant]
            dv = (r["tensors"]["values"].double() - ref["values"].double()).abs().max().item()
            dg = (r["tensors"]["grad"].double() - ref["grad"].double()).abs().max().item()
            gmax = r["tensors"]["grad"].abs().max().item()
            print(
                f"{variant:<8} {r['seconds']:>12.3f} {gib(r['peak_bytes']):>12} {dv:>12.2e} {dg:>12.2e} {gmax:>12.2e}"
            )


if __name__ == "__main__":
    main()
