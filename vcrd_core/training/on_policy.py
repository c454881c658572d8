"""On-policy student rollouts: the student-prefix stream's sequences generated from the student being trained.

The paper's Algorithm 1 samples ``y^S ~ q_θ(·|x)`` at every step (line 9); its experiments (§12) follow
DistiLLM-2 and generate every rollout once, before training. ``on_policy.schedule`` spans the two:

* ``static`` (default): the store's student rollouts, as the paper's experiments ran;
* ``steps``: generated during training by a generator whose weights are synced with the student every
  ``every_steps`` optimizer steps (1: Algorithm 1 as written; N > 1: the rollouts are up to N - 1 steps stale);
* ``epoch``: the generator is synced at the first step of each epoch.

**When.** :meth:`StudentRollouts.refresh` runs in the trainer's ``get_batch_samples``, which holds every
micro-batch of an optimizer step before the first one runs: the fresh sequences replace the batches'
student-prefix sequences *before* the step's global normalising counts are taken, so ``token_mean`` /
``sequence_mean`` stay exact under gradient accumulation and several processes; each process generates its own
micro-batches. The teacher-prefix stream is never regenerated: the teacher is frozen, its store rollouts are
already samples of it.

**Mixing, λ and the replay buffer.** A mixing rule (``on_policy.mixing``, :mod:`vcrd_core.rollouts.mixing`)
chooses per micro-batch ``fresh``, ``replay`` (as many sequences, drawn uniformly without replacement from the
replay buffer, when it holds that many) or ``data`` (the store's student rollouts, or the teacher's with
``fallback: teacher``). The default ``lambda`` rule: fresh with probability ``on_policy.lambda`` (one draw per
optimizer step, from the run seed and the step, the same on every process), else replay, else the data; GKD is
``lambda`` < 1 without a buffer; ``distillm`` is DistiLLM's adaptive schedule, reading the validation loss of
``on_policy.validation_examples`` held-out examples. Every generated rollout enters the buffer (``buffer_size``
sequences per process, oldest evicted first; 0: no buffer).

**Generators.** ``hf`` generates from the live (unwrapped) student itself, in eval mode (no dropout) with its KV
cache; when its weights must lag the student (``every_steps`` > 1, ``epoch``, ``sync: false``) the trainable
parameters of the last sync are swapped in for the call and back out after (exact copies). ``vllm`` keeps an
in-process engine and receives the student's current weights at each sync (a LoRA student merged, under the base
model's names: :func:`inference_weights`); a sync happens only when the weights changed since the last one.

**Exactness.** Generation seeds derive from the run seed, the step, the micro-batch and the process, and the
global RNG is forked around every call, so that a run with ``lambda`` 0 is bitwise the static run and a resumed run
draws what the uninterrupted run drew; the replay buffer, the last sync's step and (when the generator lags) the
weights of the last sync go into each checkpoint (``on_policy.pt``).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vcrd_core.config.models import RunConfig
from vcrd_core.data.examples import Example
from vcrd_core.decision_points import Stream
from vcrd_core.errors import VcrdError, last_line
from vcrd_core.plugins.kinds import GENERATORS, MIXING
from vcrd_core.plugins.registry import create
from vcrd_core.rollouts.generator import Generator, GeneratorContext, Sampling, derive_seed
from vcrd_core.rollouts.mixing import MixingRule, MixState, Source
from vcrd_core.rollouts.sequences import RolloutSequence, StreamBatch, TrainBatch
from vcrd_core.runs.atomic import atomic_path

STREAM = Stream.STUDENT_PREFIX.value
#: The checkpoint file of the on-policy state (replay buffer, last sync, the weights of the last sync).
STATE_FILE = "on_policy.pt"
#: Where ``on_policy.record`` writes the generated rollouts, in the run directory.
RECORD_DIR = "on_policy"


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run the block without moving the run's random state: torch (CPU and every CUDA device), Python's
    ``random`` and numpy's global generator are restored after it (``hf`` generation seeds torch; vLLM's engine
    seeds all three at start)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def inference_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights an inference engine loads for ``model``, named as the base model's checkpoint names them: a PEFT
    LoRA model's ``base_layer`` weights with the active adapters' scaled deltas added (``W + s·B·A``, computed
    without touching the model; merging and unmerging in place would not restore ``W`` bit for bit), its ``lora_``
    tensors left out. A plain model's state dict as it is."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    lora = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    with torch.no_grad():
        for name, tensor in base.state_dict().items():
            if ".lora_" in name:
                continue
            if "modules_to_save" in name or "original_module" in name:
                raise VcrdError(f"on_policy: cannot sync '{name}' (a PEFT modules_to_save copy) into the generator")
            owner, _, leaf = name.rpartition(".")
            if owner.endswith(".base_layer"):
                owner = owner[: -len(".base_layer")]
                layer = lora.get(owner)
                embedded = getattr(layer, "lora_embedding_A", {})
                if layer is not None and any(a in embedded for a in layer.active_adapters):
                    raise VcrdError(
                        f"on_policy: the LoRA on the embedding '{owner}' cannot be synced into the generator; leave "
                        "it out of training.lora.target_modules or use on_policy.generator: {name: hf}"
                    )
                if layer is not None and leaf == "weight":
                    for adapter in layer.active_adapters:
                        if adapter in layer.lora_A:
                            tensor = tensor + layer.get_delta_weight(adapter).to(tensor.dtype)
                name = f"{owner}.{leaf}"
            yield name, tensor.detach()


@dataclass
class GenerationStats:
    """One optimizer step's student rollouts on this process."""

    #: The share of the step's micro-batches whose student sequences were generated.
    fresh: float = 0.0
    rollouts: int = 0
    replayed: int = 0
    tokens: int = 0
    seconds: float = 0.0
    sync_seconds: float = 0.0
    #: Optimizer steps between the weights that generated the step's student sequences and the trained ones (None:
    #: the teacher's rollouts, on_policy.fallback: teacher).
    staleness: float | None = 0.0
    validation_loss: float | None = None
    rule: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        out = {
            "on_policy/fresh": float(self.fresh),
            "on_policy/rollouts": float(self.rollouts),
            "on_policy/replayed": float(self.replayed),
            "on_policy/tokens_per_second": self.tokens / self.seconds if self.seconds > 0 else 0.0,
            "time/generation": self.seconds,
            "time/sync": self.sync_seconds,
        }
        if self.staleness is not None:
            out["on_policy/staleness"] = float(self.staleness)
        if self.validation_loss is not None:
            out["on_policy/validation_loss"] = self.validation_loss
        return out | self.rule


