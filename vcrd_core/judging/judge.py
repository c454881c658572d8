"""The judge interface: local-validity scores ``r(c, a) in [0, 1]`` labelled by role.

At every decision point ``t`` of a stream (:class:`vcrd_core.DecisionPoints`: the token at position ``t``
of a rollout, predicted from the logits at ``t-1``) a judge scores two proposals at the same prefix:

* teacher-prefix stream: the rollout token is the teacher's ``a^T_t`` and the proposal is the
  student's ``a^S_t``;
* student-prefix stream: the rollout token is the student's ``a^S_t`` and the proposal is the
  teacher's ``a^T_t``.

Judges return :class:`JudgeScores` with ``r_s`` (the student's token) and ``r_t`` (the teacher's),
so weighting rules never need to know which stream they are in. Creating a judge from a config
loads nothing; :meth:`Judge.load` receives the run-time context.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from vcrd_core.data.examples import Example
from vcrd_core.decision_points import DecisionPoints, Stream
from vcrd_core.errors import VcrdError
from vcrd_core.plugins.component import Component
from vcrd_core.plugins.kinds import JUDGES


class Need(str, enum.Enum):
    """What a judge reads from a :class:`JudgeRequest` besides the masks."""

    TOKEN_IDS = "token_ids"  # the rollout tokens and the other model's proposals
    TEACHER_LOGITS = "teacher_logits"  # the teacher logits already computed by the step
    STUDENT_GREEDY = "student_greedy"  # the student's greedy token at every prefix


@dataclass
class JudgeContext:
    """Run-time context handed to :meth:`Judge.check` and :meth:`Judge.load` (never to ``__init__``).

    ``models`` are the run's model specs by role (``teacher``, ``student``: objects with ``path`` and ``dtype``),
    for judges that run one of them (``mc_value``'s completer); ``data`` is the run's data section (its
    ``answer_field`` / ``tests_field`` say whether examples carry a reference). Both are empty/None outside a run.
    """

    tokenizer: Any = None
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32
    vocab_size: int | None = None  # the policy tokenizer's real vocabulary size
    accelerator: Any = None
    models: Mapping[str, Any] = field(default_factory=dict)
    tokenizer_path: str | None = None
    data: Any = None

    @classmethod
    def for_run(cls, config: Any, **values: Any) -> JudgeContext:
        """A context carrying ``config``'s model specs, tokenizer directory and data section, plus ``values``."""
        models = config.models
        return cls(
            models={"teacher": models.teacher, "student": models.student},
            tokenizer_path=models.tokenizer or models.student.path,
            data=config.data,
            **values,
        )


@dataclass
class JudgeRequest:
    """One padded batch of one stream. Shapes: ``[B, L]`` unless noted.

    ``points`` are the decision points to score; ``proposals[b, t]`` and ``student_greedy[b, t]`` hold
    the other model's proposal and the student's greedy token *at* decision point ``t`` (proposed from
    the prefix ``y_{<t}``). ``teacher_logits`` is the teacher's unshifted output ``[B, L, V]``: read it
    through ``points.logits_at`` (row ``t-1``). ``prompt_lengths`` ``[B]`` counts the prompt tokens after
    any left padding. ``examples[b]`` is the :class:`~vcrd_core.data.examples.Example` sequence ``b`` was
    generated for (its prompt text, reference answer, tests and other dataset fields; None where unknown, e.g.
    a store written before examples were kept); the training step and ``vcrd score`` always pass it.
    """

    stream: Stream
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    points: DecisionPoints
    proposals: torch.Tensor | None = None
    student_greedy: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    prompt_lengths: torch.Tensor | None = None
    examples: Sequence[Example | None] | None = None


@dataclass
class JudgeScores:
    """Scores at decision points (``[B, L]``, float32, 0 elsewhere)."""

    r_s: torch.Tensor
    r_t: torch.Tensor


class Judge(Component):
    """Base of judges. Subclasses set ``needs`` and implement :meth:`score` (or, for judges that
    score token ids, :class:`TokenJudge`'s :meth:`TokenJudge.score_positions`)."""

    kind: ClassVar[str] = JUDGES

    needs: ClassVar[frozenset[Need]] = frozenset({Need.TOKEN_IDS})
    #: Whether ``r_t`` scores the teacher's proposed token, so that where both proposals are the same
    #: token the point is parity (``w = 1``) by definition. False for judges whose ``r_t`` is a baseline
    #: that involves no teacher proposal (``teacher_likelihood``): callers then pass ``same_token=None``.
    parity_on_same_token: ClassVar[bool] = True

    def check(self, context: JudgeContext) -> None:
        """Cheap run-time checks before any weight is read (paths, tokenizer, vocabulary rule), so that a
        run refuses a bad judge before loading the policy models. Default: nothing to check."""

    def load(self, context: JudgeContext) -> None:
        """Receive run-time context (load weights, move to a device). Default: nothing to load."""
        self.context = context

    def score(self, request: JudgeRequest) -> JudgeScores:
        raise NotImplementedError


class TokenJudge(Judge):
    """A judge that scores a rollout's own tokens and alternative tokens at the same prefixes."""

    def score_positions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        alt_ids: torch.Tensor,
        score_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r_actual, r_alt)`` with ``r_actual[:, t] = r(y_<t, y_t)``, ``r_alt[:, t] = r(y_<t, alt_t)``
        at every position selected by ``score_mask`` (default: every non-padding position)."""
        raise NotImplementedError

    def score(self, request: JudgeRequest) -> JudgeScores:
        if request.proposals is None:
            raise VcrdError(f"judge '{self.name}' needs the other model's proposals (JudgeRequest.proposals)")
        actual, alt = self.score_positions(
            request.input_ids, request.attention_mask, request.proposals, request.points.mask
        )
        if request.stream is Stream.TEACHER_PREFIX:
            return JudgeScores(r_s=alt, r_t=actual)
        return JudgeScores(r_s=actual, r_t=alt)


class RowJudge(Judge):
    """A judge whose two scores at a decision point read only that point's logits row: the teacher's logits at row
    ``t-1`` and the student's greedy token there (``teacher_likelihood`` is one). It implements
    :meth:`score_rows`; :meth:`score` is derived from it. Because nothing else is read, the trainer's fused-linear
    engine scores such a judge inside its loss pass, chunk by chunk, from logits it computes anyway (no
    ``[B, L, V]`` logits are built for it; DESIGN.md §2.9).
    """

    needs: ClassVar[frozenset[Need]] = frozenset({Need.TEACHER_LOGITS, Need.STUDENT_GREEDY})
    #: Decision points per block in :meth:`score` (bounds its memory to one ``[block, V]`` float32 block).
    row_block: ClassVar[int] = 64

    def score_rows(
        self, teacher_logits: torch.Tensor, student_greedy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r_s, r_t)``, float32 ``[n]`` in ``[0, 1]``, from float32 teacher logits ``[n, V]`` (only the tokenizer's
        real ids, before any temperature) and the student's greedy tokens ``[n]`` at the same rows."""
        raise NotImplementedError

    def real_vocab(self, width: int, vocab_size: int | None = None) -> int:
        """The tokenizer's real vocabulary: ``vocab_size`` if given, else the loaded context's, else ``width`` (the
        logits' columns); refused when the logits do not cover it."""
        context = getattr(self, "context", None)
        v_real = vocab_size if vocab_size is not None else getattr(context, "vocab_size", None)
        if v_real is None:
            return width
        if not 1 <= v_real <= width:
            raise VcrdError(
                f"judge '{self.name}': the tokenizer has {v_real} ids but the teacher logits have {width} columns; "
                "the logits must cover every real id (a padded lm_head may have more, never fewer)"
            )
        return v_real

    def check_greedy(self, greedy: torch.Tensor, v_real: int) -> None:
        """Refuse student greedy tokens outside the real vocabulary ``[0, v_real)`` (one line)."""
        if greedy.numel() == 0:
            return
        low, high = int(greedy.min()), int(greedy.max())
        if low < 0 or high >= v_real:
            bad = low if low < 0 else high
            raise VcrdError(
                f"judge '{self.name}': student greedy token id {bad} at a decision point is outside the "
                f"tokenizer's real vocabulary [0, {v_real}); greedy proposals must take the argmax over real ids only"
            )

    def score(self, request: JudgeRequest) -> JudgeScores:
        """:meth:`score_rows` over the decision points of ``request`` (either stream), one block at a time; 0
        elsewhere."""
        logits, greedy = request.teacher_logits, request.student_greedy
        where = f"judge '{self.name}' ({request.stream.value} stream)"
        if logits is None:
            raise VcrdError(f"{where} needs the teacher logits (JudgeRequest.teacher_logits), got none")
        if greedy is None:
            raise VcrdError(f"{where} needs the student's greedy tokens (JudgeRequest.student_greedy), got none")
        points = request.points
        if logits.dim() != 3 or greedy.dim() != 2:
            raise VcrdError(
                f"{where}: expected teacher_logits [B, L, V] and student_greedy [B, L], "
                f"got {tuple(logits.shape)} and {tuple(greedy.shape)}"
            )
        points.check_shape(logits, "teacher_logits", where)
        points.check_shape(greedy, "student_greedy", where)
        v_real = self.real_vocab(logits.shape[-1])
        proposals = points.gather(greedy).long()
        self.check_greedy(proposals, v_real)
        r_s = torch.zeros(points.num_points, dtype=torch.float32, device=logits.device)
        r_t = torch.zeros_like(r_s)
        for chunk in points.chunks(self.row_block):
            # Only this chunk's rows are copied: never the whole [N, V] selection.
            rows = points.logits_at(logits, chunk.start, chunk.stop)[:, :v_real].float()
            r_s[chunk], r_t[chunk] = self.score_rows(rows, proposals[chunk])
        return JudgeScores(r_s=points.scatter(r_s), r_t=points.scatter(r_t))


