"""The VCRD step on transformers' ``Trainer`` (DESIGN.md §3), the way TRL's GKD trainer is built.

:meth:`VCRDTrainer.compute_loss` reads top to bottom:

1. **batch**: the collator's :class:`~vcrd_core.rollouts.sequences.TrainBatch`, one
   :class:`~vcrd_core.rollouts.sequences.StreamBatch` per computed stream (ids, masks, decision points, prompt
   lengths, each sequence's example, offline weights);
2. **forwards** (:meth:`VCRDTrainer.forward_both`): both streams' sequences padded into one batch; the frozen
   teacher (eval, no grad, its own dtype, prepared with the accelerator in evaluation mode as GKD does) and the
   student each run **one** forward over it (one student forward per micro-batch: DDP sees one forward per
   backward), through the loss engine (:mod:`vcrd_core.losses.engines`: logits, or final hidden states for the
   fused-linear engine, chosen on the first batch);
3. **weights**: each stream's :class:`~vcrd_core.training.weight_sources.WeightSource` (the store, the static
   cache, online scoring with the current student, or inside the fused loss pass), picked once from the run plan;
4. **loss**: :class:`vcrd_core.losses.objective.VCRDObjective` on both streams, normalised by *global* counts.

**Normalisation.** :meth:`get_batch_samples` sees every micro-batch of an optimizer step before the first one
runs; it counts each stream's normalising count over all of them
(:func:`~vcrd_core.losses.reduction.reduction_count`: sequences with at least one decision point for
``sequence_mean`` / ``sequence_sum``, decision points for ``token_mean``) and sums it across processes (one
all-reduce per step). Each micro-batch's loss is ``sum_k lam_k loss_sum_k / global_count_k``, multiplied by the
number of processes because DDP averages gradients; so the gradient of an optimizer step is the gradient of the
whole global batch's objective, whatever the split into processes and micro-batches, and
``loss_is_scaled_for_ga = True`` tells ``Trainer`` not to divide by the accumulation steps again.

**Safety** (with :class:`~vcrd_core.training.base.EngineTrainer`'s non-finite guard): online, NaN / +inf logits at
the decision points are not scored (nothing can be sampled from them): the step is skipped.

**Online proposals and dropout.** The student's proposals and greedy tokens come from the training forward
(one student forward per micro-batch), so with LoRA dropout > 0 they are drawn from the dropout-perturbed
student; offline scoring and the static cache use eval mode. Set ``training.lora.dropout: 0`` for online
scoring of the exact current student (Table 9's 0.05 is the paper's setting).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vcrd_core.errors import VcrdError
from vcrd_core.losses.engines import ENGINE_SETTINGS, LossEngine, choose_engine
from vcrd_core.losses.objective import HiddenStreamInputs, StreamInputs, VCRDObjective
from vcrd_core.losses.reduction import reduction_count
from vcrd_core.plan import RunPlan
from vcrd_core.rollouts.generator import derive_seed
from vcrd_core.rollouts.sequences import TrainBatch
from vcrd_core.training.base import EngineTrainer, sync
from vcrd_core.training.on_policy import STATE_FILE, StudentRollouts
from vcrd_core.training.weight_sources import StaticCacheWeights, StepState, WeightSource, weight_source


def point_mass(input_ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """``[B, L, vocab]`` float32 logits whose softmax at position ``t`` is the point mass on token ``t + 1`` (0 there,
    ``-inf`` elsewhere): the target of a stream with ``target: tokens`` (forward KL to it is ``-log q(y_{t+1})``,
    the cross-entropy of the sequence, SeqKD on teacher rollouts). The last position, never a decision point, is
    uniform."""
    b, n = input_ids.shape
    out = torch.full((b, n, vocab), float("-inf"), dtype=torch.float32, device=input_ids.device)
    out[:, :-1].scatter_(-1, input_ids[:, 1:, None].clamp(0, vocab - 1), 0.0)
    out[:, -1] = 0.0
    return out


class VCRDTrainer(EngineTrainer):
    """``Trainer`` whose loss is the validity-weighted two-stream objective (see the module docstring).

    ``teacher``: the frozen teacher; ``plan``: the run plan (per stream its judge, rule, proposals; the scoring
    mode); ``objective``: its streams are the ones computed (a stream with ``λ = 0`` or disabled is not built, so
    it costs nothing); ``vocab_size``: the tokenizer's real vocabulary; ``pad_token_id``; ``loss_engine``: ``auto``
    / ``fused_linear`` / ``logits``; ``metrics_file`` and ``max_nonfinite_steps`` as in :class:`EngineTrainer`.
    """

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        teacher: torch.nn.Module | None,
        plan: RunPlan,
        objective: VCRDObjective,
        vocab_size: int | None = None,
        pad_token_id: int = 0,
        loss_engine: str = "auto",
        student_rollouts: StudentRollouts | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        #: On-policy student rollouts (``on_policy``), None for the store's (``static``).
        self.student_rollouts = student_rollouts
        if loss_engine not in ENGINE_SETTINGS:
            raise VcrdError(f"training.loss_engine: {loss_engine!r} is not one of {', '.join(ENGINE_SETTINGS)}")
        #: The setting (``auto`` / ``fused_linear`` / ``logits``); :attr:`loss_engine` is what the first step chose.
        self.loss_engine_setting = loss_engine
        self.loss_engine: str | None = None
        self.loss_engine_reason = ""
        self.engine: LossEngine | None = None
        self.plan = plan
        self.objective = objective
        self.streams = list(objective.losses)
        #: Per computed stream, where its weights come from (picked with the engine, on the first batch).
        self.sources: dict[str, WeightSource] = {}
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        #: The teacher's distributions come from the batch (``training.teacher_cache``): no teacher runs.
        self.cached_teacher = plan.config.training.teacher_cache is not None
        if teacher is None and not self.cached_teacher:
            raise VcrdError("VCRDTrainer: a teacher model is needed unless training.teacher_cache is set")
        self.teacher: Any = None
        if teacher is not None and not self.cached_teacher:
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

    # -- normalisation over the accumulated micro-batches and the processes -------------------------------

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: torch.device) -> tuple[list, Any]:
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.student_rollouts is not None and batch_samples:
            # fresh student-prefix sequences before the counts: normalisation stays exact (module docstring)
            batch_samples = self.student_rollouts.refresh(
                [TrainBatch(b) for b in batch_samples],
                step=int(self.state.global_step),
                model=self.accelerator.unwrap_model(self.model),
                rank=self.accelerator.process_index,
                total_steps=int(self.state.max_steps),
            )
        counts = torch.zeros(len(self.streams), dtype=torch.float64)
        for batch in batch_samples:
            for i, stream in enumerate(self.streams):
                counts[i] += reduction_count(batch[stream].points, self.objective.reduction)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts.to(self.accelerator.device), reduction="sum").cpu()
        self._global_counts = {s: float(c) for s, c in zip(self.streams, counts.tolist(), strict=True)}
        return batch_samples, num_items

    # -- the step --------------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: Mapping[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        batch = TrainBatch(inputs).to(self.args.device)
        engine = self._engine(model, batch)
        forwards = self.forward_both(batch, model)
        step = StepState(engine, self.vocab_size, self._generator)
        device = self.args.device
        stream_inputs: dict[str, StreamInputs | HiddenStreamInputs] = {}
        for stream in self.streams:
            teacher_out, student_out = forwards[stream]
            source = self.sources[stream]
            sync(device)
            t0 = time.perf_counter()
            weights = source.weights(batch[stream], teacher_out, student_out, step)
            sync(device)
            if source.scores_in_step:
                self._times.judge += time.perf_counter() - t0
            stream_inputs[stream] = engine.stream_inputs(
                teacher_out, student_out, batch[stream].points, weights, input_ids=batch[stream].input_ids
            )
        t1 = time.perf_counter()
        with engine.loss_context():
            out = self.objective(**stream_inputs)
        for source in self.sources.values():
            source.finish(step)
        if step.nonfinite:
            self._step.nonfinite_loss = True  # logits that could not be scored: the guard skips this step
        training = model.training and self._global_counts is not None
        counts = self._global_counts if training else None
        loss = out.loss(counts=counts)
        if training:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
            self._step.outputs.append(out)
        sync(device)
        self._times.loss += time.perf_counter() - t1
        return (loss, {"outputs": forwards}) if return_outputs else loss

    def _engine(self, model: torch.nn.Module, batch: TrainBatch) -> LossEngine:
        """The loss engine, chosen on the first batch (:func:`~vcrd_core.losses.engines.choose_engine`), and with
        it each stream's weight source."""
        if self.engine is not None:
            return self.engine
        from transformers.integrations import is_deepspeed_zero3_enabled

        first = batch[self.streams[0]]
        setting = self.loss_engine_setting
        if setting == "auto" and any(self._needs_logits(s) for s in self.streams):
            setting = "logits"  # config validation refuses fused_linear for these
        self.engine, self.loss_engine_reason = choose_engine(
            setting,
            self.teacher,
            self.accelerator.unwrap_model(model),
            (first.input_ids[:1], first.attention_mask[:1]),
            device=self.args.device,
            sharded=bool(self.is_fsdp_enabled or is_deepspeed_zero3_enabled()),
            fp16=bool(self.args.fp16),
            autocast=self.accelerator.autocast,
            wrapped_student=model,
        )
        self.loss_engine = self.engine.name
        plan = self.plan
        self.sources = {
            s: weight_source(plan.streams[s], plan.mode, plan.cache_static, self.engine) for s in self.streams
        }
        if self.cached_teacher:
            for s, source in self.sources.items():
                if source.scores_in_step and plan.streams[s].rule.uses_scores():  # a judge outside the fused pass
                    raise VcrdError(
                        f"training.teacher_cache: online scoring of the {s} stream from the cache is made inside the "
                        f"fused-linear loss pass, which is not possible here ({self.loss_engine_reason}); score "
                        "offline or train without the cache"
                    )
        return self.engine

    def _needs_logits(self, stream: str) -> bool:
        """The stream's target is its tokens (a point mass, made as logits) or its divergence has per-sequence
        parameters (read from the logits of the rollout's tokens): the logits engine."""
        plan = self.plan.streams[stream]
        return plan.target == "tokens" or plan.divergence.uses_sequence_stats

    def forward_both(self, batch: TrainBatch, model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """One teacher and one student forward over both streams' sequences, split back by stream: per stream
        ``(teacher, student)`` outputs of the engine (logits ``[B, L, V]``, or final hidden states ``[B, L, H]``)."""
        assert self.engine is not None
        parts = [(batch[s].input_ids, batch[s].attention_mask) for s in self.streams]
        length = max(ids.shape[1] for ids, _ in parts)
        pad = torch.nn.functional.pad
        ids = torch.cat([pad(i, (0, length - i.shape[1]), value=self.pad_token_id) for i, _ in parts])
        attn = torch.cat([pad(a, (0, length - a.shape[1]), value=0) for _, a in parts])
        device = ids.device
        sync(device)
        t0 = time.perf_counter()
        tokens = {s for s in self.streams if self.plan.streams[s].target == "tokens"}
        t_out = None
        if len(tokens) < len(self.streams) and not self.cached_teacher:  # a point-mass target needs no teacher
            teacher_device = next(self.teacher.parameters()).device
            with torch.no_grad():
                t_out = self.engine.forward("teacher", self.teacher, ids.to(teacher_device), attn.to(teacher_device))
            t_out = t_out.to(device)
        sync(device)
        t1 = time.perf_counter()
        s_out = self.engine.forward("student", model, ids, attn)
        sync(device)
        t2 = time.perf_counter()
        self._times.teacher_forward += t1 - t0
        self._times.student_forward += t2 - t1
        self._times.tokens += int(attn.sum())
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        start = 0
        for stream, (i, _) in zip(self.streams, parts, strict=True):
            b, n = i.shape
            student = s_out[start : start + b, :n]
            if stream in tokens:
                teacher: Any = point_mass(i, student.shape[-1])
            elif self.cached_teacher:
                teacher = batch[stream].teacher_topk
                if teacher is None:
                    raise VcrdError(f"{stream} stream: the batch carries no cached teacher (training.teacher_cache)")
            else:
                teacher = t_out[start : start + b, :n]
            out[stream] = (teacher, student)
            start += b
        return out

    def _generator(self, stream: str, device: torch.device) -> torch.Generator:
        """The online proposals' generator: seeded by the run seed, the stream, the step, the micro-batch and the
        process (a resumed run draws the same proposals)."""
        micro = len(self._step.outputs)
        seed = derive_seed(self.args.seed, "online", stream, self.state.global_step, micro, self.args.process_index)
        return torch.Generator(device=device).manual_seed(seed)

    def prediction_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[torch.Tensor | None, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # -- the static cache ---------------------------------------------------------------------------------

    def prepare_static_scores(self) -> None:
        """Score what does not depend on the student once, for the whole dataset (online with ``cache_static``;
        :class:`~vcrd_core.training.weight_sources.StaticCacheWeights`)."""
        plan = self.plan
        if self._static_done or plan.mode != "online" or not plan.cache_static:
            return
        self._static_done = True
        on = plan.config.on_policy
        # the store's student rollouts are never trained on (lambda rule, lambda 1): nothing to cache for them
        fully_fresh = on.fresh and on.lam >= 1 and on.mixing_spec().name == "lambda"
        todo = [
            plan.streams[s]
            for s in self.streams
            if StaticCacheWeights.applies(plan.streams[s]) and not (plan.streams[s].fresh and fully_fresh)
        ]
        if not todo:
            return
        t0 = time.perf_counter()
        world = self.accelerator.num_processes
        gather = None
        if world > 1:
            from accelerate.utils import gather_object

            gather = gather_object
        for stream in todo:
            StaticCacheWeights(stream).prepare(
                self.train_dataset,
                self.teacher,
                batch_size=self.args.per_device_train_batch_size,
                seed=self.args.seed,
                pad_token_id=self.pad_token_id,
                vocab_size=self.vocab_size,
                device=self.args.device,
                rank=self.accelerator.process_index,
                world=world,
                gather=gather,
            )
        self.static_scoring_seconds = time.perf_counter() - t0

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self.prepare_static_scores()
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.student_rollouts is not None:
                self.student_rollouts.close()

    # -- the on-policy state in checkpoints ------------------------------------------------------------------

    def save_extra_state(self, folder: Path) -> None:
        if self.student_rollouts is None:
            return
        states = [self.student_rollouts.state_dict()]  # small: the last sync's step and the replay buffer
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            states = gather_object(states)
        if self.args.should_save and folder.is_dir():
            snapshot = self.student_rollouts.snapshot_state()  # the same on every process: saved once, on CPU
            torch.save({"processes": states, "snapshot": snapshot}, folder / STATE_FILE)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.student_rollouts is None:
            return
        file = Path(resume_from_checkpoint) / STATE_FILE
        if not file.is_file():
            raise VcrdError(f"--resume: {resume_from_checkpoint} has no {STATE_FILE} (the on-policy rollouts' state)")
        saved = torch.load(file, weights_only=True, map_location="cpu")
        states, world = saved["processes"], self.accelerator.num_processes
        if len(states) != world:
            raise VcrdError(
                f"--resume: {file} holds the on-policy state (replay buffers) of {len(states)} processes; resume "
                f"with {len(states)} processes, not {world}"
            )
        rollouts = self.student_rollouts
        rollouts.load_state_dict(
            states[self.accelerator.process_index], saved["snapshot"], self.accelerator.unwrap_model(self.model)
        )

    # -- metrics --------------------------------------------------------------------------------------

    def step_metrics(self) -> dict[str, float]:
        """The finished optimizer step's metrics (see :class:`~vcrd_core.training.base.StepCallback`)."""
        metrics = super().step_metrics()
        if self.student_rollouts is not None:
            gen = self.student_rollouts.last
            metrics.update(gen.metrics())
            # the step's wall time includes the generation and sync that ran before its first micro-batch
            t = self._times
            total = t.total + gen.seconds + gen.sync_seconds
            metrics["step_seconds"] = total
            metrics["tokens_per_second"] = t.tokens / total if total > 0 else 0.0
            metrics["judge_share"] = t.judge / total if total > 0 else 0.0
            metrics["on_policy/generation_share"] = (gen.seconds + gen.sync_seconds) / total if total > 0 else 0.0
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
            for stat in ("mean", "p90", "share_attenuation", "share_parity", "share_amplification", "max"):
                vals = [(o.weight_stats[stat], o.num_points) for o in outs if stat in o.weight_stats]
                if vals and points:
                    if stat == "max":
                        metrics[f"{stream}/weight_max"] = max(v for v, _ in vals)
                    else:  # p90 of the step: the points-weighted mean of the micro-batches' p90
                        metrics[f"{stream}/weight_{stat}"] = sum(v * n for v, n in vals) / points
            # a divergence's per-sequence parameters (DistiLLM-2's adaptive alpha): points-weighted mean, min, max
            keys = dict.fromkeys(k for o in outs for k in o.parameter_stats)
            for key in keys:
                vals = [(o.parameter_stats[key], o.num_points) for o in outs if key in o.parameter_stats]
                if key.endswith("_min"):
                    metrics[f"{stream}/{key}"] = min(v for v, _ in vals)
                elif key.endswith("_max"):
                    metrics[f"{stream}/{key}"] = max(v for v, _ in vals)
                elif points:
                    metrics[f"{stream}/{key}"] = sum(v * n for v, n in vals) / points
        return metrics
