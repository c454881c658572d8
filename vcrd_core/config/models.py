"""The pydantic models of a whole run (phase one of validation).

Components appear as ``{name, params}`` blocks (:class:`vcrd_core.ComponentSpec` subclasses); their
params are validated in phase two against the named plugin's own ``Params``
(:func:`vcrd_core.config.loader.validate_components`). Defaults follow the paper's Table 9 where it has one.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vcrd_core.plugins.kinds import (
    DivergenceSpec,
    EvaluatorSpec,
    GeneratorSpec,
    JudgeSpec,
    MixingSpec,
    WeightingSpec,
)

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
#: The torch dtype of every ``Dtype`` name but ``auto`` (the checkpoint's own, or the caller's default).
TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Proposal = Literal["sample", "greedy"]


class Section(BaseModel):
    # No inf/NaN anywhere: a run cannot use them, and YAML's .inf would otherwise validate.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelSpec(Section):
    path: str = Field(description="Local directory of an HF-format model (no download happens at run time).")
    dtype: Dtype = "bfloat16"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None


class ModelsConfig(Section):
    teacher: ModelSpec
    student: ModelSpec
    tokenizer: str | None = Field(None, description="Tokenizer directory; default: the student's path.")


class DataConfig(Section):
    train: str = Field(description="Training prompts: JSONL, Parquet, or a `datasets` directory (save_to_disk).")
    eval: str | None = None
    prompt_field: str = "prompt"
    answer_field: str | None = Field(None, description="Field holding the reference answer (optional).")
    tests_field: str | None = Field(None, description="Field holding the tests of a code problem (optional).")
    template: Literal["chat", "qwen25_math_cot", "plain"] = Field(
        "chat",
        description="chat: the tokenizer's chat template (one user turn); qwen25_math_cot: the chat template with "
        "Qwen2.5-Math's chain-of-thought system prompt; plain: the prompt text as it is.",
    )
    max_prompt_length: int = Field(512, gt=0)
    overlong: Literal["drop", "refuse"] = Field(
        "drop", description="Prompts over max_prompt_length tokens: dropped and counted, or the run refused."
    )
    max_length: int = Field(1024, gt=0)
    num_prompts: int | None = Field(None, gt=0, description="Use only the first N prompts.")
    response_field: str | None = Field(None, description="Field holding the reference response (`vcrd sft`).")

    @model_validator(mode="after")
    def _lengths(self) -> DataConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be smaller than max_length ({self.max_length})"
            )
        return self


class RolloutsConfig(Section):
    backend: Literal["vllm", "hf"] | None = Field(
        None, description="Shorthand for `generator: {name: BACKEND}` (the generator with default params)."
    )
    temperature: float = Field(1.0, ge=0, description="0: greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: no top-k.")
    max_new_tokens: int = Field(512, gt=0)
    samples_per_prompt: int = Field(1, gt=0)
    stop: list[str] = Field(default_factory=list, description="Stop strings (kept in the response).")
    teacher: bool = Field(True, description="Generate teacher rollouts (teacher-prefix stream).")
    student: bool = Field(True, description="Generate student rollouts (student-prefix stream).")
    generator: GeneratorSpec | None = Field(None, description="Default: {name: vllm} (or `backend`).")
    store: str | None = Field(None, description="Rollout store directory; default: <output.dir>/rollouts.")
    chunk_size: int = Field(
        256, gt=0, description="Prompts per Parquet file of the store: the unit of resumption and of --shard."
    )

    @model_validator(mode="after")
    def _one_generator(self) -> RolloutsConfig:
        if self.backend is not None and self.generator is not None and self.generator.name != self.backend:
            raise ValueError(
                f"backend '{self.backend}' and generator '{self.generator.name}' disagree; set only generator"
            )
        return self

    def generator_spec(self) -> GeneratorSpec:
        """The generator component: ``generator``, else ``{name: backend}``, else ``{name: vllm}``."""
        return self.generator if self.generator is not None else GeneratorSpec(name=self.backend or "vllm")


class OnPolicyConfig(Section):
    """Student rollouts generated from the live student during training (Algorithm 1, line 9). The teacher is
    frozen, so its rollouts always come from the store; only the student-prefix stream's sequences are fresh."""

    schedule: Literal["static", "steps", "epoch"] = Field(
        "static",
        description="static: the store's student rollouts, generated once before training (the paper's experiments, "
        "as DistiLLM-2); steps: generated during training from weights synced every `every_steps` optimizer steps "
        "(1: Algorithm 1 as written); epoch: from weights synced at the start of each epoch.",
    )
    every_steps: int = Field(1, gt=0, description="With schedule: steps, sync the generator every N optimizer steps.")
    lam: float = Field(
        1.0,
        ge=0,
        le=1,
        alias="lambda",
        description="Probability that an optimizer step's student-prefix sequences are freshly generated (GKD's "
        "lmbda; 1: fully on-policy); otherwise they come from the replay buffer (when it holds a batch) or the store.",
    )
    generator: GeneratorSpec | None = Field(
        None, description="hf (the live student's generate) or vllm (an in-process engine, weight-synced); default hf."
    )
    sync: bool = Field(
        True,
        description="false: the generator keeps the initial student's weights (fresh samples from the frozen initial "
        "student: the staleness ablation).",
    )
    buffer_size: int = Field(
        0, ge=0, description="Replay buffer of generated rollouts (sequences, per process, oldest evicted); 0: none."
    )
    record: bool = Field(
        False, description="Write every generated rollout to <output.dir>/on_policy/ (Parquet, with step and seed)."
    )
    mixing: MixingSpec | None = Field(
        None,
        description="Where each micro-batch's student sequences come from: lambda (default: fresh with probability "
        "lambda, else replay, else the data) or distillm (DistiLLM's adaptive off-policy schedule).",
    )
    validation_examples: int = Field(
        0,
        ge=0,
        description="Examples held out of training (the dataset's last ones) whose sequences' student cross-entropy "
        "is the validation loss an adaptive mixing rule reads (before training and after each epoch).",
    )
    fallback: Literal["student", "teacher"] = Field(
        "student",
        description="What a step that is not fresh (and finds no replay) trains the student-prefix stream on: the "
        "store's student rollouts, or its teacher rollouts (GKD's 'else the data').",
    )

    @property
    def fresh(self) -> bool:
        """Whether student rollouts are generated during training."""
        return self.schedule != "static"

    def generator_spec(self) -> GeneratorSpec:
        return self.generator if self.generator is not None else GeneratorSpec(name="hf")

    def mixing_spec(self) -> MixingSpec:
        return self.mixing if self.mixing is not None else MixingSpec(name="lambda")


