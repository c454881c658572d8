"""Process-reward-model judges: ``prm_value_head`` (Skywork-o1-Open-PRM) and ``prm_classifier`` (Qwen2.5-Math-PRM).

At a decision point ``t`` (:class:`vcrd_core.DecisionPoints`: the response token at position ``t``) the judge
scores the rollout token ``y_t`` and the other model's proposal ``alt_t`` at the same prefix ``c = (x, y_{<t})``:

.. math::

    r(c, a) = \\sigma\\big(v^\\top h(c, a) + b\\big) \\quad\\text{(value head)}, \\qquad
    r(c, a) = \\operatorname{softmax}\\big(W_2\\,\\mathrm{ReLU}(W_1 h(c, a) + b_1) + b_2\\big)_1
    \\quad\\text{(classifier)},

where ``h(c, a)`` is the body's last hidden state at ``a`` — or at the last token of ``branch_suffix``
appended after ``a`` (after the actual *and* the alternative token, so both are scored alike). These are the
``r_s``/``r_t`` of the weights ``w_t = r_s / (r_t + ε)`` (paper Eq. 3, §2.1).

The judge renders the prompt in its own format (decode the policy's prompt ids to text, apply the judge's
template, tokenize with the judge tokenizer) and appends the response ids as they are, which is why the policy
vocabulary must be a subset of the judge's with equal ids. All decision points of a batch are scored in one
tree-attention pass (:mod:`vcrd_core.judging.tree`, DESIGN.md §2.4).
"""

from __future__ import annotations

import string
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from vcrd_core import JudgeContext, JudgeRequest, JudgeScores, Stream, TokenJudge, VcrdError
from vcrd_core.config.models import TORCH_DTYPES, Dtype
from vcrd_core.judging.tree import tree_hidden_states
from vcrd_judges import prm_loading

#: Qwen2.5-Math's system prompt, as in the Qwen2.5-Math-PRM-7B model card.
QWEN_MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _check_template(template: str | None, allowed: set[str]) -> str | None:
    if template is None:
        return None
    try:
        fields = _template_fields(template)
    except ValueError as exc:
        raise ValueError(f"not a valid format string ({exc}); write literal braces as '{{{{' and '}}}}'") from None
    unknown = sorted(fields - allowed)
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{unknown[0]}}}; valid: {', '.join('{' + f + '}' for f in sorted(allowed))}"
        )
    if "problem" not in fields:
        raise ValueError("must contain {problem} (the policy prompt text)")
    return template


class _PrmParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Local HF-format PRM directory (config.json, safetensors, tokenizer).")
    branch_suffix: str | None = Field(
        default=None,
        description="Text appended after the scored token (and after the alternative) where the score is read, "
        "e.g. '\\n' or '<extra_0>'; null reads at the token itself.",
    )
    dtype: Dtype = Field(
        default="auto", description="Body weights' dtype; 'auto' takes the run's dtype. The head runs in float32."
    )
    attn_implementation: Literal["sdpa", "eager"] = Field(
        default="sdpa", description="Attention kernel; both are exact with vcrd's float tree masks."
    )
    batch_size: int = Field(default=8, ge=1, description="Sequences per forward pass.")
    positions_per_pass: int | None = Field(
        default=None,
        ge=1,
        description="Bound memory on long responses: run the sequence once (KV cache), then score branches in "
        "blocks of this many positions per sequence; null scores every position in one pass.",
    )

    @field_validator("branch_suffix")
    @classmethod
    def _non_empty_suffix(cls, value: str | None) -> str | None:
        if value == "":
            raise ValueError("must not be empty; use null for no suffix")
        return value


