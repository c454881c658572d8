"""Tiny real models, rollouts and configs for the training-engine tests (nothing is downloaded).

The arithmetic toy task's char tokenizer (17 ids) and tiny Qwen2 teacher/student built from configs and saved
as HF directories; rollout rows in the trainer's row interface (``vcrd_core.training.data``): teacher rows are
valid derivations, student rows are derivations with a random character corrupted, so the ``oracle`` judge
gives both valid and invalid tokens.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2ForCausalLM
from vcrd_arithmetic.char_tokenizer import build_char_tokenizer
from vcrd_arithmetic.grammar import ALPHABET, canonical_derivation, random_problem

from tests.tiny_models import tiny_qwen2_config

BOS, EOS = 1, 2


def save_model(path: Path, hidden: int, seed: int, *, weights: bool = True, vocab: int = 17) -> Path:
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_qwen2_config(vocab, hidden_size=hidden, max_positions=128)).float()
    path.mkdir(parents=True, exist_ok=True)
    if weights:
        model.save_pretrained(path)
    else:
        model.config.save_pretrained(path)
    build_char_tokenizer().save_pretrained(path)
    return path


def models(root: Path) -> tuple[Path, Path]:
    """A teacher (hidden 32) and a student (hidden 16) directory with the char tokenizer."""
    return save_model(root / "teacher", 32, seed=0), save_model(root / "student", 16, seed=1)


def encode(text: str) -> list[int]:
    return [3 + ALPHABET.index(c) for c in text]


def rows(n: int, seed: int = 0, roles: tuple[str, ...] = ("teacher", "student")) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        problem = random_problem(rng, rng.choice((2, 3)))
        derivation = canonical_derivation(problem)
        corrupted = list(derivation)
        j = rng.randrange(len(corrupted))
        corrupted[j] = rng.choice(ALPHABET)
        for role in roles:
            response = derivation if role == "teacher" else "".join(corrupted)
            out.append(
                {
                    "prompt_index": i,
                    "sample_index": 0,
                    "role": role,
                    "prompt_token_ids": [BOS, *encode(problem)],
                    "response_token_ids": [*encode(response), EOS],
                }
            )
    return out


def config_dict(root: Path, teacher: Path, student: Path, **sections: Any) -> dict[str, Any]:
    """A run config for the tiny models: float32, no mixed precision, LoRA with dropout, 4 steps of 4."""
    root.mkdir(parents=True, exist_ok=True)
    prompts = root / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text('{"prompt": "2*3="}\n')
    cfg: dict[str, Any] = {
        "seed": 3,
        "models": {
            "teacher": {"path": str(teacher), "dtype": "float32"},
            "student": {"path": str(student), "dtype": "float32"},
        },
        "data": {"train": str(prompts), "max_prompt_length": 16, "max_length": 64, "template": "plain"},
        "judge": {"name": "oracle"},
        "proposals": {"teacher": "sample", "student": "sample"},
        "training": {
            "learning_rate": 5e-3,
            "max_steps": 4,
            "per_device_batch_size": 4,
            "mixed_precision": "no",
            "warmup_ratio": 0.0,
            "lr_scheduler": "constant",
            "logging_steps": 1,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
            "args": {"use_cpu": True, "disable_tqdm": True, "dataloader_num_workers": 0},
        },
        "output": {"dir": str(root / "run")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def run_config(cfg: dict[str, Any]) -> Any:
    from vcrd_core.config.loader import validate_components
    from vcrd_core.config.models import RunConfig

    config = RunConfig.model_validate(cfg)
    validate_components(config)
    return config


def trainable(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def prm_run(tmp_path: Path, weight: float | None = None) -> tuple[Path, Path, Path, list[dict[str, Any]]]:
    """A tiny value-head PRM checkpoint, a teacher (hidden 32) and a student (hidden 16) sharing its tokenizer, and 8
    random rollout pairs (with offline ``weight`` on every response token when given): ``(prm, teacher, student,
    rows)``."""
    from tests.plugins.judges.test_prm import CHARS, SPECIALS, make_tokenizer, write_checkpoint

    prm = write_checkpoint(tmp_path / "prm", "value_head")
    vocab = len(SPECIALS) + len(CHARS)
    teacher, student = save_model(tmp_path / "t", 32, 0, vocab=vocab), save_model(tmp_path / "s", 16, 1, vocab=vocab)
    for d in (teacher, student):
        make_tokenizer([*SPECIALS, *CHARS]).save_pretrained(d)
    g = torch.Generator().manual_seed(0)
    data = []
    for i in range(8):
        for role in ("teacher", "student"):
            response = [*torch.randint(3, 40, (6,), generator=g).tolist(), 0]
            row = {"prompt_index": i, "sample_index": 0, "role": role, "prompt_token_ids": [10 + i, 20, 30],
                   "response_token_ids": response}  # fmt: skip
            if weight is not None:
                row["weights"] = [weight] * len(response)
            data.append(row)
    return prm, teacher, student, data