@dataclass
class _Buffered:
    seq: RolloutSequence
    index: int
    step: int
    weights_step: int


class StudentRollouts:
    """The student-prefix stream's sequences per optimizer step (see the module docstring).

    ``config``: the run; ``tokenizer`` / ``vocab_size``: the shared tokenizer; ``pad_token_id``; ``slots``: the
    dataset's ``(prompt_index, sample_index)`` per example (records name the prompt); ``out_dir``: the run
    directory (records go under it); ``steps_per_epoch``: optimizer steps per epoch (the ``epoch`` schedule).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        tokenizer: Any,
        vocab_size: int,
        pad_token_id: int,
        slots: list[tuple[int, int]],
        out_dir: Path,
        steps_per_epoch: int = 1,
        validation: list[RolloutSequence] | None = None,
        batch_size: int = 8,
    ) -> None:
        self.config = config
        self.on = config.on_policy
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        self.slots = slots
        self.out_dir = Path(out_dir)
        self.steps_per_epoch = max(1, steps_per_epoch)
        spec = self.on.generator_spec()
        self.generator: Generator = create(GENERATORS, spec.name, spec.params, path="on_policy.generator")  # type: ignore[assignment]
        if not (self.generator.reads_live_model or self.generator.syncs_weights):
            raise VcrdError(
                f"on_policy.generator: '{spec.name}' can neither generate from the live student nor receive its "
                "weights (reads_live_model / syncs_weights); use hf or vllm"
            )
        self.generator.check()
        self._loaded = False
        #: The optimizer step whose weights the generator holds (None: not synced yet).
        self.synced_step: int | None = None
        #: The trainable parameters at ``synced_step`` when the generator lags the student (hf), else None.
        self.snapshot: dict[str, torch.Tensor] | None = None
        #: The step whose weights the engine holds (a ``syncs_weights`` generator; None: the model files).
        self.engine_step: int | None = None
        self.buffer: deque[_Buffered] = deque(maxlen=max(1, self.on.buffer_size))
        mix = self.on.mixing_spec()
        self.mixing: MixingRule = create(MIXING, mix.name, mix.params, path="on_policy.mixing")  # type: ignore[assignment]
        self.last = GenerationStats()
        #: Held-out sequences (``on_policy.validation_examples``) whose student cross-entropy a rule may adapt to.
        self.validation = list(validation or [])
        self.batch_size = batch_size
        if self.mixing.needs_validation and not self.validation:
            raise VcrdError(
                f"on_policy.validation_examples: the mixing rule '{self.mixing.name}' adapts to a validation loss; "
                "hold out some examples (e.g. 256)"
            )

    # -- schedule -----------------------------------------------------------------------------------------

    @property
    def sync_every(self) -> int:
        """Optimizer steps between two syncs of the generator's weights."""
        return self.steps_per_epoch if self.on.schedule == "epoch" else self.on.every_steps

    @property
    def lags(self) -> bool:
        """Whether the generator's weights may differ from the student's at a generation (not synced every step)."""
        return self.sync_every > 1 or not self.on.sync

    def choose(self, step: int, total_steps: int, micro: int, batch: int) -> Source:
        """Where micro-batch ``micro`` of step ``step`` takes its student sequences from (the mixing rule)."""
        capacity = self.on.buffer_size
        state = MixState(step, total_steps, micro, self.config.seed, float(self.on.lam), len(self.buffer) if
                         capacity else 0, capacity, batch)  # fmt: skip
        return self.mixing.choose(state)

    def sampling(self, max_new_tokens: int, seed: int) -> Sampling:
        r = self.config.rollouts
        return Sampling(
            max_new_tokens=max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            n=1,
            seed=seed,
            stop=tuple(r.stop),
        )

    # -- the step -----------------------------------------------------------------------------------------

    def refresh(
        self, batches: list[TrainBatch], *, step: int, model: torch.nn.Module, rank: int, total_steps: int = 0
    ) -> list[TrainBatch]:
        """The step's micro-batches with their student-prefix sequences generated, replayed or kept (the mixing
        rule's choice per micro-batch); ``step``: the optimizer steps done so far (the weights' age), ``model``: the
        unwrapped student, ``total_steps``: the planned steps (rules that anneal)."""
        t0 = time.perf_counter()
        self._mark_sync(model, step)
        stats = GenerationStats(sync_seconds=time.perf_counter() - t0)
        self.last = stats
        if self.validation and step % self.steps_per_epoch == 0:  # before training, then after each epoch
            stats.validation_loss = self.validation_loss(model)
            self.mixing.observe_validation(step, stats.validation_loss)
        stats.rule = {f"on_policy/{k}": float(v) for k, v in self.mixing.metrics().items()}
        out: list[TrainBatch] = []
        records: list[dict[str, Any]] = []
        ages: list[tuple[float, int]] = []
        fresh_batches = 0
        for micro, batch in enumerate(batches):
            n = len(batch[STREAM])
            source = self.choose(step, total_steps, micro, n)
            if source == "replay" and self.on.buffer_size and len(self.buffer) >= n:
                replayed, age = self._replay(batch, step, micro, rank, stats)
                out.append(replayed)
                ages.append((age, n))
                continue
            if source != "fresh":  # the store's: the initial student's rollouts, or the teacher's
                out.append(batch)
                ages.append((float(step) if self.on.fallback == "student" else math.nan, n))
                continue
            if not fresh_batches:
                self._ensure_loaded(model)
                t1 = time.perf_counter()
                self._push(model)
                stats.sync_seconds += time.perf_counter() - t1
            fresh_batches += 1
            ages.append((float(step - (self.synced_step or 0)), n))
            seed = derive_seed(self.config.seed, "on_policy", "generate", step, micro, rank)
            t1 = time.perf_counter()
            fresh = self._generate(batch[STREAM], model, seed)
            stats.seconds += time.perf_counter() - t1
            stats.rollouts += len(fresh)
            stats.tokens += sum(len(s.response) for s, _ in fresh)
            seqs = [s for s, _ in fresh]
            index = batch[STREAM].index.tolist()
            if self.on.buffer_size:
                for seq, i in zip(seqs, index, strict=True):
                    self.buffer.append(_Buffered(seq, i, step, self.synced_step or 0))
            if self.on.record:
                records += self._records(fresh, index, step, micro, seed, rank)
            device = batch[STREAM].input_ids.device
            streams = dict(batch.streams)
            streams[STREAM] = StreamBatch.of(seqs, self.pad_token_id, index=index).to(device)
            out.append(TrainBatch(streams))
        if records:
            self._write_records(records, step, rank)
        stats.fresh = fresh_batches / len(batches) if batches else 0.0
        known = [(a, n) for a, n in ages if not math.isnan(a)]
        stats.staleness = sum(a * n for a, n in known) / sum(n for _, n in known) if known else None
        return out

    def _replay(
        self, batch: TrainBatch, step: int, micro: int, rank: int, stats: GenerationStats
    ) -> tuple[TrainBatch, float]:
        """``batch`` with its student sequences drawn from the buffer, and their mean age (steps since the weights
        that generated them)."""
        n = len(batch[STREAM])
        rng = random.Random(derive_seed(self.config.seed, "on_policy", "replay", step, micro, rank))
        picked = [self.buffer[i] for i in rng.sample(range(len(self.buffer)), n)]
        stats.replayed += n
        streams = dict(batch.streams)
        device = batch[STREAM].input_ids.device
        streams[STREAM] = StreamBatch.of([p.seq for p in picked], self.pad_token_id, index=[p.index for p in picked])
        streams[STREAM] = streams[STREAM].to(device)
        return TrainBatch(streams), step - sum(p.weights_step for p in picked) / n

    def _generate(self, batch: StreamBatch, model: torch.nn.Module, seed: int) -> list[tuple[RolloutSequence, str]]:
        """One sample per sequence of ``batch``, from its prompt: ``(sequence cut at data.max_length, finish)``."""
        lengths = batch.prompt_lengths.tolist()
        prompts = [batch.input_ids[b, :p].tolist() for b, p in enumerate(lengths)]
        max_length = self.config.data.max_length
        budget = min(self.config.rollouts.max_new_tokens, max_length - min(lengths))
        sampling = self.sampling(budget, seed)
        was_training = model.training
        model.eval()
        try:
            with isolated_rng(), self._generation_weights(model):
                samples = self.generator.generate(prompts, sampling)
        except (RuntimeError, ValueError, AssertionError) as exc:  # an engine that cannot run this model
            name = self.generator.name
            raise VcrdError(f"on_policy.generator '{name}': generation failed: {last_line(exc)[:300]}") from exc
        finally:
            model.train(was_training)
        out = []
        for prompt, example, (sample,) in zip(prompts, batch.examples, samples, strict=True):
            keep = max_length - len(prompt)
            out.append((RolloutSequence(prompt, list(sample.token_ids[:keep]), None, example), sample.finish_reason))
        return out

    def validation_loss(self, model: torch.nn.Module) -> float:
        """The student's token-mean cross-entropy on the held-out sequences' response tokens (eval mode)."""
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        device = next(model.parameters()).device
        try:
            with torch.no_grad():
                for start in range(0, len(self.validation), self.batch_size):
                    batch = StreamBatch.of(self.validation[start : start + self.batch_size], self.pad_token_id)
                    batch = batch.to(device)
                    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                    logp = torch.log_softmax(logits[:, :-1, : self.vocab_size].float(), dim=-1)
                    nll = -logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
                    mask = batch.response_mask[:, 1:].bool()
                    total += float(nll[mask].double().sum())
                    count += int(mask.sum())
        finally:
            model.train(was_training)
        return total / max(count, 1)

    # -- weights --------------------------------------------------------------------------------------------

    def _ensure_loaded(self, model: torch.nn.Module) -> None:
        if self._loaded:
            return
        spec = self.config.models.student
        extra: dict[str, Any] = {"seed": self.config.seed, "in_process": True}
        if self.generator.reads_live_model:
            extra["model"] = model
        context = GeneratorContext(
            model_path=spec.path,
            tokenizer=self.tokenizer,
            tokenizer_path=self.config.models.tokenizer or spec.path,
            vocab_size=self.vocab_size,
            dtype=spec.dtype if spec.dtype != "auto" else "auto",
            role="student",
            extra=extra,
        )
        with isolated_rng():  # an engine that seeds the RNGs must not move the run's
            try:
                self.generator.load(context)
            except (RuntimeError, ValueError, AssertionError, OSError) as exc:
                raise VcrdError(
                    f"on_policy.generator '{self.generator.name}': cannot load '{spec.path}': {last_line(exc)[:300]}"
                ) from None
        self._loaded = True

    def _trainable(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def _mark_sync(self, model: torch.nn.Module, step: int) -> None:
        """Every optimizer step, fresh or not: at the schedule's sync points (``step // N`` advances; the first call:
        the initial weights, kept for good with ``sync: false``) record the weights the generator must hold, a
        copy of the trainable parameters when it lags the student (``hf`` swaps them in; ``vllm`` receives them
        at its next generation)."""
        first = self.synced_step is None
        if not first and not (self.on.sync and step // self.sync_every > self.synced_step // self.sync_every):
            return
        self.synced_step = step
        keep = self.lags and (self.generator.reads_live_model or self.on.sync)
        self.snapshot = {n: p.detach().clone() for n, p in self._trainable(model).items()} if keep else None

    def _push(self, model: torch.nn.Module) -> None:
        """A ``syncs_weights`` generator receives the weights of the last sync when it does not hold them yet
        (only when they changed: once per sync; ``sync: false`` keeps the model files' initial weights)."""
        if not (self.generator.syncs_weights and self.on.sync) or self.engine_step == self.synced_step:
            return
        with self._Swap(self._trainable(model), self.snapshot if self.lags else None):
            try:
                self.generator.update_weights(inference_weights(model))
            except (RuntimeError, ValueError, KeyError, AssertionError) as exc:
                raise VcrdError(
                    f"on_policy.generator '{self.generator.name}': the student's weights could not be synced: "
                    f"{last_line(exc)[:300]}"
                ) from None
        self.engine_step = self.synced_step

    class _Swap:
        def __init__(self, params: dict[str, torch.nn.Parameter], snapshot: dict[str, torch.Tensor] | None) -> None:
            self.params, self.snapshot, self.saved = params, snapshot, {}

        def __enter__(self) -> None:
            if self.snapshot is None:
                return
            with torch.no_grad():
                for n, p in self.params.items():
                    if not torch.equal(p, self.snapshot[n]):
                        self.saved[n] = p.detach().clone()
                        p.copy_(self.snapshot[n])

        def __exit__(self, *exc: Any) -> None:
            with torch.no_grad():
                for n, saved in self.saved.items():
                    self.params[n].copy_(saved)

    def _generation_weights(self, model: torch.nn.Module) -> StudentRollouts._Swap:
        """A context in which ``model`` holds the generator's weights (the last sync's trainable parameters, when
        the generator reads the live model and lags it); exact copies in and back out."""
        lagging = self.generator.reads_live_model and self.snapshot is not None
        return self._Swap(self._trainable(model), self.snapshot if lagging else None)

    # -- records and checkpoints ---------------------------------------------------------------------------

    def _records(
        self, fresh: list[tuple[RolloutSequence, str]], index: list[int], step: int, micro: int, seed: int, rank: int
    ) -> list[dict[str, Any]]:
        tok = self.tokenizer
        rows = []
        for (seq, reason), i in zip(fresh, index, strict=True):
            prompt_index, sample_index = self.slots[i]
            rows.append(
                {
                    "prompt_index": prompt_index,
                    "sample_index": sample_index,
                    "role": "student",
                    "prompt_token_ids": seq.prompt,
                    "response_token_ids": seq.response,
                    "text": tok.decode(seq.response, skip_special_tokens=True),
                    "finish_reason": reason,
                    "example": seq.example.to_json() if seq.example is not None else None,
                    "step": step + 1,
                    "weights_step": self.synced_step,
                    "seed": seed,
                    "micro_batch": micro,
                    "process": rank,
                }
            )
        return rows

    def _write_records(self, rows: list[dict[str, Any]], step: int, rank: int) -> None:
        """``<output.dir>/on_policy/step-NNNNNN-rank-R.parquet``: the rollouts optimizer step NNNNNN trained on
        (``step``; ``weights_step``: the optimizer steps done when the generator's weights were synced; ``seed``:
        the generate call's seed), with the rollout store's columns."""
        folder = self.out_dir / RECORD_DIR
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"step-{step + 1:06d}-rank-{rank}.parquet"
        with atomic_path(target) as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)

    def state_dict(self) -> dict[str, Any]:
        """This process's state for a checkpoint: the last sync's step and the replay buffer (the weights of the
        last sync, the same on every process, are :meth:`snapshot_state`)."""
        return {
            "synced_step": self.synced_step,
            "buffer": [self._buffered_state(b) for b in self.buffer],
            "mixing": self.mixing.state_dict(),
        }

    def snapshot_state(self) -> dict[str, torch.Tensor] | None:
        return None if self.snapshot is None else {n: t.detach().cpu() for n, t in self.snapshot.items()}

    @staticmethod
    def _buffered_state(b: _Buffered) -> dict[str, Any]:
        ex = b.seq.example.to_json() if b.seq.example is not None else None
        return {"prompt": b.seq.prompt, "response": b.seq.response, "index": b.index, "step": b.step,
                "weights_step": b.weights_step, "example": ex}  # fmt: skip

    def load_state_dict(
        self, state: dict[str, Any], snapshot: dict[str, torch.Tensor] | None, model: torch.nn.Module
    ) -> None:
        self.synced_step = state["synced_step"]
        self.mixing.load_state_dict(state["mixing"])
        params = self._trainable(model)
        self.snapshot = None if snapshot is None else {n: t.to(params[n].device) for n, t in snapshot.items()}
        self.engine_step = None  # a new engine starts from the model files
        self.buffer.clear()
        for b in state["buffer"]:
            example = Example.from_json(b["example"]) if b["example"] else None
            seq = RolloutSequence(b["prompt"], b["response"], None, example)
            self.buffer.append(_Buffered(seq, b["index"], b["step"], b["weights_step"]))

    def close(self) -> None:
        if self._loaded:
            self.generator.close()
            self._loaded = False


def steps_per_epoch(examples: int, per_device_batch: int, processes: int, accumulation: int) -> int:
    """Optimizer steps per epoch (``Trainer``'s count without ``dataloader_drop_last``)."""
    batches = math.ceil(math.ceil(examples / processes) / per_device_batch)
    return max(1, math.ceil(batches / accumulation))