class ProposalsConfig(Section):
    """How the *other* model proposes at a rollout's prefix (SPEC "Proposals"; paper §2.1 samples)."""

    teacher: Proposal = Field("sample", description="The teacher's proposal a^T on the student prefix.")
    student: Proposal = Field("sample", description="The student's proposal a^S on the teacher prefix.")


class ScoringConfig(Section):
    mode: Literal["online", "offline"] = Field(
        "online", description="online: judge each step with the current student (Alg. 1); offline: once, at rollout."
    )
    cache_static: bool = Field(True, description="Cache online scores that do not depend on the student.")


class StreamConfig(Section):
    enabled: bool = True
    lam: float = Field(1.0, ge=0, alias="lambda", description="λ of this stream (Eq. 4).")
    divergence: DivergenceSpec = Field(
        None,  # type: ignore[assignment]  # filled in by ObjectiveConfig: skl / srkl by stream
        description="Default: skl on the teacher prefix, srkl on the student prefix (Eq. 2).",
    )
    weighting: WeightingSpec | None = Field(None, description="Overrides the run's weighting rule.")
    judge: JudgeSpec | None = Field(None, description="Overrides the run's judge.")
    target: Literal["teacher", "tokens"] = Field(
        "teacher",
        description="teacher: the teacher's distribution at each decision point; tokens: the sequence's own next "
        "token as a point mass (forward KL to it is the rollout's cross-entropy: SeqKD on the teacher prefix). "
        "Needs the logits loss engine.",
    )


def _stream(divergence: str) -> StreamConfig:
    return StreamConfig(divergence=DivergenceSpec(name=divergence))


class ObjectiveConfig(Section):
    reduction: Literal["sequence_mean", "sequence_sum", "token_mean"] = "sequence_mean"
    temperature: float = Field(1.0, gt=0, description="Softmax temperature τ of both models in the divergence.")
    chunk_size: int | None = Field(None, gt=0, description="Decision points per chunk of the loss (None: auto).")
    weight_warn_max: float = Field(100.0, gt=0, description="Warn when a weight exceeds this.")
    compile: bool = Field(
        False,
        description="torch.compile the fused-linear engine's per-chunk log-softmaxes and divergence (forward and "
        "backward): fewer passes over the vocabulary; the first step compiles.",
    )
    teacher_prefix: StreamConfig = Field(default_factory=lambda: _stream("skl"))
    student_prefix: StreamConfig = Field(default_factory=lambda: _stream("srkl"))

    @model_validator(mode="after")
    def _default_divergences(self) -> ObjectiveConfig:
        for stream, default in ((self.teacher_prefix, "skl"), (self.student_prefix, "srkl")):
            if stream.divergence is None:
                stream.divergence = DivergenceSpec(name=default)
        return self


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(Section):
    enabled: bool = True
    r: int = Field(16, gt=0)
    alpha: float = Field(128, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS))


