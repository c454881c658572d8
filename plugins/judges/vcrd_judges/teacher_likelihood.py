"""``teacher_likelihood``: the PRM-free judge of VCRD-Prob (paper §4.6, setup in §10.4).

Without a process reward model, local validity is approximated by the teacher's own next-token
distribution ``p(· | c)`` at the shared prefix ``c``:

.. math::

    r_s = p(a^S \\mid c), \\qquad a^S = \\arg\\max_a q(a \\mid c) \\quad\\text{(the student's greedy token)},

    r_t = \\sum_{i \\in \\operatorname{top-}k(p(\\cdot \\mid c))} p(i \\mid c)^2
        \\;\\approx\\; \\mathbb{E}_{a \\sim p(\\cdot \\mid c)}\\big[p(a \\mid c)\\big],

the "collision" score of §10.4, i.e. the expected teacher likelihood of a teacher-sampled token —
the baseline :math:`\\mathbb{E}_{a' \\sim \\pi}[r(c, a')]` of Eq. (8) with ``r = p``. With the
``log_clamp`` weighting rule (defaults γ = 0.5, [0.5, 2], inner ``ratio`` with ε = 1e-8) this gives
the paper's VCRD-Prob weight

.. math::

    w_t = \\exp\\Big(\\operatorname{clip}\\big(\\gamma \\log \\tfrac{r_s}{r_t + \\varepsilon},\\;
          \\log 0.5,\\; \\log 2\\big)\\Big).

The judge reads only the teacher logits the training step has already computed and the student's
greedy tokens: no extra model, no teacher proposal. One weight per stream, at that stream's prefix.
Both streams use the student's *greedy* token (§10.4), also on the student prefix, where it may differ
from a sampled rollout token.

Temperature: §4.6 speaks of a "temperature-softened teacher baseline", but the setup in §10.4 states
none, so the teacher is used at temperature 1 (DESIGN.md §1.6); ``temperature`` exposes it for ablations.
``top_k`` larger than the tokenizer's real vocabulary is clipped to it (``k = min(128, V)``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from vcrd_core import JudgeContext, JudgeRequest, JudgeScores, Need, RowJudge, VcrdError


class TeacherLikelihoodJudge(RowJudge):
    """PRM-free validity (VCRD-Prob): r_s = teacher p(student greedy token), r_t = sum of top-k teacher p^2.

    ``r_t`` is not a score of any teacher token, so the core's "same token ⇒ parity" rule does not
    apply to this judge (``parity_on_same_token = False``): the paper's VCRD-Prob weight is used at
    every decision point.
    """

    name: ClassVar[str] = "teacher_likelihood"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.TEACHER_LOGITS, Need.STUDENT_GREEDY})
    #: ``r_t`` is a baseline, not the score of the teacher's token: equal tokens are not parity here.
    parity_on_same_token: ClassVar[bool] = False

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        top_k: int = Field(
            default=128,
            ge=1,
            description="Teacher probabilities in the baseline sum_{top-k} p^2 (paper: 128); "
            "clipped to the tokenizer's real vocabulary size.",
        )
        temperature: float = Field(
            default=1.0,
            gt=0.0,
            description="Teacher softmax temperature for both scores (paper §10.4: 1, the unmodified teacher).",
        )
        chunk_size: int = Field(
            default=64,
            ge=1,
            description="Decision points per softmax block: bounds memory to [chunk_size, V] float32.",
        )

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self.context: JudgeContext | None = None

    @property
    def vocab_size(self) -> int | None:
        """The tokenizer's real vocabulary size from :meth:`load` (``None`` before it: use every column)."""
        return None if self.context is None else self.context.vocab_size

    def score_from_logits(
        self,
        teacher_logits: torch.Tensor,
        student_proposals: torch.Tensor,
        *,
        vocab_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r_s, r_t)`` float32 of shape ``[...]`` from teacher logits ``[..., V]`` (already aligned:
        row ``i`` is the distribution at the prefix where ``student_proposals[i]`` is proposed).

        Only the first ``vocab_size`` columns (default: the loaded context's, else all) take part:
        a padded lm_head's extra columns are dropped *before* the softmax, so they get no mass.
        Memory stays at one ``[chunk_size, V]`` float32 block.
        """
        if teacher_logits.dim() < 1 or teacher_logits.shape[:-1] != student_proposals.shape:
            raise VcrdError(
                f"judge '{self.name}': teacher logits of shape {tuple(teacher_logits.shape)} do not match "
                f"student proposals of shape {tuple(student_proposals.shape)} (expected logits [..., V] "
                "over proposals [...])"
            )
        v_real = self._real_vocab(teacher_logits.shape[-1], vocab_size)
        lead_shape = student_proposals.shape
        logits = teacher_logits.reshape(-1, teacher_logits.shape[-1])
        proposals = student_proposals.reshape(-1).long()
        self._check_ids(proposals, v_real)
        r_s = torch.zeros(proposals.shape[0], dtype=torch.float32, device=teacher_logits.device)
        r_t = torch.zeros_like(r_s)
        for start in range(0, proposals.shape[0], self.params.chunk_size):
            stop = start + self.params.chunk_size
            r_s[start:stop], r_t[start:stop] = self._score_rows(logits[start:stop], proposals[start:stop], v_real)
        return r_s.reshape(lead_shape), r_t.reshape(lead_shape)

    def score(self, request: JudgeRequest) -> JudgeScores:
        """Scores at the decision points of ``request`` (either stream), 0 elsewhere.

        Each decision point reads its teacher distribution through ``request.points.logits_at`` and the
        student's greedy token stored at the point in ``request.student_greedy``.
        """
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
        v_real = self._real_vocab(logits.shape[-1], None)
        proposals = points.gather(greedy).long()
        self._check_ids(proposals, v_real)
        r_s = torch.zeros(points.num_points, dtype=torch.float32, device=logits.device)
        r_t = torch.zeros_like(r_s)
        for chunk in points.chunks(self.params.chunk_size):
            # Only this chunk's rows are copied: never the whole [N, V] selection.
            r_s[chunk], r_t[chunk] = self._score_rows(
                points.logits_at(logits, chunk.start, chunk.stop), proposals[chunk], v_real
            )
        return JudgeScores(r_s=points.scatter(r_s), r_t=points.scatter(r_t))

    def score_rows(
        self, teacher_logits: torch.Tensor, student_greedy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:class:`~vcrd_core.RowJudge`'s row scores (the fused-linear engine calls this inside its loss pass):
        ``teacher_logits`` ``[n, V]`` hold only the real ids."""
        return self._score_rows(teacher_logits, student_greedy.long(), teacher_logits.shape[-1])

    def _score_rows(
        self, logits: torch.Tensor, proposals: torch.Tensor, v_real: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block: ``log p = log_softmax(z_{:V} / T)``; ``r_s = p[a^S]``; ``r_t = Σ_top-k p²``."""
        logp = torch.log_softmax(logits[:, :v_real].float() / self.params.temperature, dim=-1)
        r_s = logp.gather(1, proposals.unsqueeze(1)).squeeze(1).exp()
        k = min(self.params.top_k, v_real)  # k = min(128, real vocabulary); larger k is clipped
        top = logp.topk(k, dim=-1).values
        r_t = (2.0 * top).exp().sum(-1)  # p² as exp(2 log p): exact 0 for -inf logits, no overflow
        return r_s, r_t.clamp(max=1.0)  # Σ p² ≤ 1 exactly; float32 rounding may exceed it by an ulp

    def _real_vocab(self, width: int, vocab_size: int | None) -> int:
        v_real = vocab_size if vocab_size is not None else self.vocab_size
        if v_real is None:
            return width
        if not 1 <= v_real <= width:
            raise VcrdError(
                f"judge '{self.name}': the tokenizer has {v_real} ids but the teacher logits have {width} "
                "columns; the logits must cover every real id (a padded lm_head may have more, never fewer)"
            )
        return v_real

    def _check_ids(self, proposals: torch.Tensor, v_real: int) -> None:
        if proposals.numel() == 0:
            return
        low, high = int(proposals.min()), int(proposals.max())
        if low < 0 or high >= v_real:
            bad = low if low < 0 else high
            raise VcrdError(
                f"judge '{self.name}': student greedy token id {bad} at a decision point is outside the "
                f"tokenizer's real vocabulary [0, {v_real}); greedy proposals must take the argmax over real ids only"
            )
