"""Building the toy task on disk: problem splits (JSONL), the char tokenizer, teacher and student configs.

Everything is generated locally from a seed (no download). :func:`build_task` writes::

    OUT/tokenizer/            the char-level tokenizer in HF format
    OUT/teacher/, OUT/student/   config.json of a tiny Qwen2ForCausalLM each, plus the tokenizer
                              (weights come from ``vcrd sft --from-scratch``)
    OUT/sft.jsonl             {prompt, response, answer}: a *random* valid derivation per problem
    OUT/distill.jsonl         {prompt, answer}: the prompts whose rollouts the student is distilled on
    OUT/test.jsonl            {prompt, answer}: held-out problems, none of them in the other files

SFT responses are uniformly random valid derivations (at each step a uniformly chosen valid next step), so
a model trained on them spreads its probability over several valid next steps: the local
under-specification the judge scores. Splits are disjoint by construction and fixed by the seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vcrd_arithmetic.char_tokenizer import build_char_tokenizer
from vcrd_arithmetic.grammar import evaluate, next_steps, random_problem
from vcrd_core.errors import VcrdError
from vcrd_core.runs.atomic import atomic_write_text


@dataclass(frozen=True)
class ModelSize:
    """A tiny Qwen2 decoder (the real transformers architecture, small config)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int


#: Measured on one core of the 2-core CI machine (ENVIRONMENT.md, "Sizing the toy task").
TEACHER = ModelSize(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512)
STUDENT = ModelSize(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)


@dataclass(frozen=True)
class TaskSpec:
    """What :func:`build_task` generates."""

    seed: int = 0
    operands: tuple[int, ...] = (3, 4)
    n_sft: int = 20_000
    n_distill: int = 2_000
    n_test: int = 300
    teacher: ModelSize = TEACHER
    student: ModelSize = STUDENT
    max_position_embeddings: int = 64
    extra: dict[str, Any] = field(default_factory=dict)


def random_derivation(rng: random.Random, prompt: str) -> str:
    """A uniformly random valid derivation: at each step one of the valid next steps, uniformly."""
    chain = [prompt.removesuffix("=")]
    while steps := next_steps(chain[-1]):
        chain.append(rng.choice(steps))
    return "=".join(chain[1:])


def distinct_problems(rng: random.Random, operands: Sequence[int], count: int, exclude: set[str]) -> list[str]:
    """``count`` distinct prompts (operand counts drawn uniformly from ``operands``) not in ``exclude``."""
    found: list[str] = []
    seen = set(exclude)
    tries = 0
    while len(found) < count:
        tries += 1
        if tries > 50 * count + 1000:
            raise VcrdError(f"cannot draw {count} distinct problems with {list(operands)} operands: too few exist")
        prompt = random_problem(rng, rng.choice(list(operands)))
        if prompt not in seen:
            seen.add(prompt)
            found.append(prompt)
    return found


def split_problems(spec: TaskSpec) -> dict[str, list[str]]:
    """The disjoint ``test``, ``distill`` and ``sft`` prompt lists of ``spec`` (test drawn first, so that it
    does not change when the training sets grow)."""
    rng = random.Random(spec.seed)
    test = distinct_problems(rng, spec.operands, spec.n_test, set())
    distill = distinct_problems(rng, spec.operands, spec.n_distill, set(test))
    sft = distinct_problems(rng, spec.operands, spec.n_sft, set(test) | set(distill))
    return {"test": test, "distill": distill, "sft": sft}


def _jsonl(records: Iterator[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def model_config(size: ModelSize, vocab: dict[str, int], max_positions: int) -> dict[str, Any]:
    """``config.json`` of a tiny ``Qwen2ForCausalLM`` over the char vocabulary."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": len(vocab),
        "hidden_size": size.hidden_size,
        "num_hidden_layers": size.num_hidden_layers,
        "num_attention_heads": size.num_attention_heads,
        "num_key_value_heads": size.num_attention_heads,
        "intermediate_size": size.intermediate_size,
        "max_position_embeddings": max_positions,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": vocab["<bos>"],
        "eos_token_id": vocab["<eos>"],
        "pad_token_id": vocab["<pad>"],
        "torch_dtype": "float32",
    }


def build_task(out: str | Path, spec: TaskSpec = TaskSpec()) -> dict[str, Any]:
    """Write the task into ``out`` (see the module docstring); returns a summary. Deterministic in ``spec``."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer()
    vocab = tokenizer.get_vocab()
    tokenizer.save_pretrained(root / "tokenizer")
    for role, size in (("teacher", spec.teacher), ("student", spec.student)):
        d = root / role
        d.mkdir(exist_ok=True)
        tokenizer.save_pretrained(d)
        cfg = model_config(size, vocab, spec.max_position_embeddings)
        atomic_write_text(d / "config.json", json.dumps(cfg, indent=2) + "\n")
    splits = split_problems(spec)
    rng = random.Random(spec.seed + 1)
    atomic_write_text(
        root / "sft.jsonl",
        _jsonl({"prompt": p, "response": random_derivation(rng, p), "answer": str(evaluate(p))} for p in splits["sft"]),
    )
    for name in ("distill", "test"):
        atomic_write_text(
            root / f"{name}.jsonl", _jsonl({"prompt": p, "answer": str(evaluate(p))} for p in splits[name])
        )
    summary = {"spec": asdict(spec), "files": {k: len(v) for k, v in splits.items()}}
    atomic_write_text(root / "task.json", json.dumps(summary, indent=2) + "\n")
    return summary
