"""Held-out accuracy on the toy task, graded with the grammar's own answer check.

Greedy decoding through the ``hf`` generator (the rollout stage's generator, so prompts are rendered and
tokenized exactly as in training), then per problem:

* ``accuracy``: the integer after the response's last ``=`` equals Python's value of the problem
  (:func:`vcrd_arithmetic.grammar.final_answer`, :func:`vcrd_arithmetic.grammar.evaluate`);
* ``valid``: the whole response is a correct step-by-step derivation (:func:`grammar.is_complete`).

The framework's ``exact`` evaluator (``vcrd eval``) was not available when the demo was written; this module
grades with the same grammar module that the ``oracle`` judge uses. :func:`grid_stage` plugs it into a
``vcrd grid`` as a stage (``stages: [..., "vcrd_arithmetic.evaluate:grid_stage"]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vcrd_arithmetic.grammar import evaluate, final_answer, is_complete
from vcrd_core import create
from vcrd_core.config.models import DataConfig, RunConfig
from vcrd_core.data.prompts import load_prompts
from vcrd_core.errors import ConfigError
from vcrd_core.plugins.kinds import GENERATORS
from vcrd_core.rollouts.generator import GeneratorContext, Sampling
from vcrd_core.runs.preflight import load_tokenizer


def grade(prompt: str, response: str) -> dict[str, bool]:
    """``accuracy`` and ``valid`` of one response to one prompt (see the module docstring)."""
    return {
        "accuracy": final_answer(response) == evaluate(prompt),
        "valid": is_complete(prompt, response),
    }


def held_out_accuracy(
    model_path: str | Path,
    tokenizer_path: str | Path,
    prompts_file: str | Path,
    *,
    max_new_tokens: int = 32,
    batch_size: int = 256,
    samples_file: str | Path | None = None,
) -> dict[str, Any]:
    """Greedy ``accuracy`` and ``valid`` shares (and counts) of ``model_path`` on the prompts of ``prompts_file``."""
    tokenizer = load_tokenizer(str(tokenizer_path), "models.tokenizer")
    data = DataConfig(train=str(prompts_file), template="plain", max_prompt_length=32, max_length=64)
    prompts = load_prompts(prompts_file, data, tokenizer)
    generator = create(GENERATORS, "hf", {"batch_size": batch_size, "device": "cpu"})
    generator.load(
        GeneratorContext(
            model_path=str(model_path),
            tokenizer=tokenizer,
            tokenizer_path=str(tokenizer_path),
            vocab_size=len(tokenizer),
            dtype="float32",
        )
    )
    try:
        samples = generator.generate(prompts.token_ids, Sampling(max_new_tokens=max_new_tokens, temperature=0.0))
    finally:
        generator.close()
    graded = []
    for prompt, (sample,) in zip(prompts.prompts, samples, strict=True):
        graded.append({"prompt": prompt.text, "response": sample.text, **grade(prompt.text, sample.text)})
    if samples_file is not None:
        Path(samples_file).write_text("".join(json.dumps(g) + "\n" for g in graded), encoding="utf-8")
    n = len(graded)
    return {
        "accuracy": sum(g["accuracy"] for g in graded) / n,
        "valid": sum(g["valid"] for g in graded) / n,
        "n": n,
    }


def grid_stage(config: RunConfig, cell_dir: Path) -> dict[str, Any]:
    """A ``vcrd grid`` stage: grade the cell's trained student (``<output.dir>/final``) on ``data.eval``."""
    if config.data.eval is None:
        raise ConfigError("data.eval", "the arithmetic evaluation stage needs the held-out prompts in data.eval")
    tokenizer = config.models.tokenizer or config.models.student.path
    model = Path(config.output.dir) / "final"
    return held_out_accuracy(
        model,
        tokenizer,
        config.data.eval,
        max_new_tokens=config.evaluation.max_new_tokens,
        samples_file=Path(cell_dir) / "eval_samples.jsonl",
    )
