"""``arithmetic_solver``: a rule-based "perfect reasoner" rollout generator for the toy arithmetic task.

What it is for: exact tests of Monte-Carlo value judges (``mc_value`` estimates the value of a response
prefix by sampling continuations and grading them; with this generator the true value is known in closed
form), and an upper-bound completer on the toy task (what a policy that never errs would write). It loads
no model: it reads the prompt as text with :mod:`vcrd_arithmetic.grammar` and writes the answer.

**Exact behaviour.** Each prompt's ids are decoded (special tokens skipped). The *problem* is the text up
to and including the first ``=``; the rest is a response prefix already written (a judge may pass
prompt + partial response). With ``state = PrefixState.start(problem).feed(prefix)``, the *planned
continuation* is

* empty when the prefix is invalid (``state is None``: the response just ends) or already a complete
  correct derivation (``state.complete``);
* otherwise, with ``step = state.candidates[0]`` (the leftmost-operator next step that still starts with
  the text written since the last ``=``, ``state.partial``; after a trailing ``=`` that text is empty, so
  any next step qualifies): the rest of ``step`` after ``state.partial``, then, unless ``step`` is already
  the value, ``=`` + :func:`~vcrd_arithmetic.grammar.canonical_derivation` of ``step``. From an empty
  prefix the response is therefore exactly the canonical derivation.

With ``error_rate > 0`` every planned character is, independently with that probability, replaced by a
uniformly random character of :data:`~vcrd_arithmetic.grammar.ALPHABET` (possibly itself); the plan is
not revised after an error, so the response keeps its planned length. Then EOS. The token ids are
``tokenizer.encode(text, add_special_tokens=False) + [eos]``, cut to ``max_new_tokens`` (finish
``length``) and at stop strings by :func:`~vcrd_core.rollouts.generator.trim_response`.

Sample ``j`` of a prompt draws from ``random.Random(derive_seed(sampling.seed, prompt_token_ids, j))``:
its samples depend on the seed, the prompt's ids and ``j`` only, never on the other prompts of the call
(batch-invariant). ``sampling.temperature``, ``top_p`` and ``top_k`` are ignored.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from vcrd_arithmetic.grammar import ALPHABET, PrefixState, canonical_derivation, next_steps
from vcrd_core.errors import VcrdError
from vcrd_core.rollouts.generator import (
    Generator,
    GeneratorContext,
    Sample,
    Sampling,
    derive_seed,
    trim_response,
)


def planned_continuation(text: str) -> str:
    """The clean (error-free) continuation of ``text`` (problem up to its first ``=``, then a response
    prefix), as the module docstring defines it; a :class:`VcrdError` when there is no problem."""
    head, sep, prefix = text.partition("=")
    if not sep:
        raise VcrdError(f"no '=' in the prompt, so no arithmetic problem (such as '2*3+4='): {text!r}")
    state = PrefixState.start(head + sep).feed(prefix)
    if state is None or state.complete:
        return ""
    step = state.candidates[0]
    rest = step[len(state.partial) :]
    if next_steps(step):
        rest += "=" + canonical_derivation(step)
    return rest


class ArithmeticSolver(Generator):
    """Rule-based perfect reasoner on the arithmetic toy task, optionally noisy (``error_rate``): completes the
    prompt's response prefix with the leftmost-step derivation, or ends it when it is already wrong or done.

    Loads no model (only ``GeneratorContext.tokenizer``, which needs an ``eos_token_id``); seeded per prompt
    and sample (batch-invariant); ignores temperature, top_p and top_k.
    """

    name: ClassVar[str] = "arithmetic_solver"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        error_rate: float = Field(
            default=0.0,
            ge=0.0,
            le=1.0,
            description="Probability that each written character is replaced by a uniformly random one of the "
            "task's alphabet, in [0, 1].",
        )

    def __init__(self, params: BaseModel | None = None) -> None:
        super().__init__(params)
        self.tokenizer: Any = None

    def load(self, context: GeneratorContext) -> None:
        """Take the run's tokenizer (no model is loaded)."""
        super().load(context)
        tokenizer = context.tokenizer
        if tokenizer is None or getattr(tokenizer, "eos_token_id", None) is None:
            what = "no tokenizer" if tokenizer is None else f"{type(tokenizer).__name__} has no eos_token_id"
            raise VcrdError(
                f"generator '{self.name}' needs a tokenizer with an eos_token_id (the token that ends a response); "
                f"{what}"
            )
        self.tokenizer = tokenizer
        self.eos_id = int(tokenizer.eos_token_id)

    def close(self) -> None:
        self.tokenizer = None

    def generate(self, prompt_token_ids: list[list[int]], sampling: Sampling) -> list[list[Sample]]:
        """For every prompt, ``sampling.n`` samples, in prompt order (see the module docstring)."""
        if self.tokenizer is None:
            raise VcrdError(f"generator '{self.name}' has no tokenizer: call load(GeneratorContext(...)) first")
        tok = self.tokenizer

        def decode(ids: list[int]) -> str:
            return tok.decode(ids, skip_special_tokens=True)

        error_rate = self.params.error_rate
        out: list[list[Sample]] = []
        for i, prompt in enumerate(prompt_token_ids):
            ids = [int(t) for t in prompt]
            try:
                plan = planned_continuation(decode(ids))
            except VcrdError as exc:
                raise VcrdError(f"generator '{self.name}', prompt {i}: {exc}") from None
            samples: list[Sample] = []
            for j in range(sampling.n):
                rng = random.Random(derive_seed(sampling.seed, ids, j))
                text = "".join(rng.choice(ALPHABET) if rng.random() < error_rate else c for c in plan)
                row = [*tok.encode(text, add_special_tokens=False), self.eos_id][: sampling.max_new_tokens]
                token_ids, reason = trim_response(
                    row,
                    eos_ids={self.eos_id},
                    max_new_tokens=sampling.max_new_tokens,
                    decode=decode,
                    stop=sampling.stop,
                )
                samples.append(Sample(token_ids, decode(token_ids), reason))
            out.append(samples)
        return out
