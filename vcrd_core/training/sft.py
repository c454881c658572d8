"""``vcrd sft``: supervised fine-tuning on reference responses, on the same engine (cross-entropy).

The paper first fine-tunes the student on ground-truth responses; the toy task trains its teacher and student
from scratch with it. Data: ``data.train`` (JSONL), the prompt in ``data.prompt_field`` rendered with
``data.template`` exactly as the rollout stage renders prompts, the reference response in
``data.response_field``, followed by the tokenizer's EOS. The loss is the token-mean cross-entropy over response
tokens, normalised over the whole accumulated (and multi-process) batch by transformers' ``num_items_in_batch``.
The model is ``models.<role>`` (``--model student`` by default); ``--from-scratch`` builds it from the
directory's ``config.json`` with random weights (seeded). A directory without weights is refused without that
flag, so that a wrong path never silently trains from scratch.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vcrd_core.config.models import RunConfig
from vcrd_core.data.prompts import render_prompt
from vcrd_core.errors import ConfigError
from vcrd_core.runs.models import load_causal_lm
from vcrd_core.runs.preflight import load_tokenizer
from vcrd_core.training.arguments import training_arguments_kwargs
from vcrd_core.training.base import METRICS_FILE, EngineTrainer
from vcrd_core.training.run import (
    apply_lora,
    check_output_dir,
    finish_run,
    resume_checkpoint,
    say_how_to_resume,
    start_run,
    training_arguments,
    world_size,
)


class SFTExamples(torch.utils.data.Dataset):
    """``input_ids`` and ``labels`` (-100 on the prompt) of every record of a JSONL file."""

    def __init__(self, config: RunConfig, tokenizer: Any) -> None:
        d = config.data
        if d.response_field is None:
            raise ConfigError("data.response_field", "vcrd sft needs the field that holds the reference response")
        if tokenizer.eos_token_id is None:
            raise ConfigError("models.tokenizer", "vcrd sft needs a tokenizer with an EOS token to end responses")
        self.items: list[tuple[list[int], list[int]]] = []
        with open(d.train, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                for key in (d.prompt_field, d.response_field):
                    if not isinstance(record.get(key), str):
                        raise ConfigError("data.train", f"{d.train}:{n}: field '{key}' is missing or not text")
                _, prompt = render_prompt(tokenizer, d.template, record[d.prompt_field])
                response = [*tokenizer(record[d.response_field], add_special_tokens=False)["input_ids"]]
                response.append(int(tokenizer.eos_token_id))
                ids = (prompt + response)[: d.max_length]
                labels = ([-100] * len(prompt) + response)[: d.max_length]
                self.items.append((ids, labels))
                if d.num_prompts is not None and len(self.items) >= d.num_prompts:
                    break
        if not self.items:
            raise ConfigError("data.train", f"'{d.train}' holds no record")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids, labels = self.items[i]
        return {"input_ids": ids, "labels": labels}


class SFTCollator:
    def __init__(self, pad_token_id: int) -> None:
        self.pad = pad_token_id

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        length = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), length), self.pad, dtype=torch.long)
        labels = torch.full((len(examples), length), -100, dtype=torch.long)
        attention = torch.zeros(len(examples), length, dtype=torch.long)
        for b, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[b, :n] = torch.tensor(e["input_ids"])
            labels[b, :n] = torch.tensor(e["labels"])
            attention[b, :n] = 1
        return {"input_ids": ids, "attention_mask": attention, "labels": labels}


class SFTTrainer(EngineTrainer):
    """Cross-entropy through the model's own loss (``num_items_in_batch`` normalisation), timed as one forward."""

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        t0 = time.perf_counter()
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self._times.student_forward += time.perf_counter() - t0
        self._times.tokens += int(inputs["attention_mask"].sum())
        return result


def run_sft(
    config: RunConfig, *, role: str = "student", from_scratch: bool = False, resume: bool = False, merge: bool = False
) -> dict[str, Any]:
    """``vcrd sft``: fine-tune ``models.<role>`` on the reference responses (see the module docstring)."""
    from transformers import set_seed

    if from_scratch and config.training.lora.enabled:
        raise ConfigError("training.lora.enabled", "--from-scratch trains every weight; set it to false")
    kwargs = training_arguments_kwargs(config, world_size())
    out = check_output_dir(config, resume)
    spec = getattr(config.models, role)
    where = f"models.{role}.path"
    if not (Path(spec.path) / "config.json").is_file():
        raise ConfigError(where, f"'{spec.path}' has no config.json; is it an HF-format model directory?")
    tok_where = "models.tokenizer" if config.models.tokenizer else where
    tokenizer = load_tokenizer(config.models.tokenizer or spec.path, tok_where)
    if not Path(config.data.train).is_file():
        raise ConfigError("data.train", f"'{config.data.train}' does not exist")
    dataset = SFTExamples(config, tokenizer)
    checkpoint = resume_checkpoint(out) if resume else None
    if checkpoint is not None:
        print(f"resuming from {checkpoint}", file=sys.stderr, flush=True)
    start_run(config, out, resume, sft={"model": role, "from_scratch": from_scratch})
    set_seed(config.seed)
    model = apply_lora(config, load_causal_lm(spec, where, from_scratch=from_scratch))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = SFTTrainer(
        model=model,
        args=training_arguments(kwargs),
        train_dataset=dataset,
        data_collator=SFTCollator(int(pad)),
        metrics_file=out / METRICS_FILE,
        max_nonfinite_steps=config.training.max_nonfinite_steps,
    )
    with say_how_to_resume(out):
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return finish_run(trainer, tokenizer, out, merge, {"sft_model": role, "from_scratch": from_scratch})
