"""The run plan: what a run does per stream, resolved once from a validated config.

A config says it in several places (the run-wide ``judge`` / ``weighting``, a stream's own overrides, the
``proposals`` section, the rollouts' sampling, the objective's streams). :func:`RunPlan.of` resolves them once
into one typed object, and every command reads that object instead of the config's sections: ``vcrd score``
(which judge, rule and proposal policy score each role of the store), ``vcrd train`` (the same, plus the
divergences, ``λ`` and where weights come from), the grid and the benchmarks (through those commands).

Per stream (:class:`StreamPlan`): its divergence and ``λ``; its weighting rule; its judge (None when the rule
reads no score: a run of ``constant`` rules loads no judge); how the *other* model proposes at each prefix
(``sample`` / ``greedy``, with the rollouts' temperature and top-p). Run-wide: the scoring mode, the static
cache, the student-rollout schedule (``static``: the rollouts in the store; ``steps`` / ``epoch``: generated
during training, :mod:`vcrd_core.training.on_policy`) and the models.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from vcrd_core.config.models import ModelSpec, RunConfig
from vcrd_core.decision_points import Stream
from vcrd_core.errors import ConfigError
from vcrd_core.judging.judge import Judge, JudgeContext
from vcrd_core.judging.scoring import ProposalMode
from vcrd_core.losses.divergence import Divergence
from vcrd_core.losses.objective import StreamLoss, VCRDObjective
from vcrd_core.losses.weighting import WeightingRule
from vcrd_core.plugins.kinds import DIVERGENCES, JUDGES, WEIGHTING
from vcrd_core.plugins.registry import create


@dataclass(frozen=True)
class StreamPlan:
    """One stream of the run. ``rule_path`` / ``judge_path``: the YAML paths they come from (for errors and for
    sharing one judge between streams that name the same block)."""

    stream: Stream
    lam: float
    divergence: Divergence
    rule: WeightingRule
    rule_path: str
    judge: Judge | None
    judge_path: str
    proposal: ProposalMode
    temperature: float
    top_p: float
    #: Whether this stream trains on rollouts generated during training (``on_policy``: the student prefix only).
    fresh: bool = False
    #: ``teacher`` (the teacher's distribution) or ``tokens`` (the sequence's next token as a point mass: SeqKD).
    target: str = "teacher"

    @property
    def name(self) -> str:
        return self.stream.value

    @property
    def role(self) -> str:
        """The rollout role whose sequences this stream trains on (``teacher`` / ``student``)."""
        return self.stream.role

    @property
    def computed(self) -> bool:
        """Whether training computes the stream (``λ > 0``; a stream with ``λ = 0`` costs nothing)."""
        return self.lam > 0

    def identity(self) -> dict[str, Any]:
        """What this stream's weights depend on besides the models, seed and sampling: judge, rule, proposal."""
        judge = (
            None
            if self.judge is None
            else {"name": self.judge.name, "params": self.judge.params.model_dump(mode="json")}
        )
        return {
            "judge": judge,
            "weighting": {"name": self.rule.name, "params": self.rule.params.model_dump(mode="json")},
            "proposal": self.proposal,
        }