def checked_scores(judge: Judge, request: JudgeRequest) -> JudgeScores:
    """Call ``judge.score`` and refuse scores that are NaN or outside [0, 1] at decision points:
    they must never be turned into weights."""
    request.points.check_follows_tokens(request.attention_mask, f"judge '{judge.name}'")
    scores = judge.score(request)
    mask = request.points.mask
    for role, values in (("r_s", scores.r_s), ("r_t", scores.r_t)):
        if values.shape != mask.shape:
            raise VcrdError(
                f"judge '{judge.name}' returned {role} of shape {tuple(values.shape)}, expected {tuple(mask.shape)}"
            )
        picked = values[mask].float()
        bad_nan = int(torch.isnan(picked).sum())
        if bad_nan:
            raise VcrdError(
                f"judge '{judge.name}' returned NaN {role} scores at {bad_nan} of {picked.numel()} decision points "
                f"({request.stream.value} stream); refusing to turn them into weights"
            )
        bad_range = int(((picked < 0) | (picked > 1)).sum())
        if bad_range:
            raise VcrdError(
                f"judge '{judge.name}' returned {role} scores outside [0, 1] at {bad_range} decision points "
                f"({request.stream.value} stream; min {picked.min().item():.4g}, max {picked.max().item():.4g})"
            )
    return scores