class _PrmJudge(TokenJudge):
    """Shared machinery of the PRM judges: loading, prompt rendering, position mapping, tree scoring."""

    head_keys: ClassVar[tuple[str, ...]]
    layout: ClassVar[str]

    def __init__(self, params: BaseModel | None = None) -> None:
        super().__init__(params)
        self.body: torch.nn.Module | None = None
        self.tokenizer: Any = None
        self._prompt_ids: dict[str, list[int]] = {}

    # ----- loading -------------------------------------------------------------------------------------------
    def check(self, context: JudgeContext) -> None:
        """The checkpoint, the tokenizers, the vocabulary rule and the suffix, without reading any weight."""
        self._checked(context)

    def _checked(self, context: JudgeContext) -> tuple[prm_loading.PrmCheckpoint, Any, list[int]]:
        p = self.params
        checkpoint = prm_loading.inspect_checkpoint(p.path, self.head_keys, who=self._who, kind=self.layout)
        if context.tokenizer is None:
            raise VcrdError(f"{self._who}: needs the policy tokenizer (JudgeContext.tokenizer) to render prompts")
        tokenizer = prm_loading.load_tokenizer(checkpoint, who=self._who)
        prm_loading.check_vocabulary(context.tokenizer, tokenizer, who=self._who, path=checkpoint.path)
        suffix_ids = [] if p.branch_suffix is None else tokenizer.encode(p.branch_suffix, add_special_tokens=False)
        if p.branch_suffix is not None and not suffix_ids:
            raise VcrdError(
                f"{self._who}: branch_suffix {p.branch_suffix!r} encodes to no token with the judge tokenizer at "
                f"{checkpoint.path}; use text the judge tokenizer knows (e.g. '\\n' or '<extra_0>') or null"
            )
        return checkpoint, tokenizer, suffix_ids

    def load(self, context: JudgeContext) -> None:
        """Run :meth:`check` (cheap, before any weight is read), then load the body and the head.
        The judge is never loaded on a partly checked checkpoint."""
        p = self.params
        checkpoint, tokenizer, suffix_ids = self._checked(context)
        head = {
            k: v.to(device=context.device, dtype=torch.float32)
            for k, v in prm_loading.read_tensors(checkpoint, self.head_keys).items()
        }
        if isinstance(checkpoint.config.get("hidden_size"), int):
            self._check_head(head, checkpoint.config["hidden_size"])
        dtype = context.dtype if p.dtype == "auto" else TORCH_DTYPES[p.dtype]
        body = prm_loading.load_body(
            checkpoint, dtype=dtype, device=context.device, attn_implementation=p.attn_implementation, who=self._who
        )
        self.context = context
        self.head = head
        self.tokenizer = tokenizer
        self.suffix_ids: list[int] = suffix_ids
        self._prompt_ids.clear()
        self.max_positions: int | None = getattr(body.config, "max_position_embeddings", None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.body = body

    @property
    def _who(self) -> str:
        return f"judge '{self.name}'"

    def _check_head(self, head: dict[str, torch.Tensor], hidden_size: int) -> None:
        raise NotImplementedError

    def head_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """``r`` in [0, 1] from hidden states ``[N, H]`` (float32)."""
        raise NotImplementedError

    def _require_loaded(self) -> torch.nn.Module:
        if self.body is None:
            raise VcrdError(f"{self._who}: call load(context) before scoring (no weights are loaded at creation)")
        return self.body

    # ----- the primitive on judge-format ids -----------------------------------------------------------------
    @torch.inference_mode()
    def score_positions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        alt_ids: torch.Tensor,
        score_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r_actual, r_alt)`` ``[B, L]`` float32 on judge-format ids (left or right padded), 0 where not scored.

        ``r_actual[b, t] = r(y_{<t}, y_t)`` and ``r_alt[b, t] = r(y_{<t}, alt_t)`` at every position selected by
        ``score_mask`` (default: every real token), ``batch_size`` rows per tree pass.
        """
        body = self._require_loaded()
        device = self.head[self.head_keys[0]].device
        score_mask = attention_mask.bool() if score_mask is None else score_mask.bool()
        n_embed = body.get_input_embeddings().num_embeddings
        for what, values in (("input_ids", input_ids[attention_mask.bool()]), ("alt_ids", alt_ids[score_mask])):
            if values.numel() and (int(values.min()) < 0 or int(values.max()) >= n_embed):
                bad = int(values[(values < 0) | (values >= n_embed)][0])
                raise VcrdError(f"{self._who}: {what} holds token id {bad}, outside the judge's {n_embed} embeddings")
        r_actual = torch.zeros(input_ids.shape, dtype=torch.float32)
        r_alt = torch.zeros(input_ids.shape, dtype=torch.float32)
        step = self.params.batch_size
        for start in range(0, input_ids.shape[0], step):
            rows = slice(start, start + step)
            tree = tree_hidden_states(
                body,
                input_ids[rows].to(device),
                attention_mask[rows].to(device),
                alt_ids[rows].to(device),
                score_mask[rows].to(device),
                self.suffix_ids or None,
                max_positions=self.max_positions,
                positions_per_pass=self.params.positions_per_pass,
                pad_id=self.pad_id,
                who=self._who,
            )
            b = tree.rows.cpu() + start
            t = tree.positions.cpu()
            r_actual[b, t] = self.head_scores(tree.actual).cpu()
            r_alt[b, t] = self.head_scores(tree.alt).cpu()
        return r_actual.to(input_ids.device), r_alt.to(input_ids.device)

    # ----- prompts --------------------------------------------------------------------------------------------
    def render_prompt(self, problem: str) -> str:
        """The judge's own prompt text for a policy prompt text (the response follows it directly)."""
        raise NotImplementedError

    def _bos(self) -> str:
        return self.tokenizer.bos_token or ""

    def judge_prompt_ids(self, problem: str) -> list[int]:
        """The rendered prompt in judge ids (memoised: rollouts share prompts and are scored every step)."""
        cached = self._prompt_ids.get(problem)
        if cached is None:
            cached = self.tokenizer.encode(self.render_prompt(problem), add_special_tokens=False)
            if len(self._prompt_ids) >= 4096:
                self._prompt_ids.clear()
            self._prompt_ids[problem] = cached
        return cached

    # ----- scoring a policy batch ----------------------------------------------------------------------------
    def score(self, request: JudgeRequest) -> JudgeScores:
        """Scores at the policy's decision points: render each prompt for the judge, map the response
        positions, score all of them in tree passes, map back (roles as in :class:`TokenJudge`)."""
        self._require_loaded()
        if request.proposals is None:
            raise VcrdError(f"{self._who}: needs the other model's proposals (JudgeRequest.proposals)")
        if request.prompt_lengths is None:
            raise VcrdError(f"{self._who}: needs JudgeRequest.prompt_lengths to separate prompt and response")
        policy_tok = self.context.tokenizer
        ids = request.input_ids.cpu()
        mask = request.attention_mask.cpu().bool()
        decision = request.points.mask.cpu()
        proposals = request.proposals.cpu()
        outside = decision & ~mask
        if bool(outside.any()):
            b, t = (int(v) for v in outside.nonzero()[0])
            raise VcrdError(f"{self._who}: decision point on padding (row {b}, position {t})")

        rows: list[tuple[list[int], list[int], list[int], torch.Tensor]] = []
        for b in range(ids.shape[0]):  # building per row is cheap; the model runs once per batch of rows
            real = mask[b].nonzero().squeeze(-1)
            n_prompt = int(request.prompt_lengths[b])
            prompt_pos, response_pos = real[:n_prompt], real[n_prompt:]
            if bool(decision[b, prompt_pos].any()):
                t = int(prompt_pos[decision[b, prompt_pos]][0])
                raise VcrdError(
                    f"{self._who}: decision point at prompt position {t} of row {b} "
                    f"(prompt_lengths[{b}] = {n_prompt}); decision points are response tokens"
                )
            example = request.examples[b] if request.examples is not None else None
            # the dataset's prompt text (before any chat template); decoded ids only where no example is known
            if example is not None:
                problem = example.prompt
            else:
                problem = policy_tok.decode(ids[b, prompt_pos].tolist(), skip_special_tokens=True)
            judge_prompt = self.judge_prompt_ids(problem)
            rows.append(
                (judge_prompt, ids[b, response_pos].tolist(), proposals[b, response_pos].tolist(), response_pos)
            )

        length = max(len(p) + len(r) for p, r, _, _ in rows)
        bsz = len(rows)
        j_ids = torch.full((bsz, length), self.pad_id, dtype=torch.long)
        j_alt = torch.full((bsz, length), self.pad_id, dtype=torch.long)
        j_mask = torch.zeros(bsz, length, dtype=torch.long)
        j_score = torch.zeros(bsz, length, dtype=torch.bool)
        for b, (prompt, response, alt, response_pos) in enumerate(rows):
            n_p, n_r = len(prompt), len(response)
            j_ids[b, : n_p + n_r] = torch.tensor(prompt + response, dtype=torch.long)
            j_alt[b, n_p : n_p + n_r] = torch.tensor(alt, dtype=torch.long)
            j_mask[b, : n_p + n_r] = 1
            j_score[b, n_p : n_p + n_r] = decision[b, response_pos]
        actual_j, alt_j = self.score_positions(j_ids, j_mask, j_alt, j_score)

        actual = torch.zeros(ids.shape, dtype=torch.float32)
        alternative = torch.zeros(ids.shape, dtype=torch.float32)
        for b, (prompt, _, _, response_pos) in enumerate(rows):
            span = slice(len(prompt), len(prompt) + len(response_pos))
            actual[b, response_pos] = actual_j[b, span]
            alternative[b, response_pos] = alt_j[b, span]
        device = request.input_ids.device
        actual, alternative = actual.to(device), alternative.to(device)
        if request.stream is Stream.TEACHER_PREFIX:
            return JudgeScores(r_s=alternative, r_t=actual)
        return JudgeScores(r_s=actual, r_t=alternative)


