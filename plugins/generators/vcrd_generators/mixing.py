"""Built-in mixing rules: ``lambda`` (GKD's coin; the default) and ``distillm`` (DistiLLM's adaptive off-policy
schedule)."""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vcrd_core.rollouts.generator import derive_seed
from vcrd_core.rollouts.mixing import MixingRule, MixState, Source


class LambdaMixing(MixingRule):
    """Fresh with probability ``on_policy.lambda``, one draw per optimizer step (the same on every process and
    micro-batch); otherwise a replay when the buffer holds the micro-batch's worth, else the data."""

    name = "lambda"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def choose(self, state: MixState) -> Source:
        lam = state.lam
        fresh = lam >= 1 or (
            lam > 0 and random.Random(derive_seed(state.seed, "on_policy", "lambda", state.step)).random() < lam
        )
        if fresh:
            return "fresh"
        return "replay" if state.can_replay else "data"


class DistiLLMMixing(MixingRule):
    """DistiLLM's adaptive off-policy schedule (Ko et al., ICML 2024; jongwooko/distillm ``finetune.py``).

    A threshold ``θ`` (``init_threshold``, 0 in its scripts) is the probability of training on student outputs at
    all; per micro-batch ``r ~ U(0, 1)`` (seeded by the run seed, the step and the micro-batch):

    * ``fresh`` if ``r < θ_fresh`` or (``r < θ`` and the buffer is not full), with ``θ_fresh = θ (1 - t/T)``
      (``replay_ratio: decreasing``, its default; ``constant``: ``θ / 2``; ``increasing``: ``θ t/T``), ``t`` the
      optimizer step and ``T`` the planned steps;
    * ``replay`` if ``r < θ`` (the buffer is full): a uniform draw without replacement from the buffer;
    * ``data`` otherwise (its ground-truth batch; here the store's, the teacher's with ``fallback: teacher``).

    When the buffer is full: P(fresh) = θ (1 - t/T), P(replay) = θ t/T, P(data) = 1 - θ. ``θ`` moves only when a
    validation loss is observed (its ``--eval-interval -1``: before training, then once per epoch): if it rose by at
    least ``loss_eps`` since the previous one, ``θ <- min(θ + increment, 1)``; it never decreases. The previous
    loss is updated at every observation. Where the buffer cannot serve a replay (it holds fewer sequences than
    the micro-batch), the data is used.
    """

    name = "distillm"
    needs_validation = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        init_threshold: float = Field(0.0, ge=0, le=1, description="θ at the start (its scripts: 0).")
        loss_eps: float = Field(0.1, ge=0, description="Rise of the validation loss that raises θ.")
        increment: float = Field(0.1, gt=0, le=1, description="How much θ rises at a time.")
        replay_ratio: Literal["decreasing", "constant", "increasing"] = "decreasing"

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.threshold = float(self.params.init_threshold)
        self.previous: float | None = None

    def fresh_threshold(self, step: int, total: int) -> float:
        progress = min(1.0, step / total) if total > 0 else 0.0
        ratio = self.params.replay_ratio
        if ratio == "decreasing":
            return self.threshold * (1 - progress)
        if ratio == "constant":
            return self.threshold * 0.5
        return self.threshold * progress

    def choose(self, state: MixState) -> Source:
        r = random.Random(derive_seed(state.seed, "on_policy", "distillm", state.step, state.micro)).random()
        theta = self.threshold
        not_full = state.capacity > 0 and state.buffered < state.capacity
        if r < self.fresh_threshold(state.step, state.total_steps) or (r < theta and not_full):
            return "fresh"
        if r < theta:
            return "replay" if state.can_replay else "data"
        return "data"

    def observe_validation(self, step: int, loss: float) -> None:
        if self.previous is not None and loss >= self.previous + self.params.loss_eps:
            self.threshold = min(self.threshold + self.params.increment, 1.0)
        self.previous = loss

    def metrics(self) -> dict[str, float]:
        return {"threshold": self.threshold}

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.threshold, self.previous = float(state["threshold"]), state["previous"]
