"""What every vcrd training job shares on top of transformers' ``Trainer`` (``vcrd train`` and ``vcrd sft``).

``Trainer`` owns the loop, accelerate (devices, DDP / FSDP / DeepSpeed, mixed precision), gradient
accumulation, checkpoints, resume, logging integrations and the progress bar. :class:`EngineTrainer` adds:

* step timing (:class:`StepTimes`) and per-step metrics: one JSON object a line in ``metrics.jsonl``, the
  ``vcrd_on_step_end`` / ``vcrd_on_evaluation_end`` hooks, averaged into ``Trainer``'s logs for ``report_to`` and
  the progress bar (:class:`StepCallback`);
* **the non-finite guard**: a step whose loss or gradient is non-finite is skipped (gradients dropped before the
  optimizer step, so no parameter and no optimizer state changes; the learning-rate schedule advances) and
  counted; ``training.max_nonfinite_steps`` consecutive skips stop the run with one line. With fp16 the
  GradScaler owns overflowing gradients (it skips such steps and lowers its scale, as usual); only a non-finite
  loss counts then. Under DeepSpeed, which keeps gradients to itself, only the loss is checked;
* **checked, completion-marked checkpoints**: a checkpoint is written only when every trainable parameter is
  finite, and is marked complete (``vcrd-complete``) only once fully written: resume takes the latest complete
  checkpoint.

The VCRD step itself is :class:`vcrd_core.training.step.VCRDTrainer`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from vcrd_core.errors import VcrdError
from vcrd_core.losses.objective import ObjectiveOutput
from vcrd_core.plugins.manager import get_plugin_manager
from vcrd_core.runs.atomic import atomic_write_text

logger = logging.getLogger("vcrd")

#: Written into a checkpoint directory after everything else: resume takes only checkpoints that have it.
COMPLETE_MARKER = "vcrd-complete"
#: Per-step metrics, one JSON object a line, in the run directory.
METRICS_FILE = "metrics.jsonl"


@dataclass
class StepTimes:
    """Seconds spent in each part of the current optimizer step (summed over its micro-batches)."""

    teacher_forward: float = 0.0
    student_forward: float = 0.0
    judge: float = 0.0
    loss: float = 0.0
    backward: float = 0.0
    total: float = 0.0
    tokens: int = 0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}

    def inside(self) -> float:
        """Seconds measured inside ``compute_loss`` so far."""
        return self.teacher_forward + self.student_forward + self.judge + self.loss


@dataclass
class _StepMetrics:
    """Accumulated over the micro-batches of one optimizer step."""

    outputs: list[ObjectiveOutput] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    nonfinite_loss: bool = False
    skipped: bool = False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EngineTrainer(Trainer):
    """What every vcrd training job shares on top of ``Trainer``: step timing and metrics (JSON Lines in the run
    directory, the ``vcrd_on_step_end`` / ``vcrd_on_evaluation_end`` hooks, averaged into ``Trainer``'s logs for
    ``report_to`` and the progress bar), the non-finite guard and checked, completion-marked checkpoints."""

    def __init__(
        self, *args: Any, metrics_file: str | Path | None = None, max_nonfinite_steps: int = 5, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.metrics_file = Path(metrics_file) if metrics_file else None
        self.max_nonfinite_steps = max_nonfinite_steps
        self._times = StepTimes()
        self._step = _StepMetrics()
        self._step_start: float | None = None
        self._log_window: list[dict[str, float]] = []
        self.nonfinite_steps = 0
        self.consecutive_nonfinite = 0
        self._grad_norm: float | None = None
        #: The learning rate the step's optimizer update used (read before the scheduler advances).
        self._step_lr: float | None = None
        self.add_callback(StepCallback(self))
        # one concise line per logging step instead of transformers' dict of every key (metrics.jsonl has them all)
        for printer, concise in ((ProgressCallback, ConciseProgress), (PrinterCallback, ConcisePrinter)):
            if any(isinstance(cb, printer) for cb in self.callback_handler.callbacks):
                self.remove_callback(printer)
                self.add_callback(concise)

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        """transformers' gradient norm of the step (before clipping), also kept for ``metrics.jsonl``."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._grad_norm = None if grad_norm is None else float(grad_norm)
        return grad_norm

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """On resume, a checkpoint of a model with tied embeddings has no separate ``lm_head.weight`` (it *is* the
        input embedding matrix): say so in one info line and re-tie, instead of transformers' missing-keys warning."""
        tied = _tied_keys(self.model)
        missing = set(load_result.missing_keys)
        if missing and missing <= tied:
            self.model.tie_weights()
            logger.info("resume: %s tied to the input embeddings, restored from them", ", ".join(sorted(missing)))
            load_result = type(load_result)([], list(load_result.unexpected_keys))
        super()._issue_warnings_after_load(load_result)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        bad = [n for n, p in self.model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
        if bad:
            raise VcrdError(
                f"step {self.state.global_step}: {len(bad)} trainable parameter(s) are not finite (first: {bad[0]}); "
                "refusing to write a non-finite checkpoint"
            )
        super()._save_checkpoint(model, trial)
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        self.save_extra_state(folder)
        if self.args.should_save:
            if folder.is_dir():
                atomic_write_text(folder / COMPLETE_MARKER, json.dumps({"step": self.state.global_step}) + "\n")

    def _current_lr(self) -> float:
        return float(self._get_learning_rate()) if self.lr_scheduler is not None else 0.0

    def save_extra_state(self, folder: Path) -> None:
        """Called on every process after ``Trainer`` wrote checkpoint ``folder`` and before it is marked complete:
        a subclass writes what a resume needs besides ``Trainer``'s state (default: nothing)."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._log_window and "loss" in logs:
            # Trainer's own loss (gathered over processes, NaN-filtered) and learning rate stay as they are.
            # (grad_norm too: transformers logs the logging step's own)
            keys = {k for m in self._log_window for k in m} - {"loss", "learning_rate", "grad_norm"}
            for key in sorted(keys):
                values = [m[key] for m in self._log_window if m.get(key) is not None]
                if values:
                    logs[key] = sum(values) / len(values)
            self._log_window = []
        super().log(logs, start_time)

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        before = self._times.inside()
        t0 = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        sync(loss.device)
        elapsed = time.perf_counter() - t0
        self._times.backward += max(0.0, elapsed - (self._times.inside() - before))
        self._step.losses.append(float(loss))
        if not math.isfinite(float(loss)):
            self._step.nonfinite_loss = True
        return loss

    def step_metrics(self) -> dict[str, float]:
        """Metrics every job reports for the finished optimizer step."""
        t = self._times
        metrics = {
            "loss": sum(self._step.losses),
            "learning_rate": self._step_lr if self._step_lr is not None else self._current_lr(),
            "step_seconds": t.total,
            "tokens_per_second": t.tokens / t.total if t.total > 0 else 0.0,
            "judge_share": t.judge / t.total if t.total > 0 else 0.0,
            "grad_norm": self._grad_norm if self._grad_norm is not None and math.isfinite(self._grad_norm) else None,
            "nonfinite_steps": float(self.nonfinite_steps),
        }
        for part in ("teacher_forward", "student_forward", "judge", "loss", "backward"):
            metrics[f"time/{part}"] = getattr(t, part)
        return metrics


class StepCallback(TrainerCallback):
    """Step timing, the non-finite guard, per-step metrics (JSON Lines + lifecycle hook), evaluation hook."""

    def __init__(self, trainer: EngineTrainer) -> None:
        self.trainer = trainer

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        tr = self.trainer
        tr._step_lr = None
        tr._times = StepTimes()
        tr._step = _StepMetrics()
        tr._step_start = time.perf_counter()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        tr = self.trainer
        tr._step_lr = tr._current_lr()  # the rate this update uses; the scheduler advances after it
        scaler = getattr(tr.accelerator, "scaler", None)
        params = [p for p in tr.model.parameters() if p.requires_grad and p.grad is not None]
        if scaler is not None:  # fp16: gradients are still scaled; the GradScaler skips overflowing steps itself
            params = []
        finite = not tr._step.nonfinite_loss and all(bool(torch.isfinite(p.grad).all()) for p in params)
        flag = torch.tensor([0.0 if finite else 1.0], device=tr.accelerator.device)
        if tr.accelerator.num_processes > 1:
            flag = tr.accelerator.reduce(flag, reduction="sum")
        if float(flag) == 0:
            tr.consecutive_nonfinite = 0
            return
        if scaler is None:
            for p in tr.model.parameters():
                p.grad = None  # the optimizer skips parameters without a gradient: no update, no state change
        tr._step.skipped = True
        tr.nonfinite_steps += 1
        tr.consecutive_nonfinite += 1
        if tr.consecutive_nonfinite >= tr.max_nonfinite_steps:
            raise VcrdError(
                f"step {state.global_step + 1}: the loss or gradient was non-finite for {tr.consecutive_nonfinite} "
                f"consecutive steps (training.max_nonfinite_steps); stopping. Lower the learning rate, check the "
                "weights' range (weight_warn_max, clamp / log_clamp rules) or use float32/bf16"
            )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        tr = self.trainer
        if tr._step_start is not None:
            tr._times.total = time.perf_counter() - tr._step_start
        metrics = tr.step_metrics()
        metrics["skipped"] = 1.0 if tr._step.skipped else 0.0
        tr._log_window.append({k: v for k, v in metrics.items() if not k.startswith("time/")})
        step = int(state.global_step)
        if tr.accelerator.is_main_process:
            if tr.metrics_file is not None:
                with open(tr.metrics_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": step, **metrics}) + "\n")
            get_plugin_manager().hook.vcrd_on_step_end(step=step, metrics=dict(metrics))

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        if self.trainer.accelerator.is_main_process:
            results = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
            get_plugin_manager().hook.vcrd_on_evaluation_end(step=int(state.global_step), results=results)


def _tied_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys of parameters that share storage with another (tied embeddings), PEFT prefixes included."""
    seen: dict[int, str] = {}
    tied: set[str] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = tensor.data_ptr() if isinstance(tensor, torch.Tensor) and tensor.numel() else None
        if key is None:
            continue
        if key in seen:
            tied |= {name, seen[key]}
        else:
            seen[key] = name
    return tied


def log_line(logs: dict[str, Any], state: Any) -> str:
    """One concise line for a ``Trainer`` log record: at a training step the loss, each stream's loss and mean
    weight, the gradient norm, tokens/s and the learning rate; evaluation and the end-of-training summary as
    ``key value`` pairs. Everything else stays in ``metrics.jsonl``."""

    def num(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    if "loss" in logs:
        parts = [f"step {state.global_step}/{state.max_steps}", f"loss {num(logs['loss'])}"]
        for stream in ("teacher_prefix", "student_prefix"):
            if f"{stream}/loss" in logs:
                mean = logs.get(f"{stream}/weight_mean")
                parts.append(
                    f"{stream} {num(logs[f'{stream}/loss'])}" + (f" (w̄ {mean:.3g})" if mean is not None else "")
                )
        if logs.get("grad_norm") is not None:
            parts.append(f"grad_norm {num(float(logs['grad_norm']))}")
        if "tokens_per_second" in logs:
            parts.append(f"{float(logs['tokens_per_second']):,.0f} tok/s")
        if "learning_rate" in logs:
            parts.append(f"lr {float(logs['learning_rate']):.3g}")
        if logs.get("skipped"):
            parts.append("skipped (non-finite)")
        return " | ".join(parts)
    shown = {k: v for k, v in logs.items() if k != "total_flos"}
    return ", ".join(f"{k} {num(v)}" for k, v in shown.items())


class ConciseProgress(ProgressCallback):
    """transformers' progress bar, with :func:`log_line` instead of the log dict."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(log_line(logs, state))


class ConcisePrinter(PrinterCallback):
    """transformers' printer (no progress bar: ``disable_tqdm``, the default into a log), one :func:`log_line`."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if state.is_local_process_zero and logs:
            print(log_line(logs, state), flush=True)
