"""The rollout-generator interface (the ``generators`` kind).

A generator turns tokenized prompts into sampled responses. Creating one from a config loads nothing;
:meth:`Generator.load` receives the run-time context (which model, the run's tokenizer, dtype) and
:meth:`Generator.close` frees it, so that one process can generate the teacher's rollouts, then the
student's. Token ids are returned exactly as sampled (the store keeps them; text is only for people),
including the token that ended a response (EOS), with the finish reason ``stop`` (EOS or a stop string)
or ``length`` (``max_new_tokens`` reached).

On-policy rollouts (:mod:`vcrd_core.training.on_policy`) generate from the student *being trained*, in one of two
ways a generator declares: :attr:`Generator.reads_live_model` (it generates from the in-memory model handed in
``GeneratorContext.extra["model"]``, as it is at each call: ``hf``), or :meth:`Generator.update_weights` (it holds
its own copy, e.g. an inference engine, and receives the student's current weights before it generates: ``vllm``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from vcrd_core.plugins.component import Component
from vcrd_core.plugins.kinds import GENERATORS

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of one ``generate`` call.

    ``temperature`` 0 is greedy decoding; ``top_k`` 0 disables top-k. ``seed`` seeds the whole call: the same
    prompts, parameters and seed give the same samples. ``stop`` strings end a response (the string stays
    in the response, so its token ids are exactly what was sampled).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    seed: int = 0
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stop"] = list(self.stop)
        return out


@dataclass
class Sample:
    """One sampled response: its token ids as sampled, the decoded text and why it ended."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason


@dataclass
class GeneratorContext:
    """Run-time context handed to :meth:`Generator.load` (never to ``__init__``).

    ``tokenizer`` is the run's shared tokenizer (loaded by :func:`vcrd_core.runs.preflight.load_tokenizer`);
    ``vocab_size`` its real vocabulary size: ids at or above it (a padded lm_head's rows) are never sampled.
    ``dtype`` is the model spec's dtype name (``auto``, ``float32``, ``bfloat16``, ``float16``).
    """

    model_path: str
    tokenizer: Any
    tokenizer_path: str
    vocab_size: int
    dtype: str = "auto"
    role: str = "teacher"
    extra: dict[str, Any] = field(default_factory=dict)


class Generator(Component):
    """Base of rollout generators. Subclasses implement :meth:`load` and :meth:`generate`."""

    kind: ClassVar[str] = GENERATORS
    #: Generates from the model in ``context.extra["model"]`` as it is at each call (a live student needs no sync).
    reads_live_model: ClassVar[bool] = False
    #: :meth:`update_weights` is implemented (the generator can follow a student that is being trained).
    syncs_weights: ClassVar[bool] = False

    def check(self) -> None:
        """Cheap checks before any model is loaded (e.g. an optional dependency is installed)."""

    def load(self, context: GeneratorContext) -> None:
        """Load the model named by ``context`` (weights, engine). Called once before :meth:`generate`."""
        self.context = context

    def generate(self, prompt_token_ids: list[list[int]], sampling: Sampling) -> list[list[Sample]]:
        """For every prompt, ``sampling.n`` samples, in prompt order."""
        raise NotImplementedError

    def update_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Load ``(name, tensor)`` pairs, named as the model's own checkpoint names them (a LoRA student merged
        under the base model's names), into the loaded model, in place. Only where :attr:`syncs_weights`."""
        raise NotImplementedError(f"generator '{self.name}' cannot receive a live model's weights")

    def close(self) -> None:
        """Free the model (default: nothing to free)."""


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed derived from ``parts`` (run seed, role, chunk index): stable across processes and
    Python versions (unlike ``hash``), so a resumed or sharded run samples exactly what one run would."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def trim_response(
    token_ids: list[int],
    *,
    eos_ids: set[int],
    max_new_tokens: int,
    decode: Any,
    stop: tuple[str, ...] = (),
) -> tuple[list[int], FinishReason]:
    """Cut a generated row after its first EOS or after the token that completes a stop string, and say
    why it ended. ``decode(ids) -> str``. Rows that ran to ``max_new_tokens`` end with ``length``."""
    for i, tok in enumerate(token_ids):
        if tok in eos_ids:
            token_ids = token_ids[: i + 1]
            if stop:
                cut = _stop_cut(token_ids, decode, stop)
                if cut is not None and cut < len(token_ids):
                    return token_ids[:cut], "stop"
            return token_ids, "stop"
    if stop:
        cut = _stop_cut(token_ids, decode, stop)
        if cut is not None:
            return token_ids[:cut], "stop"
    if len(token_ids) >= max_new_tokens:
        return token_ids, "length"
    return token_ids, "stop"


def _stop_cut(token_ids: list[int], decode: Any, stop: tuple[str, ...]) -> int | None:
    """The smallest k such that ``decode(token_ids[:k])`` contains a stop string, or None."""
    if not any(s in decode(token_ids) for s in stop):
        return None
    lo, hi = 1, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in decode(token_ids[:mid]) for s in stop):
            hi = mid
        else:
            lo = mid + 1
    return lo