@dataclass(frozen=True)
class RunPlan:
    """The resolved run (see the module docstring). ``streams``: the enabled streams, teacher prefix first."""

    config: RunConfig
    streams: dict[str, StreamPlan]
    mode: str
    cache_static: bool
    #: Where the student-prefix stream's sequences come from: ``static`` (the rollout store, generated once),
    #: ``steps`` / ``epoch`` (generated during training from the live student, ``on_policy``).
    student_rollouts: str = "static"

    @property
    def teacher(self) -> ModelSpec:
        return self.config.models.teacher

    @property
    def student(self) -> ModelSpec:
        return self.config.models.student

    @classmethod
    def of(cls, config: RunConfig) -> RunPlan:
        """Resolve ``config`` (already validated by :func:`vcrd_core.config.loader.load_config`). Every component
        is created here, once: a stream whose rule reads scores but has no judge is refused with one line."""
        streams: dict[str, StreamPlan] = {}
        judges: dict[str, Judge] = {}
        for stream in Stream:
            s = config.streams().get(stream.value)
            if s is None:
                continue
            rule_spec, rule_path = (
                (s.weighting, f"objective.{stream.value}.weighting") if s.weighting else (config.weighting, "weighting")
            )
            judge_spec, judge_path = (
                (s.judge, f"objective.{stream.value}.judge") if s.judge else (config.judge, "judge")
            )
            rule = create(rule_spec.kind or WEIGHTING, rule_spec.name, rule_spec.params, path=rule_path)
            judge = None
            if rule.uses_scores():  # type: ignore[attr-defined]
                if judge_spec is None:
                    raise ConfigError(
                        judge_path, f"the weighting rule '{rule.name}' of the {stream.value} stream needs a judge"
                    )
                if judge_path not in judges:
                    judges[judge_path] = create(
                        judge_spec.kind or JUDGES, judge_spec.name, judge_spec.params, path=judge_path
                    )  # type: ignore[assignment]
                judge = judges[judge_path]
            div = s.divergence
            divergence = create(
                div.kind or DIVERGENCES, div.name, div.params, path=f"objective.{stream.value}.divergence"
            )
            other = config.proposals.student if stream is Stream.TEACHER_PREFIX else config.proposals.teacher
            streams[stream.value] = StreamPlan(
                stream=stream,
                lam=float(s.lam),
                divergence=divergence,  # type: ignore[arg-type]
                rule=rule,  # type: ignore[arg-type]
                rule_path=rule_path,
                judge=judge,
                judge_path=judge_path,
                proposal=other,  # type: ignore[arg-type]
                temperature=config.rollouts.temperature,
                top_p=config.rollouts.top_p,
                fresh=stream is Stream.STUDENT_PREFIX and config.on_policy.fresh,
                target=s.target,
            )
        return cls(
            config=config,
            streams=streams,
            mode=config.scoring.mode,
            cache_static=config.scoring.cache_static,
            student_rollouts=config.on_policy.schedule,
        )

    def computed(self) -> dict[str, StreamPlan]:
        """The streams training computes (enabled, ``λ > 0``)."""
        return {k: s for k, s in self.streams.items() if s.computed}

    def by_role(self, roles: Collection[str] | None = None) -> dict[str, StreamPlan]:
        """The enabled streams keyed by their rollout role (``teacher``, ``student``), optionally only ``roles``."""
        return {s.role: s for s in self.streams.values() if roles is None or s.role in roles}

    def offline_weights(self) -> list[str]:
        """The computed streams that read their weights from the scored store (offline mode, score-reading rule)."""
        if self.mode != "offline":
            return []
        return [k for k, s in self.computed().items() if s.rule.uses_scores()]

    def judges(self, *, computed_only: bool = False) -> list[Judge]:
        """Each distinct judge once (two streams may share one), of the enabled or only the computed streams."""
        seen: dict[int, Judge] = {}
        for s in (self.computed() if computed_only else self.streams).values():
            if s.judge is not None:
                seen.setdefault(id(s.judge), s.judge)
        return list(seen.values())

    def load_judges(self, context: JudgeContext, *, computed_only: bool = False) -> None:
        """:meth:`Judge.load` every judge once with ``context``."""
        for judge in self.judges(computed_only=computed_only):
            judge.load(context)

    def objective(self, *, vocab_size: int | None) -> VCRDObjective:
        """The objective of the computed streams (a stream that is off or has ``λ = 0`` is not built)."""
        losses = {k: StreamLoss(s.divergence, s.lam) for k, s in self.computed().items()}
        return VCRDObjective.from_config(self.config.objective, vocab_size=vocab_size, losses=losses)