class PrmValueHead(_PrmJudge):
    """Value-head PRM judge (Skywork-o1-Open-PRM layout): r = sigmoid(v_head.summary(h)).

    The checkpoint is a causal-LM body plus ``v_head.summary.weight`` ``[1, H]`` / ``v_head.summary.bias`` ``[1]``;
    only the body runs (never the LM head). Skywork's own inference renders ``bos + problem + "\\n"`` and reads
    the reward at each step's final ``"\\n"``; here the reward is read at the scored token, or after
    ``branch_suffix`` (``"\\n"`` reproduces Skywork's step-end reading).
    """

    name: ClassVar[str] = "prm_value_head"
    head_keys: ClassVar[tuple[str, ...]] = ("v_head.summary.weight", "v_head.summary.bias")
    layout: ClassVar[str] = "a value-head PRM"

    class Params(_PrmParams):
        model_config = ConfigDict(extra="forbid")

        prompt_template: str = Field(
            default="{bos}{problem}\n",
            description="Judge prompt; {bos} = the judge tokenizer's BOS text (empty if none), {problem} = the "
            "policy prompt text (the example's, else the decoded prompt ids). Default: Skywork's bos + problem + "
            "newline.",
        )

        @field_validator("prompt_template")
        @classmethod
        def _template(cls, value: str) -> str:
            return _check_template(value, {"bos", "problem"})  # type: ignore[return-value]

    def _check_head(self, head: dict[str, torch.Tensor], hidden_size: int) -> None:
        weight = head["v_head.summary.weight"]
        if tuple(weight.shape) != (1, hidden_size):
            raise VcrdError(
                f"{self._who}: v_head.summary.weight has shape {tuple(weight.shape)}, expected (1, {hidden_size})"
            )

    def head_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        value = hidden.float() @ self.head["v_head.summary.weight"].T + self.head["v_head.summary.bias"]
        return torch.sigmoid(value.squeeze(-1))

    def render_prompt(self, problem: str) -> str:
        return self.params.prompt_template.format(bos=self._bos(), problem=problem)


