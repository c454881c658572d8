"""``mc_value``: a Monte-Carlo value judge, for tasks with a checkable answer and no process reward model.

At a decision point with prefix ``c = (x, y_{<t})`` the judge scores a proposal ``a`` by rolling out ``K``
continuations of ``c + a`` with a *completer* model (the teacher by default) and grading each finished response
with an evaluator plugin against the example's reference (Math-Shepherd's completion labels):

.. math::

    r(c, a) = \\frac{s(c, a) + 1}{K + 2}, \\qquad
    s(c, a) = \\sum_{k=1}^{K} \\operatorname{grade}\\big(y_{<t}\\, a\\, z_k\\big), \\quad
    z_k \\sim \\pi_{\\text{completer}}(\\cdot \\mid x, y_{<t}, a),

Laplace smoothing (the posterior mean under a uniform prior), so that ``r`` lies in ``[1/(K+2), (K+1)/(K+2)]``
and the ratio ``r_s / r_t`` never divides by 0. ``r`` estimates ``P(correct | c, a)`` *under the completer*:
a value, not step correctness (a correct step the completer cannot finish scores low, a wrong step it
recovers from scores high; Qwen's "Lessons of developing PRMs", 2501.07301).

Cost control (it changes the work, not what a value estimates):

* identical prefixes are scored once per call (both proposals of a point where they are the same token, the
  same prefix in two rollouts of one prompt);
* a prefix that ends in EOS is graded as it is, without generation (all ``K`` "continuations" are empty);
* every continuation of a call is generated in one ``generate`` call of the generator plugin (``hf`` batches
  them ``batch_size`` prompts at a time; ``vllm`` all at once), with ``max_new_tokens`` new tokens at most;
* ``step_separator`` (e.g. ``"\\n"`` for chain-of-thought, ``"="`` for the toy task) scores a rollout's own
  tokens only at step ends: every token of a step gets the value of the prefix through the end of its step
  (the first later token whose text holds the separator, an EOS, or the response's last token). A proposal
  that differs from the rollout token is a fork with no step end in the rollout, so it is scored at ``c + a``.

The sampling seed is ``seed`` for every call, so the same prefixes in the same call give the same values. With a
batch-invariant generator (``arithmetic_solver``) deduplication and EOS grading leave every value bit-identical;
with ``hf`` / ``vllm`` a prefix's samples depend on its place in the call, so they change which samples are drawn,
not their distribution. The ``hf`` generator restores the caller's random state after each call.
:attr:`MonteCarloValueJudge.stats` counts the work done (for benchmarks and tests).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

import vcrd_core
from vcrd_core import JudgeContext, JudgeRequest, JudgeScores, Stream, VcrdError
from vcrd_core.rollouts.generator import GeneratorContext, Sampling

#: The roles ``completer`` may name instead of a path.
ROLES = ("teacher", "student")


class MonteCarloValueJudge(vcrd_core.Judge):
    """r(c, a) = (successes + 1) / (K + 2) over K graded continuations of c + a by a completer model."""

    name: ClassVar[str] = "mc_value"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        evaluator: vcrd_core.EvaluatorSpec = Field(
            description="Grades a finished response against the example's reference, e.g. {name: exact, params: "
            "{extract: 'vcrd_arithmetic.grammar:final_answer'}} or {name: math}; its datasets are not used."
        )
        completer: str = Field(
            default="teacher",
            description="The model that writes the continuations: 'teacher', 'student' (the run's models) or a "
            "local model directory sharing the policy tokenizer.",
        )
        generator: vcrd_core.GeneratorSpec = Field(
            default_factory=lambda: vcrd_core.GeneratorSpec(name="hf"),
            description="The generator plugin that runs the completer (hf, vllm).",
        )
        samples: int = Field(default=8, ge=1, description="K: continuations per scored prefix.")
        max_new_tokens: int = Field(default=256, ge=1, description="Budget of new tokens per continuation.")
        temperature: float = Field(default=1.0, ge=0.0, description="Completer sampling temperature (0: greedy).")
        top_p: float = Field(default=1.0, gt=0.0, le=1.0)
        seed: int = Field(default=0, description="Sampling seed of every generate call.")
        step_separator: str | None = Field(
            default=None,
            description="Score rollout tokens only at step ends (a token whose text holds it); null scores every "
            "decision point. E.g. '\\n' for chain-of-thought, '=' for the toy task.",
        )
        dtype: str = Field(default="auto", description="Completer dtype when it is a path ('auto': its own).")
        deduplicate: bool = Field(
            default=True, description="Score identical prefixes once (false only to measure what it saves)."
        )

        @field_validator("step_separator")
        @classmethod
        def _non_empty(cls, value: str | None) -> str | None:
            if value == "":
                raise ValueError("must not be empty; use null to score every decision point")
            return value

    def __init__(self, params: BaseModel | None = None) -> None:
        super().__init__(params)
        self.evaluator = self.params.evaluator.built
        self.generator = self.params.generator.built
        self.stats: dict[str, float] = {}
        self.reset_stats()
        self._loaded = False

    # ----- checks and loading ---------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        """Zero :attr:`stats`: ``points`` scored, ``prefixes`` asked for (two per point), ``unique`` prefixes after
        deduplication, ``eos_graded`` (graded without generation), ``generated`` prefixes and ``continuations``
        sampled, ``ungraded`` continuations (the evaluator could not grade: counted as failures), ``seconds``."""
        self.stats = dict.fromkeys(
            ("points", "prefixes", "unique", "eos_graded", "generated", "continuations", "ungraded", "seconds"), 0
        )

    def _completer_path(self, context: JudgeContext) -> tuple[str, str]:
        """The completer's model directory and dtype name."""
        completer = self.params.completer
        if completer in ROLES:
            spec = context.models.get(completer)
            if spec is None:
                raise VcrdError(
                    f"judge 'mc_value': completer '{completer}' names a run model, but this context has no "
                    f"{completer} (run it from a config with models.{completer})"
                )
            return str(spec.path), str(spec.dtype)
        return completer, self.params.dtype

    def check(self, context: JudgeContext) -> None:
        """Before any model loads: a reference in the data, an evaluator that can grade it, a completer directory
        with the policy tokenizer, the generator's own checks."""
        who = "judge 'mc_value'"
        data = context.data
        field = "tests_field" if self.evaluator.grades_against == "tests" else "answer_field"
        if data is not None and getattr(data, field, None) is None:
            what = "tests" if field == "tests_field" else "reference answer"
            raise VcrdError(
                f"{who}: evaluator '{self.evaluator.name}' grades each continuation against the example's {what}, "
                f"but data.{field} is null; set data.{field} to the prompt file's field that holds it"
            )
        try:
            self.evaluator.check()
        except VcrdError as exc:
            raise VcrdError(f"{who}: evaluator '{self.evaluator.name}' cannot grade here: {exc}") from None
        self.generator.check()
        path, _ = self._completer_path(context)
        root = Path(path)
        if not (root / "config.json").is_file():
            raise VcrdError(f"{who}: completer '{path}' is not a model directory (no config.json)")
        has_tokenizer = any((root / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        if context.tokenizer is not None and has_tokenizer and self.params.completer not in ROLES:
            from vcrd_core.runs.preflight import load_tokenizer

            own = load_tokenizer(path, "judge.params.completer")
            if own.get_vocab() != context.tokenizer.get_vocab():
                raise VcrdError(
                    f"{who}: the completer's tokenizer at '{path}' differs from the policy tokenizer; the completer "
                    "continues the policy's token ids, so it must share the tokenizer"
                )

    def load(self, context: JudgeContext) -> None:
        """:meth:`check`, then the completer through the generator plugin."""
        self.check(context)
        super().load(context)
        path, dtype = self._completer_path(context)
        tokenizer = context.tokenizer
        if tokenizer is None:
            raise VcrdError("judge 'mc_value' needs the policy tokenizer (JudgeContext.tokenizer)")
        vocab = context.vocab_size if context.vocab_size is not None else len(tokenizer)
        self.generator.load(
            GeneratorContext(
                model_path=path,
                tokenizer=tokenizer,
                tokenizer_path=context.tokenizer_path or path,
                vocab_size=vocab,
                dtype=dtype,
                role="completer",
                extra={"seed": self.params.seed},
            )
        )
        # every id that ends a rollout: the tokenizer's EOS and the completer's generation_config's (the generator's
        # set), so a rollout that ended on either is graded as it is, not continued
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_ids = ({int(eos)} if eos is not None else set()) | set(getattr(self.generator, "eos_ids", ()))
        if not self.eos_ids:
            raise VcrdError("judge 'mc_value': the policy tokenizer has no EOS token (needed to end responses)")
        self._loaded = True

    def close(self) -> None:
        """Free the completer."""
        self.generator.close()
        self._loaded = False

    # ----- values of prefixes -----------------------------------------------------------------------------------
    def values(self, requests: list[tuple[list[int], list[int], Any]]) -> list[float]:
        """``r = (s + 1) / (K + 2)`` of each ``(prompt ids, response prefix ids, grading item)`` (see
        :meth:`successes`)."""
        k = self.params.samples
        return [(s + 1.0) / (k + 2.0) for s in self.successes(requests)]

    def successes(self, requests: list[tuple[list[int], list[int], Any]]) -> list[float]:
        """``s``, the summed grades of the ``K`` continuations, of each ``(prompt ids, response prefix ids, grading
        item)``; the prefix ends with the scored token. Deduplicated, EOS-ended prefixes graded as they are, the
        rest in one generate call."""
        if not self._loaded:
            raise VcrdError("judge 'mc_value': call load(context) before scoring")
        start = time.perf_counter()
        k = self.params.samples
        tok = self.context.tokenizer
        keys: list[Any] = []
        unique: dict[Any, int] = {}
        order: list[tuple[list[int], list[int], Any]] = []
        for i, (prompt, prefix, item) in enumerate(requests):
            if getattr(item, "reference", None) is None:
                raise VcrdError(
                    "judge 'mc_value': an example has no reference to grade its continuations against (the rollout "
                    "store's examples were saved without one?); set data.answer_field (or data.tests_field) and "
                    "make the rollouts again"
                )
            key = (tuple(prompt), tuple(prefix), repr(item.reference)) if self.params.deduplicate else i
            if key not in unique:
                unique[key] = len(order)
                order.append((prompt, prefix, item))
            keys.append(key)
        successes = [0.0] * len(order)
        to_generate = []
        texts, items, owners = [], [], []
        for j, (_, prefix, item) in enumerate(order):
            if prefix and prefix[-1] in self.eos_ids:
                texts.append(tok.decode(prefix, skip_special_tokens=True))
                items.append(item)
                owners.append((j, k))  # one grade stands for K identical (empty) continuations
                self.stats["eos_graded"] += 1
            else:
                to_generate.append(j)
        if to_generate:
            sampling = Sampling(
                max_new_tokens=self.params.max_new_tokens,
                temperature=self.params.temperature,
                top_p=self.params.top_p,
                n=k,
                seed=self.params.seed,
            )
            samples = self.generator.generate([order[j][0] + order[j][1] for j in to_generate], sampling)
            for j, row in zip(to_generate, samples, strict=True):
                prefix, item = order[j][1], order[j][2]
                for sample in row:
                    texts.append(tok.decode(prefix + list(sample.token_ids), skip_special_tokens=True))
                    items.append(item)
                    owners.append((j, 1))
            self.stats["generated"] += len(to_generate)
            self.stats["continuations"] += len(to_generate) * k
        if texts:
            verdicts = self.evaluator.score(items, texts, lambda n: None)
            for (j, weight), verdict in zip(owners, verdicts, strict=True):
                if verdict.score is None:
                    self.stats["ungraded"] += weight
                else:
                    successes[j] += weight * float(verdict.score)
        self.stats["prefixes"] += len(requests)
        self.stats["unique"] += len(order)
        self.stats["seconds"] += time.perf_counter() - start
        return [successes[unique[key]] for key in keys]

    def step_ends(self, response: list[int]) -> list[int]:
        """For each response index, the index of the last token of its step (see the module docstring)."""
        sep = self.params.step_separator
        n = len(response)
        ends = [n - 1] * n
        end = n - 1
        tok = self.context.tokenizer
        for u in range(n - 1, -1, -1):
            token = response[u]
            if token in self.eos_ids or sep in tok.decode([token]):
                end = u
            ends[u] = end
        return ends

    # ----- scoring a batch --------------------------------------------------------------------------------------
    def score(self, request: JudgeRequest) -> JudgeScores:
        """Both proposals' values at every decision point of the request (roles as :class:`vcrd_core.TokenJudge`)."""
        who = f"judge 'mc_value' ({request.stream.value} stream)"
        if request.proposals is None:
            raise VcrdError(f"{who}: needs the other model's proposals (JudgeRequest.proposals)")
        if request.prompt_lengths is None:
            raise VcrdError(f"{who}: needs JudgeRequest.prompt_lengths to separate prompt and response")
        examples = request.examples
        if examples is None or any(e is None for e in examples):
            raise VcrdError(
                f"{who}: needs each sequence's example (its reference answer); this store or batch has none "
                "(regenerate the rollouts with this vcrd so that the store keeps the examples)"
            )
        ids = request.input_ids.cpu()
        mask = request.attention_mask.cpu().bool()
        decision = request.points.mask.cpu().bool()
        proposals = request.proposals.cpu()
        wanted: list[tuple[list[int], list[int], Any]] = []
        places: list[tuple[int, int, int]] = []  # (row, position, 0 rollout token | 1 proposal)
        for b in range(ids.shape[0]):
            real = mask[b].nonzero().squeeze(-1)
            n_prompt = int(request.prompt_lengths[b])
            prompt = ids[b, real[:n_prompt]].tolist()
            response_pos = real[n_prompt:]
            response = ids[b, response_pos].tolist()
            if bool(decision[b, real[:n_prompt]].any()):
                raise VcrdError(f"{who}: decision point inside the prompt of row {b}; decision points are responses")
            item = self.evaluator.example_item(examples[b], b)  # type: ignore[arg-type]
            ends = self.step_ends(response) if self.params.step_separator is not None and response else None
            for j, pos in enumerate(response_pos.tolist()):
                if not decision[b, pos]:
                    continue
                self.stats["points"] += 1
                own = response[: (ends[j] if ends is not None else j) + 1]
                other = int(proposals[b, pos])
                wanted.append((prompt, own, item))
                places.append((b, pos, 0))
                wanted.append((prompt, own if other == response[j] else [*response[:j], other], item))
                places.append((b, pos, 1))
        actual = torch.zeros(ids.shape, dtype=torch.float32)
        alternative = torch.zeros(ids.shape, dtype=torch.float32)
        for (b, pos, which), value in zip(places, self.values(wanted), strict=True):
            (actual if which == 0 else alternative)[b, pos] = value
        device = request.input_ids.device
        actual, alternative = actual.to(device), alternative.to(device)
        if request.stream is Stream.TEACHER_PREFIX:
            return JudgeScores(r_s=alternative, r_t=actual)
        return JudgeScores(r_s=actual, r_t=alternative)
