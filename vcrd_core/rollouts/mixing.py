"""The mixing-rule interface (the ``mixing`` kind): under ``on_policy``, where each micro-batch's student-prefix
sequences come from.

A rule's :meth:`MixingRule.choose` returns ``fresh`` (generate them from the generator's weights), ``replay`` (draw
them from the replay buffer) or ``data`` (the store's: the student's rollouts, or the teacher's with
``on_policy.fallback: teacher``). It sees a :class:`MixState` (the step, the planned steps, the micro-batch, the
run seed, ``on_policy.lambda``, the buffer's fill and capacity); it may adapt to a validation loss
(:attr:`MixingRule.needs_validation`: the student's token cross-entropy on ``on_policy.validation_examples``
held-out examples' sequences, measured before training and at the end of each epoch, handed to
:meth:`MixingRule.observe_validation`). Its state goes into checkpoints (:meth:`state_dict`). Randomness must
come from seeds derived from :class:`MixState` (e.g. :func:`vcrd_core.rollouts.generator.derive_seed`), so that a
resumed run and every process choose alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from vcrd_core.plugins.component import Component
from vcrd_core.plugins.kinds import MIXING

Source = Literal["fresh", "replay", "data"]


@dataclass(frozen=True)
class MixState:
    """What a rule decides from: ``step`` (optimizer steps done), ``total_steps`` (planned), ``micro`` (the
    micro-batch within the step), ``seed`` (the run's), ``lam`` (``on_policy.lambda``), ``buffered`` (sequences in
    this process's replay buffer), ``capacity`` (``on_policy.buffer_size``; 0: no buffer), ``batch`` (sequences the
    micro-batch needs)."""

    step: int
    total_steps: int
    micro: int
    seed: int
    lam: float
    buffered: int
    capacity: int
    batch: int

    @property
    def can_replay(self) -> bool:
        return self.capacity > 0 and self.buffered >= self.batch


class MixingRule(Component):
    """Base of mixing rules. Subclasses implement :meth:`choose`."""

    kind: ClassVar[str] = MIXING
    #: Whether the rule adapts to a validation loss (``on_policy.validation_examples`` must then be > 0).
    needs_validation: ClassVar[bool] = False

    def choose(self, state: MixState) -> Source:
        raise NotImplementedError

    def observe_validation(self, step: int, loss: float) -> None:
        """The validation loss after ``step`` optimizer steps (before training: step 0). Default: ignored."""

    def metrics(self) -> dict[str, float]:
        """Per-step values for ``metrics.jsonl`` (``on_policy/<key>``). Default: none."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (resume)."""
