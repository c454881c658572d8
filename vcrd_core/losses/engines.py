"""The two loss engines behind one interface, and the choice between them (``training.loss_engine``).

A VCRD step runs one teacher and one student forward over a batch, makes the weights, and computes the
objective. What the forwards return and how the objective reads them depends on the engine:

* :class:`LogitsEngine`: the models' ``[B, L, V]`` logits; the objective gets :class:`StreamInputs`.
* :class:`FusedLinearEngine` (DESIGN.md §2.9): the final hidden states ``[B, L, H]``, captured at each model's
  decoder so that no logits are built; the objective gets :class:`HiddenStreamInputs` and computes the loss
  from hidden states and lm_heads, chunk by chunk; scoring logits are made (no grad) only for what a judge
  reads, and a :class:`~vcrd_core.RowJudge` is scored inside the loss pass.

Both implement :class:`LossEngine`: ``forward`` (one model over ids and mask), ``scoring_logits`` (the no-grad
logits a judge reads, from what ``forward`` returned), ``stream_inputs`` (the objective's input of one stream)
and ``loss_context`` (the mixed-precision context the loss runs under). :func:`choose_engine` picks one on the
first batch: ``fused_linear`` needs both models' lm_heads as plain ``nn.Linear`` (:func:`decoder_head`), whole
(unsharded) parameters, the teacher on the student's device, no float16, and ``lm_head(hidden) == logits`` on one
sequence (:func:`check_decoder_heads`); ``auto`` falls back to ``logits`` with a warning naming the reason.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vcrd_core.decision_points import DecisionPoints
from vcrd_core.errors import VcrdError
from vcrd_core.losses.objective import HiddenStreamInputs, LMHead, StreamInputs

#: The engine settings ``training.loss_engine`` accepts.
ENGINE_SETTINGS = ("auto", "fused_linear", "logits")
#: Config attributes of models whose logits are not ``lm_head(hidden)`` (soft-capping, scaling): logits engine.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")

#: A context manager factory (e.g. ``accelerator.autocast``).
ContextFactory = Callable[[], contextlib.AbstractContextManager]


@dataclass
class DecoderHead:
    """Where the fused-linear engine reads one causal LM: the module whose output is the final hidden state (the
    lm_head's input; a forward hook captures it) and the lm_head."""

    decoder: torch.nn.Module
    head: torch.nn.Linear

    def lm_head(self) -> LMHead:
        return LMHead.of(self.head)


def decoder_head(model: torch.nn.Module) -> DecoderHead | str:
    """``model``'s :class:`DecoderHead`, or why the fused-linear engine cannot read it (one phrase).

    Needs: an HF causal LM (under PEFT: its base model) whose output embeddings are a plain ``nn.Linear`` (not a
    LoRA-wrapped one: its adapter would be missed), whose ``forward`` takes ``logits_to_keep`` (so no logits are
    built) and which has a separate decoder module; the numbers are checked on the first batch
    (:func:`check_decoder_heads`).
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
    return DecoderHead(decoder, head)


def hidden_forward(
    model: torch.nn.Module, access: DecoderHead, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any
) -> tuple[torch.Tensor, Any]:
    """One forward of ``model`` (possibly DDP / PEFT wrapped) that builds no logits unless ``kwargs`` asks for them
    (``logits_to_keep`` defaults to none); returns the final hidden states ``[B, L, H]`` and the model's output."""
    captured: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    kwargs.setdefault("logits_to_keep", torch.empty(0, dtype=torch.long, device=input_ids.device))
    handle = access.decoder.register_forward_hook(hook)
    try:
        output = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise VcrdError(f"fused-linear engine: expected one decoder forward per model forward, saw {len(captured)}")
    return captured[0], output


class LossEngine:
    """One way of turning a step's forwards into the objective's inputs (see the module docstring)."""

    name: ClassVar[str]

    def forward(self, role: str, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """``role`` (``teacher`` / ``student``) ``model`` over the batch: logits or hidden states (``[B, L, *]``)."""
        raise NotImplementedError

    def scoring_logits(self, role: str, output: torch.Tensor) -> torch.Tensor:
        """No-grad ``[B, L, V]`` logits of ``role`` from what :meth:`forward` returned (for a judge)."""
        raise NotImplementedError

    def stream_inputs(
        self,
        teacher: torch.Tensor,
        student: torch.Tensor,
        points: DecisionPoints,
        weights: Any,
        input_ids: torch.Tensor | None = None,
    ) -> StreamInputs | HiddenStreamInputs:
        """The objective's input of one stream; ``weights``: ``[B, L]``, None (``w = 1``) or, fused only, a
        per-chunk callable with a ``want`` attribute (weights made in the loss pass); ``input_ids``: the stream's
        tokens (read by a divergence with per-sequence parameters, logits engine only)."""
        raise NotImplementedError

    def loss_context(self) -> contextlib.AbstractContextManager:
        """The context the objective runs under."""
        return contextlib.nullcontext()


class LogitsEngine(LossEngine):
    """The models' logits; the objective's chunked divergence reads them in place."""

    name: ClassVar[str] = "logits"

    def forward(self, role: str, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits

    def scoring_logits(self, role: str, output: torch.Tensor) -> torch.Tensor:
        return output.detach()

    def stream_inputs(
        self,
        teacher: torch.Tensor,
        student: torch.Tensor,
        points: DecisionPoints,
        weights: Any,
        input_ids: torch.Tensor | None = None,
    ) -> StreamInputs:
        if callable(weights) and not isinstance(weights, torch.Tensor):
            raise VcrdError("the logits engine takes weights as a [B, L] tensor, not weights made in a fused pass")
        return StreamInputs(teacher, student, points, weights, input_ids=input_ids)


class FusedLinearEngine(LossEngine):
    """Final hidden states and lm_heads; no ``[B, L, V]`` logits are built for the loss. ``autocast``: the
    accelerator's autocast factory (the loss's and the scoring logits' lm_head matmuls run under the same mixed
    precision as the models' own lm_heads would: accelerate autocasts only the models' forwards)."""

    name: ClassVar[str] = "fused_linear"

    def __init__(self, teacher: DecoderHead | None, student: DecoderHead, autocast: ContextFactory) -> None:
        #: ``teacher`` None: the teacher comes from a top-k cache (``training.teacher_cache``), never run here.
        self.heads: dict[str, DecoderHead | None] = {"teacher": teacher, "student": student}
        self._autocast = autocast

    def _head(self, role: str) -> DecoderHead:
        access = self.heads[role]
        if access is None:
            raise VcrdError(f"fused-linear engine: no {role} model runs here (training.teacher_cache)")
        return access

    def forward(self, role: str, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        hidden, _ = hidden_forward(model, self._head(role), input_ids, attention_mask)
        return hidden

    def scoring_logits(self, role: str, output: torch.Tensor) -> torch.Tensor:
        head = self._head(role).head
        with torch.no_grad(), self._autocast():  # as the models' own lm_heads under mixed precision
            return torch.nn.functional.linear(output.detach(), head.weight, head.bias)

    def stream_inputs(
        self,
        teacher: torch.Tensor,
        student: torch.Tensor,
        points: DecisionPoints,
        weights: Any,
        input_ids: torch.Tensor | None = None,
    ) -> HiddenStreamInputs:
        teacher_head = self.heads["teacher"]
        heads = (None if teacher_head is None else teacher_head.lm_head(), self._head("student").lm_head())
        want = getattr(weights, "want", None) if callable(weights) else None
        return HiddenStreamInputs(teacher, student, heads[0], heads[1], points, weights, want=want)

    def loss_context(self) -> contextlib.AbstractContextManager:
        return self._autocast()


def check_decoder_heads(
    teacher: torch.nn.Module | None,
    student: torch.nn.Module,
    pair: tuple[DecoderHead | None, DecoderHead],
    ids: torch.Tensor,
    attn: torch.Tensor,
    autocast: ContextFactory,
) -> str:
    """One no-grad forward per model over one sequence with logits: their lm_head applied to the captured hidden
    states must give the model's own logits (else something between them, e.g. a logit transform, is missed).
    Returns the reason it does not ("" when it does). Runs in eval mode with a forked RNG: the check draws no
    dropout mask, so a resumed run stays bitwise equal."""
    teacher_device = ids.device if teacher is None else next(teacher.parameters()).device
    models = [("teacher", teacher, pair[0], teacher_device), ("student", student, pair[1], ids.device)]
    models = [m for m in models if m[1] is not None]  # no teacher: it comes from a top-k cache
    cuda = sorted({d.index or 0 for d in (teacher_device, ids.device) if d.type == "cuda"})
    training = student.training
    with torch.no_grad(), torch.random.fork_rng(devices=cuda):
        student.eval()
        try:
            for who, m, access, device in models:
                hidden, out = hidden_forward(m, access, ids.to(device), attn.to(device), logits_to_keep=0)
                head = access.head
                with autocast():  # as the prepared models' own forwards run (mixed precision)
                    mine = torch.nn.functional.linear(hidden.to(head.weight.dtype), head.weight, head.bias).float()
                theirs = out.logits.float()
                if mine.shape != theirs.shape:
                    return f"the {who}'s logits {tuple(theirs.shape)} are not lm_head(hidden) {tuple(mine.shape)}"
                scale = float(theirs.abs().max()) + 1e-6
                diff = float((mine - theirs).abs().max())
                if not diff <= 1e-3 * scale:
                    return f"the {who}'s logits differ from lm_head(hidden) by {diff:.3g} (max |logit| {scale:.3g})"
        finally:
            student.train(training)
    return ""


def choose_engine(
    setting: str,
    teacher: torch.nn.Module | None,
    student: torch.nn.Module,
    sample: tuple[torch.Tensor, torch.Tensor],
    *,
    device: torch.device,
    sharded: bool = False,
    fp16: bool = False,
    autocast: ContextFactory = contextlib.nullcontext,
    wrapped_student: torch.nn.Module | None = None,
) -> tuple[LossEngine, str]:
    """The engine for ``setting`` (``auto`` / ``fused_linear`` / ``logits``) and, for ``logits``, why (one phrase).

    ``teacher`` / ``student``: the unwrapped models (``student`` as it runs: its train mode is kept; ``teacher``
    None: its distributions come from a top-k cache, only the student's head is checked); ``sample``:
    one sequence's ids and attention mask for :func:`check_decoder_heads` (run through ``wrapped_student``, the
    student as the trainer calls it, when given); ``device``: the student's; ``sharded``: FSDP / DeepSpeed ZeRO-3;
    ``fp16``: float16 mixed precision. ``fused_linear`` that is not possible is an error;
    ``auto`` warns and uses ``logits``."""
    if setting not in ENGINE_SETTINGS:
        raise VcrdError(f"training.loss_engine: {setting!r} is not one of {', '.join(ENGINE_SETTINGS)}")
    reason = ""
    pair: tuple[Any, Any] = (None, None)
    if setting == "logits":
        reason = "training.loss_engine is logits"
    elif teacher is None:  # the teacher's distributions come from a top-k cache: only the student is read
        student_head = decoder_head(student)
        if sharded:
            reason = "parameters are sharded (FSDP / DeepSpeed ZeRO-3): the lm_head weights are not whole"
        elif isinstance(student_head, str):
            reason = f"the student: {student_head}"
        elif fp16 or student_head.head.weight.dtype == torch.float16:
            reason = "float16 logits: the fused engine's logit gradients would underflow in float16 (use bf16)"
        else:
            runs = wrapped_student if wrapped_student is not None else student
            reason = check_decoder_heads(None, runs, (None, student_head), sample[0], sample[1], autocast)
        pair = (None, student_head)
    else:
        pair = (decoder_head(teacher), decoder_head(student))
        if sharded:
            reason = "parameters are sharded (FSDP / DeepSpeed ZeRO-3): the lm_head weights are not whole"
        elif isinstance(pair[0], str) or isinstance(pair[1], str):
            named = zip(("teacher", "student"), pair, strict=True)
            reason = " and ".join(f"the {who}: {r}" for who, r in named if isinstance(r, str))
        elif next(teacher.parameters()).device != device:
            reason = "the teacher is on another device than the student"
        elif fp16 or torch.float16 in (pair[0].head.weight.dtype, pair[1].head.weight.dtype):
            # its logit gradients are rounded to the compute dtype in the forward pass, before the GradScaler's
            # scale: in float16 small ones would underflow (bfloat16 has float32's range)
            reason = "float16 logits: the fused engine's logit gradients would underflow in float16 (use bf16)"
        else:
            runs = wrapped_student if wrapped_student is not None else student
            reason = check_decoder_heads(teacher, runs, pair, sample[0], sample[1], autocast)
    if reason and setting == "fused_linear":
        raise VcrdError(f"training.loss_engine: fused_linear is not possible here: {reason}; use auto or logits")
    if reason:
        if setting == "auto":
            warnings.warn(f"training.loss_engine auto: using the logits engine: {reason}", stacklevel=3)
        return LogitsEngine(), reason
    return FusedLinearEngine(pair[0], pair[1], autocast), ""
