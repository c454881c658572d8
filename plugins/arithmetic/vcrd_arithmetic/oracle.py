"""``oracle``: the exact, rule-based judge of the embedded arithmetic task.

On the toy task local validity is decidable, so the judge can be exact instead of learned. With
the grammar of :mod:`vcrd_arithmetic.grammar` and the prompt ``x`` (the text up to the first
``=``), a token ``a`` at prefix ``c = (x, y_{<t})`` scores

.. math::

    r(c, a) = \\begin{cases}
        r_{\\text{valid}} & \\text{if } y_{<t}\\,a \\text{ is a prefix of some correct derivation of } x,
            \\text{ or } a = \\texttt{<eos>} \\text{ and } y_{<t} \\text{ is a whole correct derivation},\\\\
        r_{\\text{invalid}} & \\text{otherwise (pad, bos, other specials, characters after a mistake)}.
    \\end{cases}

Soft scores (0.9 / 0.1 by default) rather than 1 / 0 keep the weight ratio of Eq. (2),
:math:`w = r_s / (r_t + \\varepsilon)`, finite: a valid student token next to an invalid teacher
token is amplified by ``valid / invalid`` (9x), the reverse attenuated by its inverse. Once a
rollout's prefix has left every correct derivation, every later token is invalid, whatever it is:
the response can no longer become correct.

The problem ``x`` is the example's prompt (``JudgeRequest.examples``, as the rollout store keeps it) and the
response starts after ``JudgeRequest.prompt_lengths`` tokens. Any policy tokenizer works, not only the char
tokenizer: a token's text is ``tokenizer.decode([id])`` and a multi-character token is valid iff each of its
characters is. Called without examples (:meth:`OracleJudge.score_positions` directly), the prompt is the
decoded text up to the first ``=``: a token that contains it belongs to the prompt; characters it holds after
that ``=`` start the response.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from vcrd_arithmetic.grammar import PrefixState
from vcrd_core import JudgeContext, JudgeRequest, JudgeScores, ParamError, Stream, TokenJudge, VcrdError

_END = object()  # the end-of-sequence token
_NOTHING = None  # a special or undecodable token: never valid


class OracleJudge(TokenJudge):
    """Exact validity on the arithmetic toy task: `valid` while the response can still become a correct derivation.

    Needs the policy tokenizer (``JudgeContext.tokenizer``) with an ``eos_token_id``; loads no model.
    """

    name: ClassVar[str] = "oracle"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        valid: float = Field(default=0.9, ge=0.0, le=1.0, description="Score of a valid token, in [0, 1].")
        invalid: float = Field(
            default=0.1, ge=0.0, le=1.0, description="Score of an invalid token, in [0, 1]; below `valid`."
        )

    def __init__(self, params: BaseModel | None = None) -> None:
        super().__init__(params)
        if self.params.valid <= self.params.invalid:
            raise ParamError(
                "valid",
                f"must be greater than invalid ({self.params.invalid}), got {self.params.valid}; "
                "e.g. valid: 0.9, invalid: 0.1",
            )
        self.tokenizer: Any = None

    def load(self, context: JudgeContext) -> None:
        """Take the policy tokenizer: the oracle reads token ids as text."""
        super().load(context)
        tokenizer = context.tokenizer
        if tokenizer is None:
            raise VcrdError("judge 'oracle' needs the policy tokenizer, but JudgeContext.tokenizer is None")
        if getattr(tokenizer, "eos_token_id", None) is None:
            raise VcrdError(
                "judge 'oracle' needs a tokenizer with an eos_token_id (the token that ends a response); "
                f"{type(tokenizer).__name__} has none"
            )
        self.tokenizer = tokenizer
        self._eos = int(tokenizer.eos_token_id)
        self._special = {int(i) for i in tokenizer.all_special_ids}
        self._size = len(tokenizer)
        self._texts: dict[int, Any] = {}

    def _text(self, token_id: int) -> Any:
        """The token's text, :data:`_END` for EOS, ``None`` for a special or unknown id (cached)."""
        if token_id not in self._texts:
            if token_id == self._eos:
                self._texts[token_id] = _END
            elif token_id in self._special or not 0 <= token_id < self._size:
                self._texts[token_id] = _NOTHING
            else:
                self._texts[token_id] = self.tokenizer.decode([token_id]) or _NOTHING
        return self._texts[token_id]

    def _is_valid(self, state: PrefixState | None, token_id: int) -> bool:
        """Whether ``token_id`` keeps the response valid after ``state`` (``None``: already invalid)."""
        if state is None:
            return False
        text = self._text(token_id)
        if text is _END:
            return state.complete
        return text is not _NOTHING and state.feed(text) is not None

    def score(self, request: JudgeRequest) -> JudgeScores:
        """Scores of both proposals at the request's decision points. The problem comes from each sequence's
        example (``request.examples[b].prompt``, e.g. ``'2*3+4='``) and the response starts after
        ``request.prompt_lengths[b]`` tokens; a request without them is read as :meth:`score_positions` does."""
        if request.proposals is None:
            raise VcrdError("judge 'oracle' needs the other model's proposals (JudgeRequest.proposals)")
        examples, lengths = request.examples, request.prompt_lengths
        problems = None
        if examples is not None and lengths is not None and all(e is not None for e in examples):
            problems = [(e.prompt, int(n)) for e, n in zip(examples, lengths.tolist(), strict=True)]  # type: ignore[union-attr]
        actual, alt = self._scores(
            request.input_ids, request.attention_mask, request.proposals, request.points.mask, problems
        )
        if request.stream is Stream.TEACHER_PREFIX:
            return JudgeScores(r_s=alt, r_t=actual)
        return JudgeScores(r_s=actual, r_t=alt)

    def score_positions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        alt_ids: torch.Tensor,
        score_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r_actual, r_alt)``, float32 ``[B, L]``: the scores of ``y_t`` and of ``alt_t`` after
        ``y_{<t}`` at the positions ``score_mask`` selects (default: every non-padding response position).

        Without the examples (this direct call) the prompt is the decoded text up to the first ``=``.
        Prompt positions, padding and unselected positions get 0. Left and right padding are both
        read through ``attention_mask``.
        """
        return self._scores(input_ids, attention_mask, alt_ids, score_mask, None)

    def _scores(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        alt_ids: torch.Tensor,
        score_mask: torch.Tensor | None,
        problems: list[tuple[str, int]] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``problems[b]``: the problem text and the number of prompt tokens of sequence ``b`` (None: find the
        prompt by the first ``=`` of the decoded text)."""
        if self.tokenizer is None:
            raise VcrdError("judge 'oracle' has no tokenizer: call load(JudgeContext(tokenizer=...)) first")
        if input_ids.dim() != 2 or alt_ids.shape != input_ids.shape or attention_mask.shape != input_ids.shape:
            raise VcrdError(
                "judge 'oracle' expects input_ids, attention_mask and alt_ids of one shape [B, L]; got "
                f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(alt_ids.shape)}"
            )
        if score_mask is not None and score_mask.shape != input_ids.shape:
            raise VcrdError(
                f"judge 'oracle': score_mask has shape {tuple(score_mask.shape)}, expected {tuple(input_ids.shape)}"
            )
        valid, invalid = self.params.valid, self.params.invalid
        ids, alts = input_ids.tolist(), alt_ids.tolist()
        present = attention_mask.bool().tolist()
        selected = present if score_mask is None else (score_mask.bool() & attention_mask.bool()).tolist()
        r_actual = [[0.0] * len(row) for row in ids]
        r_alt = [[0.0] * len(row) for row in ids]
        for b, row in enumerate(ids):
            prompt = ""
            state: PrefixState | None = None
            in_response = False
            prompt_tokens = None
            if problems is not None:
                problem, prompt_tokens = problems[b]
                try:
                    state = PrefixState.start(problem)
                except VcrdError as exc:
                    raise VcrdError(f"judge 'oracle', sequence {b} (example prompt {problem!r}): {exc}") from None
            seen = 0  # real (non-padding) tokens so far
            for t, token_id in enumerate(row):
                if not present[b][t]:
                    continue
                seen += 1
                if in_response:
                    if selected[b][t]:
                        r_actual[b][t] = valid if self._is_valid(state, token_id) else invalid
                        r_alt[b][t] = valid if self._is_valid(state, alts[b][t]) else invalid
                    state = self._advance(state, token_id)
                    continue
                if prompt_tokens is not None:
                    in_response = seen >= prompt_tokens  # the next real token is the response's first
                    continue
                text = self._text(token_id)
                if isinstance(text, str):
                    prompt += text
                if "=" in prompt:  # this token ends the prompt; what follows its '=' starts the response
                    head, _, rest = prompt.partition("=")
                    try:
                        state = PrefixState.start(head + "=").feed(rest)
                    except VcrdError as exc:
                        raise VcrdError(f"judge 'oracle', sequence {b}: {exc}") from None
                    in_response = True
            if not in_response and any(selected[b]):
                raise VcrdError(
                    f"judge 'oracle', sequence {b}: no '=' found, so no prompt (an arithmetic problem such as "
                    f"'2*3+4=') precedes the response; decoded text: {prompt!r}"
                )
        device = input_ids.device
        return (
            torch.tensor(r_actual, dtype=torch.float32, device=device).reshape(input_ids.shape),
            torch.tensor(r_alt, dtype=torch.float32, device=device).reshape(input_ids.shape),
        )

    def _advance(self, state: PrefixState | None, token_id: int) -> PrefixState | None:
        """The state after the rollout's own token (``None`` once invalid, and after EOS)."""
        if state is None:
            return None
        text = self._text(token_id)
        if text is _END or text is _NOTHING:
            return None
        return state.feed(text)
