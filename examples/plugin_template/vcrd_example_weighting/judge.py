"""A third-party token-scoring judge: ``no_repeat``, local validity as "does not repeat a recent token".

At a decision point ``t`` it scores a token ``a`` after the prefix ``y_{<t}``: ``r(y_{<t}, a) = repeat_score``
when ``a`` equals one of the previous ``window`` tokens of the prefix (prompt tokens included, padding never),
else ``1``. It is a toy (a real judge runs a model) but has everything a judge needs: params, a
:class:`vcrd_core.TokenJudge` that scores the rollout's own token and the other model's proposal at the same
prefix, ``[B, L]`` float32 scores in ``[0, 1]``, zero outside the mask. Copy it and replace the formula.

It reads only the token ids and the masks. (Judges also receive ``request.examples``, each sequence's dataset
example, with ``example.reference`` possibly None: a judge that needs them overrides ``score(request)``.)
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

import vcrd_core


class NoRepeat(vcrd_core.TokenJudge):
    """Scores a token 1, or repeat_score if it repeats one of the previous `window` tokens."""

    name: ClassVar[str] = "no_repeat"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        window: int = Field(1, ge=1, description="How many previous tokens a token must not repeat.")
        repeat_score: float = Field(0.1, ge=0, le=1, description="The score of a token that repeats one.")

    def check(self, context: vcrd_core.JudgeContext) -> None:
        # Cheap run-time checks before any model weight is read (paths, vocabulary): nothing to check here.
        return None

    def load(self, context: vcrd_core.JudgeContext) -> None:
        # Receives the tokenizer, device and dtype; a model-based judge loads its weights here.
        self.context = context

    def score_positions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        alt_ids: torch.Tensor,
        score_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``alt_ids`` (the other model's proposal at each position) and
        ``score_mask`` (the decision points; default every non-padding position): ``[B, L]``. Returns
        ``(r_actual, r_alt)``, ``[B, L]`` float32 in ``[0, 1]``: the scores of ``input_ids[:, t]`` and of
        ``alt_ids[:, t]`` after the prefix ``input_ids[:, :t]``, zero outside ``score_mask``."""
        mask = attention_mask.bool() if score_mask is None else score_mask.bool()
        present = attention_mask.bool()
        repeats_actual = torch.zeros_like(mask)
        repeats_alt = torch.zeros_like(mask)
        for k in range(1, min(self.params.window, input_ids.shape[1] - 1) + 1):
            # previous[:, t] = input_ids[:, t - k] where that position is a real token (not padding)
            previous = torch.full_like(input_ids, -1)
            previous[:, k:] = torch.where(present[:, :-k], input_ids[:, :-k], -1)
            repeats_actual |= previous == input_ids
            repeats_alt |= previous == alt_ids.to(input_ids.device)
        low = torch.tensor(self.params.repeat_score, dtype=torch.float32, device=input_ids.device)
        one = torch.ones((), dtype=torch.float32, device=input_ids.device)
        zero = torch.zeros((), dtype=torch.float32, device=input_ids.device)
        r_actual = torch.where(mask, torch.where(repeats_actual, low, one), zero)
        r_alt = torch.where(mask, torch.where(repeats_alt, low, one), zero)
        return r_actual, r_alt
