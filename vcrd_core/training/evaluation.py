"""``evaluation.every_steps``: the evaluators run on the live student during ``vcrd train``.

Every ``every_steps`` optimizer steps (on the main process; the others go on and meet it at the next
collective), the student in memory — LoRA adapter included, switched to eval mode and back — generates
through the ``hf`` generator (the only one that can use a model in memory; vLLM would need the weights
on disk) with the evaluation section's sampling, the evaluators grade it, and the records and summary go
to ``<run>/eval/step-N/``; the ``vcrd_on_evaluation_end`` hook fires with the flat results, and the run's
``summary.json`` lists them by step. The evaluators and their datasets are checked before any model is
loaded (:func:`PeriodicEvaluation.from_config`).

Several processes: only the main process generates; with DDP the others wait for it in the next gradient
all-reduce (bounded by ``ddp_timeout``, 30 minutes by default: raise it through ``training.args`` for long
evaluations). Sharded models (FSDP, ZeRO-3) need every process for a forward pass, so evaluate those runs
afterwards with ``vcrd eval`` on the saved model instead of ``every_steps``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from transformers import TrainerCallback

from vcrd_core.config.models import RunConfig
from vcrd_core.evaluation.evaluator import EvalItem, Evaluator
from vcrd_core.evaluation.run import evaluate, flat_results, load_evaluators
from vcrd_core.plugins.kinds import GENERATORS
from vcrd_core.plugins.registry import create
from vcrd_core.rollouts.generator import Generator, GeneratorContext


class PeriodicEvaluation(TrainerCallback):
    """Evaluates the student every ``every_steps`` optimizer steps (see the module docstring)."""

    def __init__(
        self,
        config: RunConfig,
        evaluators: list[Evaluator],
        items: dict[str, list[EvalItem]],
        *,
        tokenizer: Any,
        out_dir: Path,
    ) -> None:
        self.config = config
        self.evaluators = evaluators
        self.items = items
        self.tokenizer = tokenizer
        self.out_dir = out_dir
        self.every = int(config.evaluation.every_steps or 0)
        self.results: dict[int, dict[str, float]] = {}

    @classmethod
    def from_config(cls, config: RunConfig, *, tokenizer: Any, out_dir: Path) -> PeriodicEvaluation | None:
        """None without ``evaluation.every_steps``; otherwise the checked evaluators and their datasets."""
        if config.evaluation.every_steps is None:
            return None
        evaluators, items = load_evaluators(config)
        return cls(config, evaluators, items, tokenizer=tokenizer, out_dir=out_dir)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        step = int(state.global_step)
        if not self.every or step % self.every or not state.is_world_process_zero or model is None:
            return
        ev = self.config.evaluation
        generator: Generator = create(GENERATORS, "hf", path="evaluation")  # type: ignore[assignment]
        context = GeneratorContext(
            model_path=self.config.models.student.path,
            tokenizer=self.tokenizer,
            tokenizer_path=self.config.models.tokenizer or self.config.models.student.path,
            vocab_size=len(self.tokenizer),
            role="student",
            extra={"model": model, "seed": self.config.seed},
        )
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        # Generation seeds torch's RNG: the training run's RNG (dropout, shuffling) is restored afterwards.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            try:
                generator.load(context)
                summary = evaluate(
                    generator,
                    self.tokenizer,
                    self.evaluators,
                    max_new_tokens=ev.max_new_tokens,
                    temperature=ev.temperature,
                    top_p=ev.top_p,
                    seed=self.config.seed,
                    out_dir=self.out_dir / "eval" / f"step-{step}",
                    items=self.items,
                    step=step,
                    console=Console(stderr=True),
                )
            finally:
                generator.close()
                model.train(was_training)
        self.results[step] = flat_results(summary)
