"""The VCRD step on transformers' ``Trainer`` (DESIGN.md §3), the way TRL's GKD trainer is built.

``Trainer`` owns the loop, accelerate (devices, DDP / FSDP / DeepSpeed, mixed precision), gradient
accumulation, checkpoints, resume, logging integrations and the progress bar; :class:`VCRDTrainer` owns the
step, in :meth:`VCRDTrainer.compute_loss`:

1. both enabled streams' sequences are padded into one batch; the frozen teacher (eval, no grad, its own
   dtype, prepared with the accelerator in evaluation mode as GKD does) and the student each run **one**
   forward over it (one student forward per micro-batch: DDP sees one forward per backward). With the
   fused-linear engine (``training.loss_engine``, DESIGN.md §2.9; the default where the models allow it) these
   forwards build no logits: the final hidden states are captured at the decoder and the objective gets
   :class:`~vcrd_core.losses.objective.HiddenStreamInputs`; a judge that reads logits gets no-grad ones made
   from the hidden states for what it reads;
2. per stream: decision points, then weights — offline from the batch (the rollout store), online through
   :func:`vcrd_core.judging.scoring.score_batch` with the current student's logits (the student's proposal
   on the teacher prefix and its score are recomputed every step), or from the static cache (below);
3. :class:`vcrd_core.losses.objective.VCRDObjective` on both streams, normalised by *global* counts.

**Normalisation.** :meth:`get_batch_samples` sees every micro-batch of an optimizer step before the first one
runs; it counts each stream's normalising count over all of them (sequences with at least one decision point
for ``sequence_mean`` / ``sequence_sum``, decision points for ``token_mean``) and sums it across processes
(one all-reduce per step). Each micro-batch's loss is ``sum_k lam_k loss_sum_k / global_count_k``, multiplied
by the number of processes because DDP averages gradients; so the gradient of an optimizer step is the
gradient of the whole global batch's objective, whatever the split into processes and micro-batches, and
``loss_is_scaled_for_ga = True`` tells ``Trainer`` not to divide by the accumulation steps again.

**Static cache (online, ``scoring.cache_static``).** What does not depend on the student is scored once, at
the start of training, for the whole dataset: the *student-prefix* stream's scores and weights when its judge
reads only token ids and teacher logits (``oracle``, PRMs): there the rollout token is the student rollout's
(fixed) and the other proposal is the frozen teacher's, drawn once per rollout with a generator seeded by the
run seed and the rollout's chunk (so a resumed run recomputes the same values). Processes score disjoint chunks
and share the results. Not cached: the teacher-prefix stream (the student's proposal changes every step; the
rollout token's own score ``r_t`` comes out of the same judge pass — a PRM's tree pass must run the trunk to
score the alternatives — so caching it would save nothing), and judges that read the student's greedy tokens
(``teacher_likelihood``, which also needs no extra model: it reads the teacher logits the step has).

**Safety.** A step whose loss or gradient is non-finite is skipped (gradients dropped before the optimizer
step, so no parameter and no optimizer state changes; the learning-rate schedule advances) and counted;
``training.max_nonfinite_steps`` consecutive skips stop the run with one line. Online, NaN / +inf logits at the
decision points are not scored (nothing can be sampled from them): the step is skipped the same way. With fp16
the GradScaler owns overflowing gradients (it skips such steps and lowers its scale, as usual); only a
non-finite loss counts then. Under DeepSpeed, which keeps gradients to itself, only the loss is checked. A
checkpoint is written only when every trainable parameter is finite, and is marked complete
(``vcrd-complete``) only once fully written: resume takes the latest complete checkpoint.

**Online proposals and dropout.** The student's proposals and greedy tokens come from the training forward
(one student forward per micro-batch), so with LoRA dropout > 0 they are drawn from the dropout-perturbed
student; offline scoring and the static cache use eval mode. Set ``training.lora.dropout: 0`` for online
scoring of the exact current student (Table 9's 0.05 is the paper's setting).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from vcrd_core.decision_points import DecisionPoints, Stream
from vcrd_core.errors import VcrdError
from vcrd_core.judging.judge import Judge, Need, RowJudge
from vcrd_core.judging.scoring import RowWeights, score_batch
from vcrd_core.losses.objective import (
    HiddenStreamInputs,
    LMHead,
    ObjectiveOutput,
    Reduction,
    StreamInputs,
    VCRDObjective,
)
from vcrd_core.losses.weighting import WeightingRule
from vcrd_core.plugins.manager import get_plugin_manager
from vcrd_core.rollouts.generator import derive_seed
from vcrd_core.rollouts.sequences import RolloutSequence, pad_sequences
from vcrd_core.runs.atomic import atomic_write_text
from vcrd_core.training.data import STREAM_KEY

#: Written into a checkpoint directory after everything else: resume takes only checkpoints that have it.
COMPLETE_MARKER = "vcrd-complete"
#: Per-step metrics, one JSON object a line, in the run directory.
METRICS_FILE = "metrics.jsonl"


@dataclass
class StreamScoring:
    """How one stream's weights are made online: the judge (None for score-free rules), the rule, and how the
    *other* model proposes (``sample`` / ``greedy``, with the rollouts' temperature and top-p)."""

    judge: Judge | None
    rule: WeightingRule
    proposal: str = "sample"
    temperature: float = 1.0
    top_p: float = 1.0

    def cacheable(self, stream: str) -> bool:
        """Whether this stream's scores do not depend on the student (see the module docstring)."""
        if not self.rule.uses_scores() or self.judge is None:
            return False
        return stream == Stream.STUDENT_PREFIX.value and Need.STUDENT_GREEDY not in self.judge.needs


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


def _scorable(points: DecisionPoints, logits: torch.Tensor, chunk: int = 256) -> bool:
    """No NaN or +inf at the points' logits rows (``-inf`` is a legitimate mask), one ``[chunk, V]`` at a time."""
    for part in points.chunks(chunk):
        rows = points.logits_at(logits, part.start, part.stop)
        if bool(torch.isnan(rows).any() or torch.isposinf(rows).any()):
            return False
    return True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: Config attributes of models whose logits are not ``lm_head(hidden)`` (soft-capping, scaling): logits engine.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass
class FusedModel:
    """What the fused-linear engine reads from one causal LM: the module whose output is the final hidden state (the
    lm_head's input; a forward hook captures it) and the lm_head."""

    decoder: torch.nn.Module
    head: torch.nn.Linear

    def lm_head(self) -> LMHead:
        return LMHead.of(self.head)


def fused_model(model: torch.nn.Module) -> FusedModel | str:
    """``model``'s :class:`FusedModel`, or why the fused-linear engine cannot read it (one phrase).

    Needs: an HF causal LM (under PEFT: its base model) whose output embeddings are a plain ``nn.Linear`` (not a
    LoRA-wrapped one: its adapter would be missed), whose ``forward`` takes ``logits_to_keep`` (so no logits are
    built) and which has a separate decoder module; the numbers are checked on the first batch
    (:meth:`VCRDTrainer._check_fused`).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is not torch.nn.Linear:
        got = "none" if head is None else type(head).__name__
        return f"{name}'s lm_head is not a plain torch.nn.Linear (got {got})"
    config = getattr(base, "config", None)
    for attr in _LOGIT_TRANSFORMS:
        value = getattr(config, attr, None)
        if value not in (None, 1, 1.0):
            return f"{name} transforms its logits ({attr}={value})"
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return f"{name}.forward takes no logits_to_keep"
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if not isinstance(decoder, torch.nn.Module) or decoder is base:
        return f"{name} has no separate decoder module"
    return FusedModel(decoder, head)


def hidden_forward(
    model: torch.nn.Module, fused: FusedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any
) -> tuple[torch.Tensor, Any]:
    """One forward of ``model`` (possibly DDP / PEFT wrapped) that builds no logits unless ``kwargs`` asks for them
    (``logits_to_keep`` defaults to none); returns the final hidden states ``[B, L, H]`` and the model's output."""
    captured: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    kwargs.setdefault("logits_to_keep", torch.empty(0, dtype=torch.long, device=input_ids.device))
    handle = fused.decoder.register_forward_hook(hook)
    try:
        output = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise VcrdError(f"fused-linear engine: expected one decoder forward per model forward, saw {len(captured)}")
    return captured[0], output


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
        self.add_callback(_VCRDCallback(self))

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        bad = [n for n, p in self.model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
        if bad:
            raise VcrdError(
                f"step {self.state.global_step}: {len(bad)} trainable parameter(s) are not finite (first: {bad[0]}); "
                "refusing to write a non-finite checkpoint"
            )
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            if folder.is_dir():
                atomic_write_text(folder / COMPLETE_MARKER, json.dumps({"step": self.state.global_step}) + "\n")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._log_window and "loss" in logs:
            # Trainer's own loss (gathered over processes, NaN-filtered) and learning rate stay as they are.
            keys = {k for m in self._log_window for k in m} - {"loss", "learning_rate"}
            for key in sorted(keys):
                values = [m[key] for m in self._log_window if key in m]
                logs[key] = sum(values) / len(values)
            self._log_window = []
        super().log(logs, start_time)

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        before = self._times.inside()
        t0 = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        _sync(loss.device)
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
            "learning_rate": float(self._get_learning_rate()) if self.lr_scheduler is not None else 0.0,
            "step_seconds": t.total,
            "tokens_per_second": t.tokens / t.total if t.total > 0 else 0.0,
            "judge_share": t.judge / t.total if t.total > 0 else 0.0,
            "nonfinite_steps": float(self.nonfinite_steps),
        }
        for part in ("teacher_forward", "student_forward", "judge", "loss", "backward"):
            metrics[f"time/{part}"] = getattr(t, part)
        return metrics


class VCRDTrainer(EngineTrainer):
    """``Trainer`` whose loss is the validity-weighted two-stream objective (see the module docstring).

    ``teacher``: the frozen teacher; ``objective``: its enabled streams are the ones computed (a stream with
    ``λ = 0`` or disabled is not built, so it costs nothing); ``scoring``: per stream, how weights are made
    online; ``mode``: ``online`` or ``offline`` (weights from the batch); ``vocab_size``: the tokenizer's real
    vocabulary; ``metrics_file``: where per-step metrics go (main process only); ``max_nonfinite_steps``.
    """

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        teacher: torch.nn.Module,
        objective: VCRDObjective,
        scoring: dict[str, StreamScoring],
        mode: str = "online",
        cache_static: bool = True,
        vocab_size: int | None = None,
        pad_token_id: int = 0,
        loss_engine: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if loss_engine not in ("auto", "fused_linear", "logits"):
            raise VcrdError(f"training.loss_engine: {loss_engine!r} is not one of auto, fused_linear, logits")
        #: The setting (``auto`` / ``fused_linear`` / ``logits``); :attr:`loss_engine` is what the first step chose.
        self.loss_engine_setting = loss_engine
        self.loss_engine: str | None = None
        self.loss_engine_reason = ""
        self._fused: tuple[FusedModel, FusedModel] | None = None
        self.objective = objective
        self.streams = list(objective.losses)
        self.scoring = scoring
        self.mode = mode
        self.cache_static = cache_static
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        if self.is_deepspeed_enabled:
            self.teacher = teacher  # as TRL: DeepSpeed needs its own preparation of a second model
            teacher.to(self.args.device)
        else:
            self.teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        self._global_counts: dict[str, float] | None = None
        self.static_scoring_seconds = 0.0
        self._static_done = False

    # -- which streams take weights from where ------------------------------------------------------------

    def _weights_from_batch(self, stream: str) -> bool:
        if self.mode == "offline":
            return self.scoring[stream].rule.uses_scores()
        return self.cache_static and self.scoring[stream].cacheable(stream)

    # -- normalisation over the accumulated micro-batches and the processes -------------------------------

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: torch.device) -> tuple[list, Any]:
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts = torch.zeros(len(self.streams), dtype=torch.float64)
        for batch in batch_samples:
            for i, stream in enumerate(self.streams):
                counts[i] += self._local_count(batch, stream)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts.to(self.accelerator.device), reduction="sum").cpu()
        self._global_counts = {s: float(c) for s, c in zip(self.streams, counts.tolist(), strict=True)}
        return batch_samples, num_items

    def _local_count(self, batch: dict[str, torch.Tensor], stream: str) -> int:
        k = STREAM_KEY[stream]
        mask = batch[f"{k}attention_mask"].bool() & batch[f"{k}response_mask"].bool()
        mask[:, 0] = False
        if self.objective.reduction is Reduction.TOKEN_MEAN:
            return int(mask.sum())
        return int(mask.any(dim=1).sum())

    # -- the step --------------------------------------------------------------------------------------------

    def _forward_both(self, inputs: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, Any]:
        """One teacher and one student forward over both streams' sequences, split back by stream: per stream
        ``(teacher, student)`` logits ``[B, L, V]``, or final hidden states ``[B, L, H]`` with the fused-linear
        engine (then no logits are built)."""
        parts = []
        for stream in self.streams:
            k = STREAM_KEY[stream]
            parts.append((inputs[f"{k}input_ids"], inputs[f"{k}attention_mask"]))
        length = max(ids.shape[1] for ids, _ in parts)
        pad = torch.nn.functional.pad
        ids = torch.cat([pad(i, (0, length - i.shape[1]), value=self.pad_token_id) for i, _ in parts])
        attn = torch.cat([pad(a, (0, length - a.shape[1]), value=0) for _, a in parts])
        device = ids.device
        _sync(device)
        t0 = time.perf_counter()
        teacher_device = next(self.teacher.parameters()).device
        t_ids, t_attn = ids.to(teacher_device), attn.to(teacher_device)
        with torch.no_grad():
            if self._fused is not None:
                t_out, _ = hidden_forward(self.teacher, self._fused[0], t_ids, t_attn)
            else:
                t_out = self.teacher(input_ids=t_ids, attention_mask=t_attn).logits
        t_out = t_out.to(device)
        _sync(device)
        t1 = time.perf_counter()
        if self._fused is not None:
            s_out, _ = hidden_forward(model, self._fused[1], ids, attn)
        else:
            s_out = model(input_ids=ids, attention_mask=attn).logits
        _sync(device)
        t2 = time.perf_counter()
        self._times.teacher_forward += t1 - t0
        self._times.student_forward += t2 - t1
        self._times.tokens += int(attn.sum())
        out: dict[str, Any] = {}
        start = 0
        for stream, (i, _) in zip(self.streams, parts, strict=True):
            b, n = i.shape
            out[stream] = (t_out[start : start + b, :n], s_out[start : start + b, :n])
            start += b
        return out

    # -- the loss engine -------------------------------------------------------------------------------------

    def _choose_engine(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
        """Resolve ``loss_engine`` once, on the first batch (see ``training.loss_engine``): fused-linear needs both
        models' lm_heads (:func:`fused_model`), unsharded parameters (not FSDP / ZeRO-3), the teacher on the
        student's device and, checked here on the batch's first sequence, ``lm_head(hidden) == logits``."""
        if self.loss_engine is not None:
            return
        reason = ""
        if self.loss_engine_setting == "logits":
            reason = "training.loss_engine is logits"
        else:
            from transformers.integrations import is_deepspeed_zero3_enabled

            pair = (fused_model(self.teacher), fused_model(self.accelerator.unwrap_model(model)))
            if self.is_fsdp_enabled or is_deepspeed_zero3_enabled():
                reason = "parameters are sharded (FSDP / DeepSpeed ZeRO-3): the lm_head weights are not whole"
            elif isinstance(pair[0], str) or isinstance(pair[1], str):
                named = zip(("teacher", "student"), pair, strict=True)
                reason = " and ".join(f"the {who}: {r}" for who, r in named if isinstance(r, str))
            elif next(self.teacher.parameters()).device != self.args.device:
                reason = "the teacher is on another device than the student"
            elif self.args.fp16 or torch.float16 in (pair[0].head.weight.dtype, pair[1].head.weight.dtype):  # type: ignore[union-attr]
                # its logit gradients are rounded to the compute dtype in the forward pass, before the GradScaler's
                # scale: in float16 small ones would underflow (bfloat16 has float32's range)
                reason = "float16 logits: the fused engine's logit gradients would underflow in float16 (use bf16)"
            else:
                k = STREAM_KEY[self.streams[0]]
                reason = self._check_fused(model, pair, inputs[f"{k}input_ids"][:1], inputs[f"{k}attention_mask"][:1])  # type: ignore[arg-type]
                if not reason:
                    self._fused = pair  # type: ignore[assignment]
        self.loss_engine = "logits" if reason else "fused_linear"
        self.loss_engine_reason = reason
        if reason and self.loss_engine_setting == "fused_linear":
            raise VcrdError(f"training.loss_engine: fused_linear is not possible here: {reason}; use auto or logits")
        if reason and self.loss_engine_setting == "auto":
            warnings.warn(f"training.loss_engine auto: using the logits engine: {reason}", stacklevel=2)

    def _check_fused(
        self, model: torch.nn.Module, pair: tuple[FusedModel, FusedModel], ids: torch.Tensor, attn: torch.Tensor
    ) -> str:
        """One no-grad forward per model over one sequence with logits: their lm_head applied to the captured hidden
        states must give the model's own logits (else something between them, e.g. a logit transform, is missed)."""
        teacher_device = next(self.teacher.parameters()).device
        models = (("teacher", self.teacher, pair[0], teacher_device), ("student", model, pair[1], ids.device))
        cuda = sorted({d.index or 0 for d in (teacher_device, ids.device) if d.type == "cuda"})
        training = model.training
        # eval mode and a forked RNG: the check draws no dropout mask, so a resumed run stays bitwise equal
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            model.eval()
            try:
                return self._compare_logits(models, ids, attn)
            finally:
                model.train(training)

    def _compare_logits(self, models: tuple[tuple[str, Any, FusedModel, Any], ...], ids: Any, attn: Any) -> str:
        for who, m, fused, device in models:
            hidden, out = hidden_forward(m, fused, ids.to(device), attn.to(device), logits_to_keep=0)
            head = fused.head
            with self.accelerator.autocast():  # as the prepared models' own forwards run (mixed precision)
                mine = torch.nn.functional.linear(hidden.to(head.weight.dtype), head.weight, head.bias).float()
            theirs = out.logits.float()
            if mine.shape != theirs.shape:
                return f"the {who}'s logits {tuple(theirs.shape)} are not lm_head(hidden) {tuple(mine.shape)}"
            scale = float(theirs.abs().max()) + 1e-6
            diff = float((mine - theirs).abs().max())
            if not diff <= 1e-3 * scale:
                return f"the {who}'s logits differ from lm_head(hidden) by {diff:.3g} (max |logit| {scale:.3g})"
        return ""

    def _generator(self, stream: str, device: torch.device) -> torch.Generator:
        micro = len(self._step.outputs)
        seed = derive_seed(self.args.seed, "online", stream, self.state.global_step, micro, self.args.process_index)
        return torch.Generator(device=device).manual_seed(seed)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        self._choose_engine(model, inputs)
        outputs = self._forward_both(inputs, model)
        stream_inputs: dict[str, StreamInputs | HiddenStreamInputs] = {}
        in_pass: list[RowWeights] = []  # streams whose weights the fused pass makes (a RowJudge)
        device = self.args.device
        for stream in self.streams:
            k = STREAM_KEY[stream]
            points = DecisionPoints.from_masks(inputs[f"{k}attention_mask"], inputs[f"{k}response_mask"])
            t_out, s_out = outputs[stream]
            device = s_out.device
            row_weights = None
            if self._weights_from_batch(stream):
                weights = inputs[f"{k}weights"]
            elif self._fused is not None and self._scored_in_pass(stream):
                weights = row_weights = RowWeights(self.scoring[stream].judge, self.scoring[stream].rule, stream)  # type: ignore[arg-type]
                in_pass.append(row_weights)
            elif self._fused is not None:
                t_logits, s_logits = self._scoring_logits(stream, t_out, s_out)
                weights = self._online_weights(stream, inputs, points, t_logits, s_logits)
            else:
                weights = self._online_weights(stream, inputs, points, t_out, s_out)
            if self._fused is not None:
                heads = (self._fused[0].lm_head(), self._fused[1].lm_head())
                want = None if row_weights is None else row_weights.want
                stream_inputs[stream] = HiddenStreamInputs(t_out, s_out, heads[0], heads[1], points, weights, want=want)
            else:
                stream_inputs[stream] = StreamInputs(t_out, s_out, points, weights)
        _sync(device)
        t0 = time.perf_counter()
        # accelerate autocasts only the models' forwards: the fused engine's lm_head matmuls (in the loss) must
        # run under the same mixed precision as the model's own lm_head would
        with self.accelerator.autocast() if self._fused is not None else contextlib.nullcontext():
            out = self.objective(**stream_inputs)
        for row in in_pass:
            row.finish()
        if any(r.nonfinite for r in in_pass):
            self._step.nonfinite_loss = True  # NaN / +inf teacher logits could not be scored: skip this step
        training = model.training and self._global_counts is not None
        counts = self._global_counts if training else None
        loss = out.loss(counts=counts)
        if training:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
            self._step.outputs.append(out)
        _sync(device)
        self._times.loss += time.perf_counter() - t0
        return (loss, {"outputs": outputs}) if return_outputs else loss

    def _scored_in_pass(self, stream: str) -> bool:
        """Online weights of a :class:`RowJudge` that reads nothing else (no proposals, so no parity) with a
        score-reading rule: made inside the fused pass, as :func:`score_batch` would make them."""
        sc = self.scoring[stream]
        row_only = frozenset({Need.TEACHER_LOGITS, Need.STUDENT_GREEDY})
        return isinstance(sc.judge, RowJudge) and sc.judge.needs <= row_only and sc.rule.uses_scores()

    def _scoring_logits(
        self, stream: str, t_hidden: torch.Tensor, s_hidden: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Fused-linear engine, online weights: the no-grad logits ``[B, L, V]`` this stream's judge reads (as
        :func:`score_batch` asks: the other model's for proposals, the student's for its greedy tokens, the
        teacher's for teacher logits), from the hidden states and lm_heads; None for those it does not read."""
        sc = self.scoring[stream]
        if sc.judge is None or not sc.rule.uses_scores():
            return None, None
        needs = sc.judge.needs
        teacher_prefix = stream == Stream.TEACHER_PREFIX.value
        need_t = Need.TEACHER_LOGITS in needs or (Need.TOKEN_IDS in needs and not teacher_prefix)
        need_s = Need.STUDENT_GREEDY in needs or (Need.TOKEN_IDS in needs and teacher_prefix)
        assert self._fused is not None
        out: list[torch.Tensor | None] = []
        with torch.no_grad(), self.accelerator.autocast():  # as the models' own lm_heads under mixed precision
            for need, hidden, fused in ((need_t, t_hidden, self._fused[0]), (need_s, s_hidden, self._fused[1])):
                head = fused.head
                out.append(torch.nn.functional.linear(hidden.detach(), head.weight, head.bias) if need else None)
        return out[0], out[1]

    def _online_weights(
        self,
        stream: str,
        inputs: dict[str, torch.Tensor],
        points: DecisionPoints,
        t_logits: torch.Tensor | None,
        s_logits: torch.Tensor | None,
    ) -> torch.Tensor:
        k = STREAM_KEY[stream]
        sc = self.scoring[stream]
        device = inputs[f"{k}input_ids"].device
        given = [x for x in (t_logits, s_logits) if x is not None]
        if sc.judge is not None and not all(_scorable(points, x) for x in given):
            # NaN / +inf logits (an overflow) cannot be scored: the non-finite guard skips this step.
            self._step.nonfinite_loss = True
            return torch.zeros(points.shape, device=device)
        _sync(device)
        t0 = time.perf_counter()
        scored = score_batch(
            stream,
            inputs[f"{k}input_ids"],
            inputs[f"{k}attention_mask"],
            points,
            t_logits,
            None if s_logits is None else s_logits.detach(),
            sc.judge,
            sc.rule,
            proposal=sc.proposal,  # type: ignore[arg-type]
            temperature=sc.temperature,
            top_p=sc.top_p,
            vocab_size=self.vocab_size,
            prompt_lengths=inputs[f"{k}prompt_lengths"],
            generator=self._generator(stream, device) if sc.judge is not None else None,
        )
        _sync(device)
        self._times.judge += time.perf_counter() - t0
        return scored.weights.detach()

    def prediction_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[torch.Tensor | None, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # -- the static cache ---------------------------------------------------------------------------------

    def prepare_static_scores(self) -> None:
        """Score the cacheable streams once for the whole dataset (online mode with ``cache_static``)."""
        if self._static_done or self.mode != "online" or not self.cache_static:
            return
        self._static_done = True
        streams = [s for s in self.streams if self.scoring[s].cacheable(s)]
        if not streams:
            return
        t0 = time.perf_counter()
        dataset = self.train_dataset
        size = self.args.per_device_train_batch_size
        chunks = list(range(0, len(dataset), size))
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        device = self.args.device
        teacher_device = next(self.teacher.parameters()).device
        for stream in streams:
            sc = self.scoring[stream]
            mine: dict[int, list[float]] = {}
            for c, start in enumerate(chunks):
                if c % world != rank:
                    continue
                idx = list(range(start, min(start + size, len(dataset))))
                seqs: list[RolloutSequence] = [dataset.items[i][stream] for i in idx]
                batch = pad_sequences(seqs, self.pad_token_id)
                ids, attn = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                points = DecisionPoints.from_masks(attn, batch["response_mask"].to(device))
                with torch.no_grad():
                    t_logits = self.teacher(input_ids=ids.to(teacher_device), attention_mask=attn.to(teacher_device))
                t_logits = t_logits.logits.to(device)
                gen = torch.Generator(device=device).manual_seed(derive_seed(self.args.seed, "static", stream, c))
                scored = score_batch(
                    stream, ids, attn, points, t_logits, None, sc.judge, sc.rule,
                    proposal=sc.proposal, temperature=sc.temperature, top_p=sc.top_p,  # type: ignore[arg-type]
                    vocab_size=self.vocab_size, prompt_lengths=batch["prompt_lengths"].to(device), generator=gen,
                )  # fmt: skip
                w = scored.weights.detach().float().cpu()
                for b, i in enumerate(idx):
                    p, r = len(seqs[b].prompt), len(seqs[b].response)
                    mine[i] = w[b, p : p + r].tolist()
            if world > 1:
                from accelerate.utils import gather_object

                merged: dict[int, list[float]] = {}
                for part in gather_object([mine]):
                    merged.update(part)
                mine = merged
            dataset.set_weights(stream, mine)
        self.static_scoring_seconds = time.perf_counter() - t0

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self.prepare_static_scores()
        return super().train(*args, **kwargs)

    # -- metrics --------------------------------------------------------------------------------------

    def step_metrics(self) -> dict[str, float]:
        """The finished optimizer step's metrics (see :class:`_VCRDCallback`)."""
        metrics = super().step_metrics()
        counts = self._global_counts or {}
        world = self.accelerator.num_processes
        for stream in self.streams:
            outs = [o.streams[stream] for o in self._step.outputs if stream in o.streams]
            if not outs:
                continue
            count = counts.get(stream, 0.0)
            local = sum(float(o.loss_sum.detach()) for o in outs)
            # this process's share of the global loss, scaled to the whole batch (exact on one process)
            metrics[f"{stream}/loss"] = local * world / count if count else 0.0
            points = sum(o.num_points for o in outs)
            metrics[f"{stream}/points"] = float(points)
            for stat in ("mean", "p90", "share_lt1", "share_eq1", "share_gt1", "max"):
                vals = [(o.weight_stats[stat], o.num_points) for o in outs if stat in o.weight_stats]
                if vals and points:
                    if stat == "max":
                        metrics[f"{stream}/weight_max"] = max(v for v, _ in vals)
                    else:  # p90 of the step: the points-weighted mean of the micro-batches' p90
                        metrics[f"{stream}/weight_{stat}"] = sum(v * n for v, n in vals) / points
        return metrics


class _VCRDCallback(TrainerCallback):
    """Step timing, the non-finite guard, per-step metrics (JSON Lines + lifecycle hook), evaluation hook."""

    def __init__(self, trainer: VCRDTrainer) -> None:
        self.trainer = trainer

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        tr = self.trainer
        tr._times = StepTimes()
        tr._step = _StepMetrics()
        tr._step_start = time.perf_counter()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        tr = self.trainer
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
