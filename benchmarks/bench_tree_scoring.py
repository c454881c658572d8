"""Tree scoring vs per-position loops: time to score ``r(y_<t, y_t)`` and ``r(y_<t, alt_t)`` at every response token.

A Qwen2-shaped body (random weights, hidden 256, 4 layers, 4 heads of 64, 2 KV heads) scores one sequence of a
32-token prompt and ``T`` response tokens, at every response position, three ways:

* ``tree``: :func:`vcrd_core.judging.tree.tree_hidden_states`, one forward pass over the sequence plus ``T`` branches;
* ``tree/128``: the same with ``positions_per_pass=128`` (the sequence once with a KV cache, then one pass per
  block of 128 branches) — bounded memory for long responses;
* ``recompute``: one forward pass per position over ``y_<t, alt_t`` (the actual tokens' scores come from one
  extra pass over the whole sequence);
* ``kv-cache``: the sequence once with a ``DynamicCache``, then for ``t = T..1`` crop the cache to ``y_<t`` and run
  ``alt_t`` alone (descending ``t`` so one prefill serves every crop) — the best a per-position loop can do.

At large ``T`` the recompute loop is timed on an evenly spaced subset of positions and extrapolated linearly to
all ``T`` (marked ``*``). The tree's extended length is ``P + 2T`` without a suffix, so its 4D mask and eager
attention scores grow as ``(P + 2T)^2``: the ``mask MB`` column shows that size; ``tree/128`` keeps it at
``128 x (P + T + 128)`` per block.

Run: ``python benchmarks/bench_tree_scoring.py [--threads 1] [--attn sdpa] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import DynamicCache, Qwen2Config, Qwen2Model

from vcrd_core.judging.tree import tree_hidden_states

PROMPT = 32
VOCAB = 1024


def make_body(attn: str, device: str, dtype: torch.dtype) -> Qwen2Model:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    config._attn_implementation = attn
    return Qwen2Model(config).to(device=device, dtype=dtype).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int = 1) -> float:
    fn()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def run_tree(body, ids, mask, alt, score, positions_per_pass=None) -> None:
    tree_hidden_states(body, ids, mask, alt, score, None, positions_per_pass=positions_per_pass)


def run_recompute(body, ids, alt, positions: list[int]) -> None:
    body(input_ids=ids)  # the actual tokens' hidden states: one pass over the whole sequence
    for t in positions:
        prefix = torch.cat([ids[:, :t], alt[:, t : t + 1]], dim=1)
        body(input_ids=prefix)


def run_kv_cache(body, ids, alt, positions: list[int]) -> None:
    cache = DynamicCache(config=body.config)
    body(input_ids=ids, past_key_values=cache, use_cache=True)  # also gives the actual tokens' states
    for t in sorted(positions, reverse=True):
        cache.crop(-(cache.get_seq_length() - t))  # keep y_<t
        body(
            input_ids=alt[:, t : t + 1],
            position_ids=torch.tensor([[t]], device=ids.device),
            past_key_values=cache,
            use_cache=True,
        )


def bench_row(body: Qwen2Model, T: int, device: str, dtype: torch.dtype, subset_size: int) -> str:
    gen = torch.Generator().manual_seed(T)
    L = PROMPT + T
    ids = torch.randint(0, VOCAB, (1, L), generator=gen).to(device)
    alt = torch.randint(0, VOCAB, (1, L), generator=gen).to(device)
    mask = torch.ones(1, L, dtype=torch.long, device=device)
    score = mask.bool().clone()
    score[:, :PROMPT] = False
    positions = list(range(PROMPT, L))
    repeats = 3 if T <= 256 else 1
    t_tree = timed(lambda: run_tree(body, ids, mask, alt, score), device, repeats)
    t_block = timed(lambda: run_tree(body, ids, mask, alt, score, 128), device, repeats)
    if T > 256:
        subset = positions[:: max(1, T // subset_size)]
        t_sub = timed(lambda: run_recompute(body, ids, alt, subset), device)
        t_full_pass = timed(lambda: body(input_ids=ids), device)
        t_re = t_full_pass + (t_sub - t_full_pass) * len(positions) / len(subset)
        mark = "*"
    else:
        t_re = timed(lambda: run_recompute(body, ids, alt, positions), device)
        mark = " "
    t_kv = timed(lambda: run_kv_cache(body, ids, alt, positions), device)
    ext = L + T
    mask_mb = ext * ext * torch.finfo(dtype).bits / 8 / 2**20
    return (
        f"{T:>5} {t_tree:>9.4f} {t_block:>10.4f} {t_re:>11.3f}{mark} {t_kv:>11.3f} "
        f"{t_re / t_tree:>13.1f}x {t_kv / t_tree:>7.1f}x {mask_mb:>8.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--recompute-subset", type=int, default=64, help="positions timed when T exceeds 256")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    body = make_body(args.attn, args.device, dtype)
    print(f"device={args.device} dtype={args.dtype} attn={args.attn} threads={args.threads} prompt={PROMPT} batch=1")
    header = (
        f"{'T':>5} {'tree s':>9} {'tree/128 s':>10} {'recompute s':>12} {'kv-cache s':>11} "
        f"{'recompute/tree':>14} {'kv/tree':>8} {'mask MB':>8}"
    )
    print(header)
    print("-" * len(header))
    with torch.inference_mode():
        for T in args.lengths:
            print(bench_row(body, T, args.device, dtype, args.recompute_subset), flush=True)
    print("* extrapolated linearly from an evenly spaced subset of positions (recompute loop)")


if __name__ == "__main__":
    main()
