"""The objective as a library inside a real HF ``transformers.Trainer.compute_loss`` override.

Tiny random Qwen2 teacher and student built from configs (no download); the teacher's lm_head is
padded (48 columns) beyond the 40 real ids, as Qwen2.5 7B's is beyond the tokenizer.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Qwen2ForCausalLM, Trainer, TrainingArguments

from tests.fakes import ForwardKL, PlainRatio, ReverseKL
from tests.tiny_models import tiny_qwen2_config
from vcrd_core import IGNORE_INDEX, DecisionPoints, VcrdError
from vcrd_core.losses.objective import Reduction, StreamInputs, StreamLoss, VCRDObjective

REAL_VOCAB = 40


def tiny_qwen2(vocab_size: int, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = tiny_qwen2_config(vocab_size, tie_word_embeddings=False)
    return Qwen2ForCausalLM(config).float()


def make_rollouts(n: int, length: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded rollouts with per-token judge weights from a ratio rule (w = 1 where proposals agree)."""
    g = torch.Generator().manual_seed(seed)
    rule = PlainRatio()
    items = []
    for _ in range(n):
        prompt = int(torch.randint(2, 5, (1,), generator=g))
        response = int(torch.randint(1, length - prompt + 1, (1,), generator=g))
        ids = torch.zeros(length, dtype=torch.long)
        ids[: prompt + response] = torch.randint(1, REAL_VOCAB, (prompt + response,), generator=g)
        attention = torch.zeros(length, dtype=torch.long)
        attention[: prompt + response] = 1
        response_mask = torch.zeros(length, dtype=torch.long)
        response_mask[prompt : prompt + response] = 1
        r_s, r_t = torch.rand(length, generator=g), torch.rand(length, generator=g)
        same = torch.rand(length, generator=g) < 0.3
        items.append({"input_ids": ids, "attention_mask": attention, "response_mask": response_mask,
                      "weights": rule(r_s, r_t, same_token=same)})  # fmt: skip
    return items


def cpu_args(output_dir: Path, **overrides: Any) -> TrainingArguments:
    """Deterministic single-process CPU TrainingArguments with no saving, logging integrations or workers."""
    return TrainingArguments(
        output_dir=str(output_dir),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        **overrides,
    )