class PrmClassifier(_PrmJudge):
    """Two-class PRM judge (Qwen2.5-Math-PRM layout): r = softmax(score(h))[1], score = Linear, ReLU, Linear.

    The checkpoint is a body plus ``score.0`` (``Linear(H, H)``) and ``score.2`` (``Linear(H, 2)``). The prompt is
    Qwen's chat format: system turn ``system_prompt`` (default: Qwen2.5-Math's "Please reason step by step, and
    put your final answer within \\boxed{}.") and the policy prompt text as the user turn, then the assistant
    turn's opening, rendered with the judge tokenizer's chat template when it has one, else plain ChatML. The
    score is read after ``branch_suffix`` (default ``<extra_0>``, the step separator the model was trained on).
    """

    name: ClassVar[str] = "prm_classifier"
    head_keys: ClassVar[tuple[str, ...]] = ("score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias")
    layout: ClassVar[str] = "a two-class (Qwen2.5-Math-PRM) PRM"

    class Params(_PrmParams):
        model_config = ConfigDict(extra="forbid")

        branch_suffix: str | None = Field(
            default="<extra_0>",
            description="Text appended after the scored token (and after the alternative) where the score is read; "
            "Qwen2.5-Math-PRM is trained to score at '<extra_0>'.",
        )
        system_prompt: str = Field(default=QWEN_MATH_SYSTEM_PROMPT, description="System turn of the judge prompt.")
        prompt_template: str | None = Field(
            default=None,
            description="null: the judge tokenizer's chat template (or plain ChatML) with system_prompt and the "
            "problem as the user turn; else a format string with {problem}, optional {system} and {bos}.",
        )

        @field_validator("prompt_template")
        @classmethod
        def _template(cls, value: str | None) -> str | None:
            return _check_template(value, {"bos", "problem", "system"})

    def _check_head(self, head: dict[str, torch.Tensor], hidden_size: int) -> None:
        expected = {
            "score.0.weight": (hidden_size, hidden_size),
            "score.0.bias": (hidden_size,),
            "score.2.weight": (2, hidden_size),
            "score.2.bias": (2,),
        }
        for key, shape in expected.items():
            if tuple(head[key].shape) != shape:
                raise VcrdError(f"{self._who}: {key} has shape {tuple(head[key].shape)}, expected {shape}")

    def head_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.head
        inner = torch.relu(hidden.float() @ h["score.0.weight"].T + h["score.0.bias"])
        logits = inner @ h["score.2.weight"].T + h["score.2.bias"]
        return torch.softmax(logits, dim=-1)[..., 1]

    def render_prompt(self, problem: str) -> str:
        p = self.params
        if p.prompt_template is not None:
            return p.prompt_template.format(bos=self._bos(), problem=problem, system=p.system_prompt)
        messages = [{"role": "system", "content": p.system_prompt}, {"role": "user", "content": problem}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return (
            f"<|im_start|>system\n{p.system_prompt}<|im_end|>\n"
            f"<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n"
        )
