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

from vcrd_core import JudgeContext, Need, RowJudge


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

    @property
    def row_block(self) -> int:  # type: ignore[override]
        """Decision points per block in :meth:`RowJudge.score` (the ``chunk_size`` param)."""
        return self.params.chunk_size

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
