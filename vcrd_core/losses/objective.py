r"""The validity-weighted distillation objective (Eq. 3–4), usable from any training loop.

.. math::

    \mathcal{L} = \lambda_T \sum_t w^T_t\, D_{\mathrm{SKL}}(p(\cdot|c^T_{t-1}) \,\|\, q_\theta(\cdot|c^T_{t-1}))
                 + \lambda_S \sum_t w^S_t\, D_{\mathrm{SRKL}}(p(\cdot|c^S_{t-1}) \,\|\, q_\theta(\cdot|c^S_{t-1}))

over the decision points ``t`` of each stream (:class:`vcrd_core.DecisionPoints`: the response token at
position ``t``, whose distributions are the logits at row ``t-1``). Each stream's divergence is any
:class:`vcrd_core.Divergence` (SKL and SRKL by default in configs; the baselines swap them).

The objective returns *sums and counts* rather than a mean, so that gradient accumulation and
multi-process training can normalise by the global count (all-reduced across processes and
accumulation steps), and so that an HF ``Trainer.compute_loss``, TRL, or a hand-written loop can use
it as a library: ``output.loss()`` for one batch, ``output.loss(counts=global_counts)`` otherwise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from vcrd_core.decision_points import DecisionPoints, Stream
from vcrd_core.errors import VcrdError
from vcrd_core.losses.chunked import chunked_divergence, token_logprobs
from vcrd_core.losses.divergence import Divergence, SequenceStats
from vcrd_core.losses.fused_linear import RowChunk, RowExtras, fused_linear_divergence
from vcrd_core.losses.reduction import Reduction, row_coefficients
from vcrd_core.losses.sparse import SparseTeacher, sparse_divergence
from vcrd_core.losses.weighting import check_weight_counts, invalid_weight_counts
from vcrd_core.plugins.registry import create
from vcrd_core.regimes import DEFAULT_PARITY_TOL, REGIMES, check_parity_tol, regime_masks

if TYPE_CHECKING:
    from vcrd_core.config.models import ObjectiveConfig

#: Quantiles of the weights reported per stream (name, q).
WEIGHT_QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


def _quantile(ordered: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile of sorted values, linear interpolation (``torch.quantile``'s default)."""
    pos = q * (ordered.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, ordered.numel() - 1)
    return ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo])


class VcrdWeightWarning(UserWarning):
    """Weights above the objective's ``weight_warn_max`` (the ratio rule reaches ``1/ε`` when ``r_t -> 0``)."""


def _resolve_points(points: DecisionPoints | None, labels: torch.Tensor | None, where: str) -> DecisionPoints:
    """Exactly one of ``points`` / ``labels``: the stream's :class:`DecisionPoints`."""
    if (points is None) == (labels is None):
        raise VcrdError(f"{where}: pass exactly one of points (a DecisionPoints) or labels (-100 elsewhere)")
    if points is None:
        assert labels is not None
        return DecisionPoints.from_labels(labels)
    if not isinstance(points, DecisionPoints):
        raise VcrdError(
            f"{where}: points must be a vcrd_core.DecisionPoints (e.g. DecisionPoints.from_masks("
            f"attention_mask, response_mask)), got {type(points).__name__}"
        )
    return points


@dataclass
class StreamInputs:
    """One stream's batch, all at token positions ``[B, L]``.

    ``teacher_logits`` ``[B, L, V_t]`` and ``student_logits`` ``[B, L, V_s]`` are the models' unshifted
    outputs (row ``t-1`` predicts token ``t``); the teacher's carry no gradient (they are detached).
    The decision points come as ``points`` (a :class:`DecisionPoints`) or as HF-style ``labels``
    ``[B, L]`` (``-100``: not a decision point; :meth:`DecisionPoints.from_labels`), exactly one of them.
    ``weights`` ``[B, L]`` holds ``w_t`` at the same positions, or None for ``w = 1``. ``input_ids`` ``[B, L]``:
    the stream's tokens, needed only by a divergence with per-sequence parameters
    (:attr:`vcrd_core.Divergence.uses_sequence_stats`: it reads the log-probability of each rollout token).
    ``teacher_logits`` may instead be a :class:`~vcrd_core.losses.sparse.SparseTeacher` (the teacher's top-k at
    each decision point, in the points' order, from the teacher cache): the divergence is then computed on both
    distributions coarsened to the top-k ids and a tail bucket (:mod:`vcrd_core.losses.sparse`).
    """

    teacher_logits: torch.Tensor | SparseTeacher
    student_logits: torch.Tensor
    points: DecisionPoints | None = None
    weights: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.points = _resolve_points(self.points, self.labels, "StreamInputs")

    @property
    def decision_points(self) -> DecisionPoints:
        assert self.points is not None
        return self.points