class RolloutPairs(torch.utils.data.Dataset):
    """Each example: a teacher rollout (``t_*``) and a student rollout (``s_*``) of the same prompt slot."""

    def __init__(self, n: int, length: int = 10) -> None:
        self.items = [
            {**{f"t_{k}": v for k, v in t.items()}, **{f"s_{k}": v for k, v in s.items()}}
            for t, s in zip(make_rollouts(n, length, 1), make_rollouts(n, length, 2), strict=True)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def objective_on(
    objective: VCRDObjective, teacher: torch.nn.Module, student: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    """The objective on one batch: teacher forward without grad, student forward, both streams."""
    streams = {}
    for prefix, stream in (("t_", "teacher_prefix"), ("s_", "student_prefix")):
        ids, attention = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"]
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids, attention_mask=attention).logits
        student_logits = student(input_ids=ids, attention_mask=attention).logits
        points = DecisionPoints.from_masks(attention, batch[f"{prefix}response_mask"])
        streams[stream] = StreamInputs(teacher_logits, student_logits, points, batch[f"{prefix}weights"])
    return objective(**streams).loss()


class DistillationTrainer(Trainer):
    """What a user writes to use vcrd's objective inside an HF Trainer."""

    def __init__(self, *args: Any, teacher: torch.nn.Module, objective: VCRDObjective, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval()
        self.objective = objective
        self.seen: list[dict[str, Any]] = []

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss = objective_on(self.objective, self.teacher, model, inputs)
        self.seen.append({"batch": {k: v.clone() for k, v in inputs.items()}, "params": params, "loss": loss.item()})
        return loss


def test_the_trainer_optimizes_the_objective_computed_in_compute_loss(tmp_path: Path) -> None:
    teacher = tiny_qwen2(48, seed=0)  # padded lm_head: ids 40..47 are not real
    student = tiny_qwen2(REAL_VOCAB, seed=1)
    initial = copy.deepcopy(student)
    objective = VCRDObjective(
        StreamLoss(ForwardKL(), 1.0),
        StreamLoss(ReverseKL(), 0.5),
        reduction=Reduction.SEQUENCE_MEAN,
        vocab_size=REAL_VOCAB,
    )
    args = cpu_args(tmp_path, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2, logging_steps=1)
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=RolloutPairs(12), teacher=teacher, objective=objective
    )
    trainer.train()

    assert len(trainer.seen) == 3
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert logged == pytest.approx([step["loss"] for step in trainer.seen], rel=1e-6)

    # The same objective computed directly, outside the Trainer, on each step's batch and parameters.
    for step in trainer.seen:
        replica = copy.deepcopy(initial)
        replica.load_state_dict(step["params"], strict=False)
        direct = objective_on(objective, teacher, replica, step["batch"])
        assert direct.item() == pytest.approx(step["loss"], rel=1e-5)

    changed = [
        name
        for (name, before), after in zip(initial.named_parameters(), student.parameters(), strict=True)
        if not torch.equal(before, after.detach())
    ]
    assert "lm_head.weight" in changed
    assert len(changed) == len(list(student.parameters()))
    assert trainer.seen[0]["loss"] > 0


class LabelledRollouts(torch.utils.data.Dataset):
    """Teacher rollouts as a TRL/HF user has them: ``input_ids``, ``attention_mask``, ``labels`` (-100 on the
    prompt and padding) and per-token ``weights``."""

    def __init__(self, n: int, length: int = 10) -> None:
        self.items = []
        for item in make_rollouts(n, length, 3):
            keep = item["attention_mask"].bool() & item["response_mask"].bool()
            labels = item["input_ids"].masked_fill(~keep, IGNORE_INDEX)
            self.items.append({k: item[k] for k in ("input_ids", "attention_mask", "weights")} | {"labels": labels})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


class LabelsTrainer(Trainer):
    """No glue: the batch's ``labels`` and the Trainer's ``num_items_in_batch`` go straight to the objective."""

    def __init__(self, *args: Any, teacher: torch.nn.Module, objective: VCRDObjective, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval()
        self.objective = objective
        self.counts: list[int] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=ids, attention_mask=attention).logits
        student_logits = model(input_ids=ids, attention_mask=attention).logits
        stream = StreamInputs(teacher_logits, student_logits, labels=inputs["labels"], weights=inputs["weights"])
        self.counts.append(int(num_items_in_batch))
        return self.objective(teacher_prefix=stream).loss(num_items_in_batch=num_items_in_batch)


def train_with_labels(tmp_path: Path, batch_size: int, accumulation: int) -> tuple[Qwen2ForCausalLM, LabelsTrainer]:
    student = tiny_qwen2(REAL_VOCAB, seed=1)
    objective = VCRDObjective(StreamLoss(ForwardKL()), None, reduction=Reduction.TOKEN_MEAN, vocab_size=REAL_VOCAB)
    args = cpu_args(
        tmp_path / f"b{batch_size}x{accumulation}",
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=2,
        learning_rate=0.5,
        optim="sgd",  # no per-parameter normalisation: gradients show through unchanged
        lr_scheduler_type="constant",
    )
    trainer = LabelsTrainer(
        model=student, args=args, train_dataset=LabelledRollouts(8), teacher=tiny_qwen2(48, 0), objective=objective
    )
    trainer.train()
    return student, trainer


def test_labels_and_num_items_in_batch_make_gradient_accumulation_equal_one_batch(tmp_path: Path) -> None:
    whole, one = train_with_labels(tmp_path, batch_size=4, accumulation=1)
    accumulated, two = train_with_labels(tmp_path, batch_size=2, accumulation=2)
    data = LabelledRollouts(8)
    # The Trainer's count is the objective's: labels[:, 1:] != -100 over the accumulated batch.
    points_per_item = [DecisionPoints.from_labels(item["labels"][None]).num_points for item in data.items]
    assert sum(one.counts) == sum(points_per_item) and len(one.counts) == 2
    assert two.counts[0] == two.counts[1] == one.counts[0]  # both micro-batches get the global count
    initial = tiny_qwen2(REAL_VOCAB, seed=1)
    moved = False
    for (name, a), b, c in zip(whole.named_parameters(), accumulated.parameters(), initial.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved |= not torch.equal(a, c)
    assert moved


def test_num_items_in_batch_is_refused_for_sequence_reductions() -> None:
    data = LabelledRollouts(2).items
    labels = torch.stack([d["labels"] for d in data])
    logits = torch.randn(*labels.shape, REAL_VOCAB)
    stream = StreamInputs(logits, logits.clone(), labels=labels)
    out = VCRDObjective(StreamLoss(ForwardKL()), None)(teacher_prefix=stream)
    with pytest.raises(VcrdError, match="num_items_in_batch counts tokens, but the 'sequence_mean' reduction"):
        out.loss(num_items_in_batch=10)
    two = VCRDObjective(StreamLoss(ForwardKL()), StreamLoss(ReverseKL()), reduction="token_mean")
    out = two(teacher_prefix=stream, student_prefix=stream)
    with pytest.raises(VcrdError, match="one num_items_in_batch for two streams is ambiguous"):
        out.loss(num_items_in_batch=10)
    by_stream = out.loss(num_items_in_batch={"teacher_prefix": 10, "student_prefix": 5})
    torch.testing.assert_close(by_stream, out.loss(counts={"teacher_prefix": 10, "student_prefix": 5}))