class TrainingConfig(Section):
    learning_rate: float = Field(5e-5, gt=0)
    epochs: int = Field(2, gt=0)
    max_steps: int | None = Field(None, gt=0)
    per_device_batch_size: int = Field(1, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    gradient_checkpointing: bool = False
    lora: LoraConfig = Field(default_factory=LoraConfig)
    logging_steps: int = Field(10, gt=0)
    save_steps: int | None = Field(None, gt=0)
    accelerate_config: str | None = Field(None, description="An accelerate config file (DDP, FSDP, DeepSpeed).")
    batch_size: int | None = Field(
        None,
        gt=0,
        description="Effective (global) batch per optimizer step; sets gradient_accumulation_steps to "
        "batch_size / (per_device_batch_size x processes), which must divide exactly.",
    )
    max_nonfinite_steps: int = Field(
        5, gt=0, description="Stop the run after this many consecutive steps skipped for a non-finite loss or gradient."
    )
    teacher_cache: str | None = Field(
        None,
        description="A `vcrd teacher-cache` directory: the teacher's top-k distribution at every decision point of the "
        "(static) rollout store, read instead of a teacher forward; no teacher is loaded. Needs static rollouts and "
        "offline weights, rules that read no scores, or teacher_likelihood online on the fused-linear engine; the "
        "tail of the teacher's distribution is one extra category (README, 'Teacher-free steps').",
    )
    loss_engine: Literal["auto", "fused_linear", "logits"] = Field(
        "auto",
        description="fused_linear: the loss from the models' final hidden states and lm_heads, never a [tokens, V] "
        "logits tensor or its gradient; logits: from the models' logits; auto: fused_linear where the models and the "
        "setup allow it (a plain nn.Linear lm_head checked against the model's own logits on the first batch, no "
        "float16, no FSDP / ZeRO-3; DESIGN.md §2.9), else logits with a warning naming why.",
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other transformers TrainingArguments field (e.g. save_total_limit, report_to), checked at "
        "run start.",
    )


class EvaluationConfig(Section):
    evaluators: list[EvaluatorSpec] = Field(default_factory=list)
    max_new_tokens: int = Field(512, gt=0)
    every_steps: int | None = Field(None, gt=0)
    temperature: float = Field(0.0, ge=0, description="0: greedy decoding (the paper's math and code protocol).")
    top_p: float = Field(1.0, gt=0, le=1)
    generator: GeneratorSpec | None = Field(None, description="Default: the rollouts' generator.")
    dir: str | None = Field(None, description="Where records and summaries go; default: <output.dir>/eval/<model>.")


class OutputConfig(Section):
    dir: str = "runs/vcrd"
    overwrite: bool = False


class RunConfig(Section):
    """A whole vcrd run: rollouts → scoring → training → evaluation."""

    name: str = "vcrd"
    seed: int = Field(0, ge=0, lt=2**32, description="Seeds torch, numpy and Python (numpy needs [0, 2**32)).")
    models: ModelsConfig
    data: DataConfig
    rollouts: RolloutsConfig = Field(default_factory=RolloutsConfig)
    proposals: ProposalsConfig = Field(default_factory=ProposalsConfig)
    judge: JudgeSpec | None = Field(
        None, description="The validity judge; required unless every weighting is constant."
    )
    weighting: WeightingSpec = Field(default_factory=lambda: WeightingSpec(name="ratio"))
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    on_policy: OnPolicyConfig = Field(default_factory=OnPolicyConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _some_stream(self) -> RunConfig:
        streams = (self.objective.teacher_prefix, self.objective.student_prefix)
        if not any(s.enabled and s.lam > 0 for s in streams):
            raise ValueError("objective: at least one stream must be enabled with lambda > 0")
        return self

    @model_validator(mode="after")
    def _teacher_cache_needs_no_teacher(self) -> RunConfig:
        if self.training.teacher_cache is None:
            return self
        if self.on_policy.fresh:
            raise ValueError(
                "training.teacher_cache: on-policy student rollouts are generated during training, but the cache holds "
                "only the store's sequences; use static rollouts (on_policy.schedule: static) or train without it"
            )
        return self

    def streams(self) -> dict[str, StreamConfig]:
        """The enabled streams by name (``teacher_prefix``, ``student_prefix``)."""
        o = self.objective
        return {
            k: s for k, s in (("teacher_prefix", o.teacher_prefix), ("student_prefix", o.student_prefix)) if s.enabled
        }