@dataclass
class LMHead:
    """An lm_head as the fused-linear loss reads it: ``weight`` ``[V, H]`` and an optional ``bias`` ``[V]``
    (for an HF model: ``model.get_output_embeddings()``'s parameters; the student's may require grad)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None

    @classmethod
    def of(cls, module: torch.nn.Module) -> LMHead:
        """The head of an ``nn.Linear`` (e.g. ``model.get_output_embeddings()``)."""
        if not isinstance(module, torch.nn.Linear):
            raise VcrdError(f"LMHead.of: expected a torch.nn.Linear lm_head, got {type(module).__name__}")
        return cls(module.weight, module.bias)


@dataclass
class HiddenStreamInputs:
    """One stream's batch as final hidden states (the lm_heads' inputs) instead of logits: the objective then
    computes the stream's divergence with :func:`vcrd_core.losses.fused_linear.fused_linear_divergence`,
    which never builds a ``[tokens, V]`` logits tensor or its gradient (DESIGN.md §2.9). The value and the
    gradients (to ``student_hidden`` and to the student lm_head's weight/bias when they require grad) equal
    those of :class:`StreamInputs` with ``logits = hidden @ W.T (+ b)``.

    ``teacher_hidden`` ``[B, L, H_t]`` (no gradient) and ``student_hidden`` ``[B, L, H_s]``; ``teacher_head`` /
    ``student_head``: their :class:`LMHead`; ``points`` / ``labels`` / ``weights`` as in :class:`StreamInputs`.
    With a top-k teacher cache ``teacher_hidden`` is a :class:`~vcrd_core.losses.sparse.SparseTeacher` (its rows in
    the points' order) and ``teacher_head`` is None.

    ``weights`` may also be a callable that makes the weights from the logits of the same pass (weights that
    depend on them, e.g. a :class:`vcrd_core.RowJudge`'s scores): it is called once per chunk of decision
    points (in order) with a :class:`vcrd_core.losses.fused_linear.RowChunk` carrying the extras asked for in
    ``want``, before the chunk's gradient, and returns the chunk's weights ``w_t`` (float ``[stop - start]``,
    finite, ``>= 0``); the objective applies the reduction and computes the weight statistics afterwards.
    """

    teacher_hidden: torch.Tensor | SparseTeacher
    student_hidden: torch.Tensor
    teacher_head: LMHead | None
    student_head: LMHead
    points: DecisionPoints | None = None
    weights: torch.Tensor | Callable[[RowChunk], torch.Tensor] | None = None
    labels: torch.Tensor | None = None
    want: RowExtras | None = None

    def __post_init__(self) -> None:
        self.points = _resolve_points(self.points, self.labels, "HiddenStreamInputs")
        sparse = isinstance(self.teacher_hidden, SparseTeacher)
        for what in ("student_head",) if sparse else ("teacher_head", "student_head"):
            if not isinstance(getattr(self, what), LMHead):
                raise VcrdError(
                    f"HiddenStreamInputs: {what} must be a vcrd_core.losses.objective.LMHead(weight, bias) "
                    f"(e.g. LMHead.of(model.get_output_embeddings())), got {type(getattr(self, what)).__name__}"
                )

    @property
    def decision_points(self) -> DecisionPoints:
        assert self.points is not None
        return self.points


@dataclass
class StreamLoss:
    """One stream's term of Eq. 4: its divergence and its coefficient ``λ >= 0``."""

    divergence: Divergence
    lam: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.divergence, Divergence):
            raise VcrdError(
                f"StreamLoss.divergence must be a vcrd_core.Divergence (e.g. vcrd_core.create('divergences', 'skl')), "
                f"got {type(self.divergence).__name__}"
            )
        if not (isinstance(self.lam, (int, float)) and math.isfinite(self.lam) and self.lam >= 0):
            raise VcrdError(f"StreamLoss.lam must be a finite number >= 0 (Eq. 4), got {self.lam!r}")


@dataclass
class StreamOutput:
    """One stream's result: a differentiable sum and the count that normalises it.

    ``loss_sum``: the sum over counted sequences of the per-sequence value (``sequence_*``) or
    :math:`\\sum w D` (``token_mean``); ``count``: counted sequences, or decision points for
    ``token_mean``; ``num_points``: decision points; ``weight_stats``: min, p50, p90, p99, max, mean
    and the shares of the regimes (``share_attenuation``, ``share_parity``, ``share_amplification``:
    :mod:`vcrd_core.regimes`) over the decision points; ``parameter_stats``: the mean, min and max over the
    points of each per-sequence divergence parameter (``<name>_mean`` ...; empty for a divergence without).
    """

    loss_sum: torch.Tensor
    count: int
    num_points: int
    lam: float
    weight_stats: dict[str, float] = field(default_factory=dict)
    parameter_stats: dict[str, float] = field(default_factory=dict)


@dataclass
class ObjectiveOutput:
    """The objective on one (micro-)batch, per stream (keys: ``teacher_prefix``, ``student_prefix``)."""

    streams: dict[str, StreamOutput]
    reduction: Reduction = Reduction.SEQUENCE_MEAN

    def counts(self) -> dict[str, int]:
        """The local counts per stream: sum (all-reduce) them to get the global ``counts`` of :meth:`loss`."""
        return {name: out.count for name, out in self.streams.items()}

    def loss(
        self,
        counts: Mapping[str, int | float | torch.Tensor] | None = None,
        *,
        num_items_in_batch: int | torch.Tensor | Mapping[str, int | torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """:math:`\\sum_k \\lambda_k\\, \\text{loss\\_sum}_k / \\text{count}_k` (Eq. 4).

        ``counts`` overrides the local counts with global ones (summed across processes and
        accumulation steps) so that the sum of the micro-batches' losses equals the loss of the
        whole batch. A stream whose count is 0 adds 0.

        ``num_items_in_batch`` is transformers' ``Trainer.compute_loss`` argument of that name: the number of
        label tokens (here: decision points) in the whole accumulated batch. It is the global count of the
        ``token_mean`` reduction (one number for a one-stream objective, or a mapping per stream); the
        sequence reductions count sequences, so they need ``counts`` instead and refuse it.
        """
        if num_items_in_batch is not None:
            if counts is not None:
                raise VcrdError("ObjectiveOutput.loss: pass counts or num_items_in_batch, not both")
            if self.reduction is not Reduction.TOKEN_MEAN:
                raise VcrdError(
                    f"ObjectiveOutput.loss: num_items_in_batch counts tokens, but the '{self.reduction.value}' "
                    "reduction is normalised by sequences; pass counts= (each stream's counts() summed over "
                    "micro-batches and processes) or use reduction token_mean"
                )
            if isinstance(num_items_in_batch, Mapping):
                counts = num_items_in_batch
            elif len(self.streams) == 1:
                counts = dict.fromkeys(self.streams, num_items_in_batch)
            else:
                raise VcrdError(
                    "ObjectiveOutput.loss: one num_items_in_batch for two streams is ambiguous; pass a mapping "
                    f"{{stream: count}} for {', '.join(self.streams)}"
                )
        counts = dict(counts or {})
        unknown = sorted(set(counts) - set(self.streams))
        if unknown:
            raise VcrdError(
                f"ObjectiveOutput.loss: counts for unknown stream(s) {', '.join(unknown)}; "
                f"streams here: {', '.join(self.streams)}"
            )
        total: torch.Tensor | None = None
        for name, out in self.streams.items():
            count = counts.get(name, out.count)
            if isinstance(count, torch.Tensor):
                c = count.to(device=out.loss_sum.device, dtype=out.loss_sum.dtype)
                term = out.lam * torch.where(c > 0, out.loss_sum / c.clamp_min(1e-30), torch.zeros_like(c))
            elif count > 0:
                term = out.lam * out.loss_sum / count
            else:
                term = out.loss_sum * 0.0
            total = term if total is None else total + term
        assert total is not None
        return total

    def metrics(self) -> dict[str, float]:
        """A flat dict of floats for loggers: per stream ``<stream>/loss`` (local ``loss_sum / count``),
        ``/count``, ``/points`` and ``/weight_<stat>``, plus the total ``loss``."""
        out: dict[str, float] = {"loss": float(self.loss().detach())}
        for name, s in self.streams.items():
            out[f"{name}/loss"] = float(s.loss_sum.detach()) / s.count if s.count else 0.0
            out[f"{name}/count"] = float(s.count)
            out[f"{name}/points"] = float(s.num_points)
            for stat, value in s.weight_stats.items():
                out[f"{name}/weight_{stat}"] = value
            for stat, value in s.parameter_stats.items():
                out[f"{name}/{stat}"] = value
        return out


class _DeferredWeights:
    """The fused engine's ``weights`` callable for weights made inside its pass: calls the user's callable per chunk,
    keeps its weights (for the statistics) and returns them times the reduction's factor."""

    def __init__(
        self, fn: Callable[[RowChunk], torch.Tensor], factor: torch.Tensor, into: torch.Tensor, where: str
    ) -> None:
        self.fn, self.factor, self.into, self.where = fn, factor, into, where

    def __call__(self, chunk: RowChunk) -> torch.Tensor:
        w = self.fn(chunk)
        n = chunk.stop - chunk.start
        if not isinstance(w, torch.Tensor) or w.shape != (n,) or not w.is_floating_point():
            got = f"{w.dtype} {tuple(w.shape)}" if isinstance(w, torch.Tensor) else type(w).__name__
            raise VcrdError(f"{self.where}: the weights callable must return a float tensor [{n}], got {got}")
        w = w.detach().to(device=self.into.device, dtype=torch.float32)
        self.into[chunk.start : chunk.stop] = w
        return w * self.factor[chunk.start : chunk.stop]


class VCRDObjective:
    """The weighted two-stream objective :math:`\\lambda_T \\mathcal{L}_{LV-SKL} + \\lambda_S \\mathcal{L}_{LV-SRKL}`
    (Eq. 3–4) on batches of logits, memory-bounded through :func:`vcrd_core.losses.chunked.chunked_divergence`.

    Either stream may be None (the SRKL-only baseline of Table 5 has no teacher-prefix stream).
    ``temperature``, ``vocab_size`` (the tokenizer's real vocabulary: only columns ``[:vocab_size]``
    of padded lm_heads are used) and ``chunk_size`` are passed to the chunked divergence. A stream
    whose largest weight exceeds ``weight_warn_max`` emits a :class:`VcrdWeightWarning` (None: never).
    ``compile``: ``torch.compile`` the fused-linear engine's per-chunk work (:class:`HiddenStreamInputs` only).
    ``parity_tol``: the tolerance of the weights' regimes in the statistics (:mod:`vcrd_core.regimes`).
    """

    def __init__(
        self,
        teacher_prefix: StreamLoss | None,
        student_prefix: StreamLoss | None,
        *,
        reduction: Reduction | str = Reduction.SEQUENCE_MEAN,
        temperature: float = 1.0,
        vocab_size: int | None = None,
        chunk_size: int | None = None,
        weight_warn_max: float | None = 100.0,
        compile: bool = False,
        parity_tol: float = DEFAULT_PARITY_TOL,
    ) -> None:
        self.losses: dict[str, StreamLoss] = {}
        for stream, loss in ((Stream.TEACHER_PREFIX, teacher_prefix), (Stream.STUDENT_PREFIX, student_prefix)):
            if loss is None:
                continue
            if not isinstance(loss, StreamLoss):
                raise VcrdError(
                    f"VCRDObjective: {stream.value} must be a StreamLoss(divergence, lam) or None, "
                    f"got {type(loss).__name__}"
                )
            self.losses[stream.value] = loss
        if not self.losses:
            raise VcrdError("VCRDObjective needs at least one stream: teacher_prefix or student_prefix")
        try:
            self.reduction = Reduction(reduction)
        except ValueError:
            valid = ", ".join(r.value for r in Reduction)
            raise VcrdError(f"VCRDObjective: unknown reduction {reduction!r}; valid: {valid}") from None
        if not (math.isfinite(temperature) and temperature > 0):
            raise VcrdError(f"VCRDObjective: temperature must be a finite number > 0, got {temperature!r}")
        if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size < 1):
            raise VcrdError(f"VCRDObjective: vocab_size must be a positive int or None, got {vocab_size!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise VcrdError(f"VCRDObjective: chunk_size must be a positive int or None, got {chunk_size!r}")
        if weight_warn_max is not None and not weight_warn_max > 0:
            raise VcrdError(f"VCRDObjective: weight_warn_max must be > 0 or None, got {weight_warn_max!r}")
        self.temperature = float(temperature)
        self.vocab_size = vocab_size
        self.chunk_size = chunk_size
        self.weight_warn_max = weight_warn_max
        self.compile = bool(compile)
        self.parity_tol = check_parity_tol(parity_tol)

    @classmethod
    def from_config(
        cls,
        config: ObjectiveConfig,
        *,
        vocab_size: int | None = None,
        losses: Mapping[str, StreamLoss | None] | None = None,
    ) -> VCRDObjective:
        """The objective a run config's ``objective`` section declares (disabled streams are left out); ``losses``:
        the streams' :class:`StreamLoss` when the caller built them already (the run plan), else from ``config``."""
        if losses is None:
            built: dict[str, StreamLoss | None] = {}
            for name in (Stream.TEACHER_PREFIX.value, Stream.STUDENT_PREFIX.value):
                stream = getattr(config, name)
                div = create(stream.divergence.kind, stream.divergence.name, stream.divergence.params)
                built[name] = StreamLoss(div, stream.lam) if stream.enabled else None  # type: ignore[arg-type]
            losses = built
        return cls(
            losses.get(Stream.TEACHER_PREFIX.value),
            losses.get(Stream.STUDENT_PREFIX.value),
            reduction=config.reduction,
            temperature=config.temperature,
            vocab_size=vocab_size,
            chunk_size=config.chunk_size,
            weight_warn_max=config.weight_warn_max,
            compile=config.compile,
        )

    def __call__(
        self,
        teacher_prefix: StreamInputs | HiddenStreamInputs | None = None,
        student_prefix: StreamInputs | HiddenStreamInputs | None = None,
    ) -> ObjectiveOutput:
        """Sums and counts of every configured stream on one (micro-)batch; call ``.loss()`` on the result.

        Each configured stream needs its :class:`StreamInputs` (logits) or :class:`HiddenStreamInputs` (hidden
        states and lm_heads: the fused-linear engine); a stream that is not configured must get None. User
        mistakes (shapes, vocabularies, weights < 0 or NaN at decision points) raise :class:`VcrdError`.
        """
        given = {Stream.TEACHER_PREFIX.value: teacher_prefix, Stream.STUDENT_PREFIX.value: student_prefix}
        streams: dict[str, StreamOutput] = {}
        for name, inputs in given.items():
            if name not in self.losses:
                if inputs is not None:
                    raise VcrdError(
                        f"VCRDObjective: got {name} inputs but the objective has no {name} stream "
                        f"(configured: {', '.join(self.losses)})"
                    )
                continue
            if inputs is None:
                raise VcrdError(f"VCRDObjective: the {name} stream is configured but its StreamInputs are missing")
            streams[name] = self._stream(name, self.losses[name], inputs)
        return ObjectiveOutput(streams, self.reduction)

    def _stream(self, name: str, loss: StreamLoss, inputs: StreamInputs | HiddenStreamInputs) -> StreamOutput:
        fused = isinstance(inputs, HiddenStreamInputs)
        if fused:
            self._check_hidden(name, inputs)
            student = inputs.student_hidden
        elif isinstance(inputs, StreamInputs):
            self._check_shapes(name, inputs)
            student = inputs.student_logits
        else:
            raise VcrdError(
                f"VCRDObjective ({name} stream): expected StreamInputs or HiddenStreamInputs, "
                f"got {type(inputs).__name__}"
            )
        points = inputs.decision_points.to(student.device)
        num_points = points.num_points
        deferred = callable(inputs.weights) and not isinstance(inputs.weights, torch.Tensor)
        if inputs.weights is None or deferred:
            weights = torch.ones(num_points, dtype=torch.float32, device=student.device)
        else:
            weights = points.gather(inputs.weights.detach().to(device=student.device)).to(torch.float32)  # type: ignore[union-attr]
        stats = {} if deferred else self._weight_stats(name, weights)
        if num_points == 0:
            # A zero that stays connected to the student's graph, so backward() still works (and, fused, gives
            # the lm_head a zero gradient as the logits path does: DDP expects every trainable parameter's).
            zero = student.reshape(-1)[:0].to(torch.float32).sum()
            if fused:
                assert isinstance(inputs, HiddenStreamInputs)
                for param in (inputs.student_head.weight, inputs.student_head.bias):
                    if param is not None:
                        zero = zero + param.reshape(-1)[:0].to(torch.float32).sum()
            return StreamOutput(zero, 0, 0, loss.lam, stats)
        where = f"VCRDObjective ({name} stream)"
        if loss.divergence.uses_sequence_stats and fused:
            raise VcrdError(
                f"{where}: the divergence '{loss.divergence.name}' has per-sequence parameters (it reads the "
                "log-probabilities of the rollout's tokens), which the fused-linear engine does not compute; use the "
                "logits engine (training.loss_engine: logits or auto)"
            )
        if fused:
            assert isinstance(inputs, HiddenStreamInputs)
            # the reduction folded into per-point coefficients: loss_sum = sum_n c_n D_n (fused_linear's docstring)
            coefficients, count = row_coefficients(weights, points.batch, self.reduction)
            given: torch.Tensor | Callable[[RowChunk], torch.Tensor] = coefficients
            if deferred:
                given = _DeferredWeights(inputs.weights, coefficients, weights, f"VCRDObjective ({name} stream)")  # type: ignore[arg-type]
            sparse = inputs.teacher_hidden if isinstance(inputs.teacher_hidden, SparseTeacher) else None
            head = inputs.teacher_head
            out = fused_linear_divergence(
                loss.divergence,
                inputs.student_hidden,
                inputs.student_head.weight,
                None if sparse is not None else inputs.teacher_hidden.detach(),  # type: ignore[union-attr]
                None if sparse is not None or head is None else head.weight.detach(),
                rows=points.rows,
                weights=given,
                student_bias=inputs.student_head.bias,
                teacher_bias=None if sparse is not None or head is None or head.bias is None else head.bias.detach(),
                sparse_teacher=sparse,
                vocab_size=self.vocab_size,
                temperature=self.temperature,
                chunk_size=self.chunk_size,
                want=inputs.want,
                compile=self.compile and sparse is None,  # the compiled chunk reads dense teacher logits
            )
            if deferred:
                stats = self._weight_stats(name, weights)  # filled in chunk by chunk by _DeferredWeights
            return StreamOutput(out.loss, count, num_points, loss.lam, stats)

        assert isinstance(inputs, StreamInputs)
        if isinstance(inputs.teacher_logits, SparseTeacher):
            if loss.divergence.uses_sequence_stats:
                raise VcrdError(
                    f"{where}: the divergence '{loss.divergence.name}' reads the teacher's log-probability of every "
                    "rollout token, which a top-k teacher cache does not hold; train with the teacher's logits"
                )
            params: dict[str, torch.Tensor] = {}
            values = sparse_divergence(
                loss.divergence,
                inputs.teacher_logits,
                student,
                rows=points.rows,
                vocab_size=self.vocab_size or int(student.shape[-1]),
                temperature=self.temperature,
                chunk_size=self.chunk_size,
            )
        else:
            params = (
                self._row_parameters(where, loss.divergence, inputs, points)
                if loss.divergence.uses_sequence_stats
                else {}
            )
            values = chunked_divergence(
                loss.divergence,
                inputs.teacher_logits.detach(),
                student,
                rows=points.rows,  # the logits row t-1 of each decision point t (the logits are not copied)
                vocab_size=self.vocab_size,
                temperature=self.temperature,
                chunk_size=self.chunk_size,
                row_params=params,
            )
        # the same reduction as the fused engine's: loss_sum = sum_n c_n D_n (vcrd_core.losses.reduction)
        coefficients, count = row_coefficients(weights, points.batch, self.reduction)
        out = StreamOutput((coefficients * values.to(torch.float32)).sum(), count, num_points, loss.lam, stats)
        if params:
            packed = torch.stack([torch.stack([v.mean(), v.min(), v.max()]) for v in params.values()]).tolist()
            for key, (mean, low, high) in zip(params, packed, strict=True):
                out.parameter_stats.update({f"{key}_mean": mean, f"{key}_min": low, f"{key}_max": high})
        return out

    def _row_parameters(
        self, where: str, divergence: Divergence, inputs: StreamInputs, points: DecisionPoints
    ) -> dict[str, torch.Tensor]:
        """The divergence's per-point parameters from the stream's :class:`SequenceStats` (the log-probabilities of
        the rollout's tokens under both models), checked: ``[n]``, finite."""
        if inputs.input_ids is None:
            raise VcrdError(
                f"{where}: the divergence '{divergence.name}' reads the log-probabilities of the rollout's own tokens; "
                "pass StreamInputs(..., input_ids=<the stream's [B, L] token ids>)"
            )
        points.check_shape(inputs.input_ids, "input_ids", where)
        tokens = points.gather(inputs.input_ids.to(points.batch.device))
        vocab = self.vocab_size or int(inputs.student_logits.shape[-1])
        logp = {
            role: token_logprobs(
                logits, points.rows, tokens, vocab_size=vocab, temperature=self.temperature, chunk_size=self.chunk_size
            )
            for role, logits in (("teacher", inputs.teacher_logits), ("student", inputs.student_logits))
        }
        stats = SequenceStats(
            logp["teacher"], logp["student"], points.batch.to(logp["student"].device), points.shape[0]
        )
        params = dict(divergence.row_parameters(stats))
        n = points.num_points
        for key, value in params.items():
            if not isinstance(value, torch.Tensor) or value.shape != (n,) or not bool(torch.isfinite(value).all()):
                got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise VcrdError(
                    f"{where}: divergence '{divergence.name}'.row_parameters()[{key!r}] must be a finite tensor [{n}] "
                    f"(one value per decision point), got {got}"
                )
            params[key] = value.detach().float()
        return params

    def _check_hidden(self, name: str, inputs: HiddenStreamInputs) -> None:
        """Hidden states ``[B, L, H]`` of the points' batch and weights ``[B, L]``; the lm_heads' own shapes and the
        vocabularies are checked by the fused-linear engine."""
        where = f"VCRDObjective ({name} stream)"
        points = inputs.decision_points
        given = [("student_hidden", inputs.student_hidden)]
        if not isinstance(inputs.teacher_hidden, SparseTeacher):  # a sparse teacher: sparse_teacher's own checks
            given.insert(0, ("teacher_hidden", inputs.teacher_hidden))
        for label, hidden in given:
            if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
                got = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
                raise VcrdError(f"{where}: {label} must be [B, L, H], got {got}")
            points.check_shape(hidden, label, where)
        if isinstance(inputs.weights, torch.Tensor):
            if inputs.weights.dim() != 2:
                raise VcrdError(f"{where}: weights must be [B, L] or None, got shape {tuple(inputs.weights.shape)}")
            points.check_shape(inputs.weights, "weights", where)
        elif inputs.weights is not None and not callable(inputs.weights):
            raise VcrdError(
                f"{where}: weights must be a [B, L] tensor, a callable (RowChunk -> [n]) or None, "
                f"got {type(inputs.weights).__name__}"
            )

    def _check_shapes(self, name: str, inputs: StreamInputs) -> None:
        teacher, student, points = inputs.teacher_logits, inputs.student_logits, inputs.decision_points
        where = f"VCRDObjective ({name} stream)"
        sparse = isinstance(teacher, SparseTeacher)
        for label, logits in (("student_logits", student),) if sparse else (
            ("teacher_logits", teacher), ("student_logits", student)
        ):  # fmt: skip
            if logits.dim() != 3:
                raise VcrdError(f"{where}: {label} must be [B, L, V], got shape {tuple(logits.shape)}")
            points.check_shape(logits, label, where)
        if inputs.weights is not None:
            if inputs.weights.dim() != 2:
                raise VcrdError(f"{where}: weights must be [B, L] or None, got shape {tuple(inputs.weights.shape)}")
            points.check_shape(inputs.weights, "weights", where)
        if sparse:  # the sparse teacher's own checks (rows, ids, temperature) are sparse_divergence's
            return
        v_t, v_s = teacher.shape[-1], student.shape[-1]
        if self.vocab_size is None and v_t != v_s:
            raise VcrdError(
                f"{where}: teacher vocabulary {v_t} != student vocabulary {v_s}; pass vocab_size (the tokenizer's "
                f"real vocabulary, <= {min(v_t, v_s)}) so only the shared real ids are compared"
            )
        if self.vocab_size is not None and self.vocab_size > min(v_t, v_s):
            raise VcrdError(
                f"{where}: vocab_size {self.vocab_size} exceeds the logits' vocabulary (teacher {v_t}, student {v_s})"
            )

    def _weight_stats(self, name: str, weights: torch.Tensor) -> dict[str, float]:
        """Quantiles, mean and the regimes' shares (:mod:`vcrd_core.regimes`, tolerance ``parity_tol``) of the
        weights; refuses invalid ones (:func:`~vcrd_core.losses.weighting.check_weight_counts`) and warns above the
        maximum."""
        if weights.numel() == 0:
            return {}
        w = weights.detach().to(torch.float64)
        ordered = torch.sort(w).values  # NaN sorts last; torch.quantile has a size limit, sorting does not
        regimes = regime_masks(w, self.parity_tol)
        packed = torch.cat(
            [
                ordered[:1],
                torch.stack([_quantile(ordered, q) for _, q in WEIGHT_QUANTILES]),
                ordered[-1:],
                w.mean().reshape(1),
                *(regimes[r].double().mean().reshape(1) for r in REGIMES),
                invalid_weight_counts(w).double(),
                (w > (self.weight_warn_max or math.inf)).sum().double().reshape(1),
            ]
        ).tolist()  # one host sync per stream
        names = ["min", *(n for n, _ in WEIGHT_QUANTILES), "max", "mean", *(f"share_{r}" for r in REGIMES)]
        stats = dict(zip(names, packed[: len(names)], strict=True))
        invalid, above = packed[len(names) : len(names) + 3], int(packed[-1])
        check_weight_counts([int(c) for c in invalid], w.numel(), f"VCRDObjective ({name} stream): got")
        if above:
            warnings.warn(
                f"{name} stream: {above} of {w.numel()} weights exceed weight_warn_max={self.weight_warn_max:g} "
                f"(max {stats['max']:.4g}); the ratio rule reaches r_s/eps when r_t -> 0, consider the clamp "
                f"or log_clamp rules",
                VcrdWeightWarning,
                stacklevel=4,
            )
        return stats
