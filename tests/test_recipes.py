"""The baseline recipes (examples/recipes): each merges over a base config, validates, and trains a few steps on tiny
real models; its defining mechanism is checked against a plain reference: the first step's loss of KD, ABKD, GKD
(fixed rollouts) and DistiLLM-2 against a float64 re-computation of the method's formula from the models' logits,
GKD on-policy's fresh fraction against its seeded coin flips (and the data it falls back to), and the paper-table
grids validate with their real evaluators."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.conftest import ROOT
from tests.core.training.helpers import config_dict, models, rows
from vcrd_core.config.loader import load_config
from vcrd_core.rollouts.generator import derive_seed
from vcrd_core.rollouts.sequences import RolloutSequence
from vcrd_core.training.run import prepare, run_train

RECIPES = ROOT / "examples" / "recipes"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return models(tmp_path_factory.mktemp("models"))


def recipe_config(tmp_path: Path, tiny: tuple[Path, Path], recipe: str, **sections: Any) -> Any:
    """The tiny base (helpers.config_dict: oracle judge, online, LoRA without dropout, one batch of all 8 examples
    per step) with ``recipe`` merged over it through ``extends``, as a user would write it."""
    training = {"max_steps": 2, "per_device_batch_size": 8, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    training |= sections.pop("training", {})
    base = config_dict(tmp_path, *tiny, training=training, **sections)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "run.yaml").write_text(
        yaml.safe_dump({"extends": [str(tmp_path / "base.yaml"), str(RECIPES / recipe)]})
    )
    return load_config(tmp_path / "run.yaml")


def first_loss(run: Path) -> float:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss"]


def log_probs(path: Path, seqs: list[RolloutSequence]) -> tuple[list[torch.Tensor], list[int]]:
    """Per sequence, float64 log-probabilities ``[response length, V]`` of the model at ``path`` at each response
    token's decision point, and the response lengths."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    out = []
    for s in seqs:
        ids = torch.tensor([s.prompt + s.response])
        with torch.no_grad():
            logits = model(ids).logits[0].double()
        p = len(s.prompt)
        out.append(torch.log_softmax(logits[p - 1 : p - 1 + len(s.response)], dim=-1))
    return out, [len(s.response) for s in seqs]


def sequence_mean(values: list[torch.Tensor]) -> float:
    """The objective's ``sequence_mean``: each sequence's mean over its decision points, averaged over sequences."""
    return float(sum(v.mean() for v in values) / len(values))


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities (float64)."""
    return (p.exp() * (p - q)).sum(-1)


def mixture(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    return torch.log(w * a.exp() + (1 - w) * b.exp())


def ab_div(p: torch.Tensor, q: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """ABKD's D_AB^(α,β)(p || q) for α, β > 0, as its paper writes it."""
    P, Q = p.exp(), q.exp()
    s = alpha + beta
    return -(P**alpha * Q**beta - alpha / s * P**s - beta / s * Q**s).sum(-1) / (alpha * beta)


def jsd(p: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
    """TRL's generalized JSD: β KL(p || m) + (1 - β) KL(q || m), m = β p + (1 - β) q."""
    m = mixture(p, q, beta)
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def log_probs_of(tiny: tuple[Path, Path], data: list[dict[str, Any]], role: str) -> tuple[list[torch.Tensor], ...]:
    """The teacher's and the student's float64 log-probabilities on ``role``'s rollouts."""
    seqs = stream_seqs(data, role)
    return log_probs(tiny[0], seqs)[0], log_probs(tiny[1], seqs)[0]


def stream_seqs(data: list[dict[str, Any]], role: str) -> list[RolloutSequence]:
    return [RolloutSequence(r["prompt_token_ids"], r["response_token_ids"]) for r in data if r["role"] == role]


def reference_loss(recipe: str, teacher: Path, student: Path, data: list[dict[str, Any]]) -> float:
    """The first step's loss of ``recipe`` in float64, from the method's own formula."""
    streams = {}
    for role in ("teacher", "student"):
        seqs = stream_seqs(data, role)
        streams[role] = (log_probs(teacher, seqs)[0], log_probs(student, seqs)[0])
    (tp, tq), (sp, sq) = streams["teacher"], streams["student"]
    if recipe == "seqkd.yaml":  # token-mean cross-entropy of the teacher's rollouts under the student
        tokens = [
            -q.gather(-1, torch.tensor(s.response)[:, None])[:, 0]
            for q, s in zip(tq, stream_seqs(data, "teacher"), strict=True)
        ]
        return float(torch.cat(tokens).mean())
    if recipe == "kd.yaml":  # forward KL on the teacher's rollouts
        return sequence_mean([kl(p, q) for p, q in zip(tp, tq, strict=True)])
    if recipe == "abkd.yaml":  # AB divergence (0.2, 0.7) on the teacher's rollouts
        return sequence_mean([ab_div(p, q, 0.2, 0.7) for p, q in zip(tp, tq, strict=True)])
    if recipe == "gkd.yaml":  # E[coin flip]: (1 - λ) JSD on the data + λ JSD on student rollouts, λ = β = 0.5
        on_data = sequence_mean([jsd(p, q, 0.5) for p, q in zip(tp, tq, strict=True)])
        on_student = sequence_mean([jsd(p, q, 0.5) for p, q in zip(sp, sq, strict=True)])
        return 0.5 * on_data + 0.5 * on_student
    if (
        recipe == "distillm2.yaml"
    ):  # SKL(0.1) on teacher responses + SRKL(0.1) on student responses, (2 - β, β) = (1, 1)
        skl = sequence_mean([kl(p, mixture(p, q, 0.1)) for p, q in zip(tp, tq, strict=True)])
        srkl = sequence_mean([kl(q, mixture(p, q, 0.9)) for p, q in zip(sp, sq, strict=True)])
        return skl + srkl
    if recipe == "distillm2_adaptive.yaml":  # the same with DistiLLM-2's per-sequence alpha (one micro-batch)
        a1 = adaptive_alphas(tp, tq, stream_seqs(data, "teacher"), teacher_gap=True)
        a2 = adaptive_alphas(sp, sq, stream_seqs(data, "student"), teacher_gap=False)
        skl = sequence_mean([kl(p, mixture(p, q, a)) for p, q, a in zip(tp, tq, a1, strict=True)])
        srkl = sequence_mean([kl(q, mixture(p, q, 1 - a)) for p, q, a in zip(sp, sq, a2, strict=True)])
        return skl + srkl
    raise AssertionError(recipe)


def adaptive_alphas(
    ps: list[torch.Tensor], qs: list[torch.Tensor], seqs: list[RolloutSequence], *, teacher_gap: bool
) -> list[float]:
    """DistiLLM-2's adaptive alpha per sequence, float64, as ``get_batch_logps`` writes it: p_bar / q_bar the
    exp of the mean log-probability of the sequence's own tokens, gap p_bar - q_bar (SKL on teacher responses) or
    q_bar - p_bar (SRKL on student responses), anchor m the mean gap, alpha = clip(1 - 0.9 m / (gap + 1e-5),
    0.01, 0.1)."""
    gaps = []
    for p, q, s in zip(ps, qs, seqs, strict=True):
        y = torch.tensor(s.response)[:, None]
        p_bar, q_bar = math.exp(float(p.gather(-1, y).mean())), math.exp(float(q.gather(-1, y).mean()))
        gaps.append(p_bar - q_bar if teacher_gap else q_bar - p_bar)
    m = sum(gaps) / len(gaps)
    return [min(max(1 - 0.9 * m / (g + 1e-5), 0.01), 0.1) for g in gaps]


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe", ["kd.yaml", "seqkd.yaml", "abkd.yaml", "gkd.yaml", "distillm2.yaml", "distillm2_adaptive.yaml"]
)
def test_a_recipe_trains_and_its_first_loss_is_the_methods_formula(
    tmp_path: Path, tiny: tuple[Path, Path], recipe: str
) -> None:
    config = recipe_config(tmp_path, tiny, recipe)
    assert config.judge is None and config.weighting.name == "constant"
    data = rows(8)
    summary = run_train(config, rows=data)
    assert summary["global_step"] == 2 and math.isfinite(summary["final_loss"])
    got = first_loss(Path(config.output.dir))
    want = reference_loss(recipe, *tiny, data)
    # float32 rounding; the AB divergence sums terms of size ~1/(αβ) that cancel to a small D: its documented
    # float32 error is ~1e-7 V / (αβ) per decision point (vcrd_divergences/ab.py), V = 17 here
    tolerance = {"abs": 1e-7 * 17 / (0.2 * 0.7)} if recipe == "abkd.yaml" else {"rel": 1e-5}
    assert got == pytest.approx(want, **tolerance), (got, want)
    assert want > 0
    if recipe == "distillm2_adaptive.yaml":  # the alphas vary per sequence and are reported
        metrics = json.loads((Path(config.output.dir) / "metrics.jsonl").read_text().splitlines()[0])
        alphas = adaptive_alphas(*log_probs_of(tiny, data, "teacher"), stream_seqs(data, "teacher"), teacher_gap=True)
        assert len(set(alphas)) > 1, alphas
        assert metrics["teacher_prefix/alpha_min"] == pytest.approx(min(alphas), rel=1e-4)
        assert metrics["teacher_prefix/alpha_max"] == pytest.approx(max(alphas), rel=1e-4)
        assert metrics["teacher_prefix/alpha_mean"] == pytest.approx(
            sum(a * len(s.response) for a, s in zip(alphas, stream_seqs(data, "teacher"), strict=True))
            / sum(len(s.response) for s in stream_seqs(data, "teacher")),
            rel=1e-4,
        )


@pytest.mark.slow
def test_seqkd_runs_no_teacher_forward_and_refuses_the_fused_engine(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    from vcrd_core.errors import ConfigError
    from vcrd_core.runs.models import load_causal_lm
    from vcrd_core.training.run import build_trainer

    config = recipe_config(tmp_path, tiny, "seqkd.yaml")
    teacher = load_causal_lm(config.models.teacher, "models.teacher.path")
    calls = []
    teacher.register_forward_pre_hook(lambda *_: calls.append(1))
    trainer = build_trainer(config, prepare(config, resume=False, rows=rows(8)), teacher=teacher)
    trainer.train()
    assert calls == [] and trainer.loss_engine == "logits" and trainer.state.global_step == 2
    with pytest.raises(ConfigError, match=r"training.loss_engine: fused_linear .* target is its tokens"):
        recipe_config(tmp_path / "f", tiny, "seqkd.yaml", training={"loss_engine": "fused_linear"})


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["vcrd.yaml", "vcrd_prob.yaml"])
def test_the_vcrd_recipes_train_with_their_judge(tmp_path: Path, tiny: tuple[Path, Path], recipe: str) -> None:
    config = recipe_config(tmp_path, tiny, recipe)
    assert config.judge is not None and config.judge.name == (
        "oracle" if recipe == "vcrd.yaml" else "teacher_likelihood"
    )
    run_train(config, rows=rows(8))
    steps = [json.loads(line) for line in (Path(config.output.dir) / "metrics.jsonl").read_text().splitlines()]
    assert all(m["teacher_prefix/weight_mean"] != 1 for m in steps)  # validity weights, not w = 1


@pytest.mark.slow
def test_gkd_on_policy_flips_its_seeded_coin_per_step_and_falls_back_to_the_teacher(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    config = recipe_config(tmp_path, tiny, "gkd_on_policy.yaml", rollouts={"max_new_tokens": 8})
    config = config.model_copy(update={"training": config.training.model_copy(update={"max_steps": 24})})
    data = rows(8)
    prepared = prepare(config, resume=False, rows=data)
    assert prepared.dataset.roles == {"student_prefix": "teacher"}  # GKD's "else the data"
    teacher = {r["prompt_index"]: r["response_token_ids"] for r in data if r["role"] == "teacher"}
    for (prompt_index, _), item in zip(prepared.dataset.slots, prepared.dataset.items, strict=True):
        assert item["student_prefix"].response == teacher[prompt_index]
    run_train(config, rows=data)
    steps = [json.loads(line) for line in (Path(config.output.dir) / "metrics.jsonl").read_text().splitlines()]
    fresh = [m["on_policy/fresh"] == 1 for m in steps]
    expected = [random.Random(derive_seed(config.seed, "on_policy", "lambda", k)).random() < 0.5 for k in range(24)]
    assert fresh == expected
    assert 6 <= sum(fresh) <= 18  # λ = 0.5: a binomial(24, 0.5) draw, inside its 99.7% range
    assert all(m["on_policy/rollouts"] == (8 if f else 0) for m, f in zip(steps, fresh, strict=True))
    assert "teacher_prefix/loss" not in steps[0]  # one stream, as GKD has


def test_the_adaptive_alpha_recipe_refuses_the_fused_engine(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    from vcrd_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"fused_linear does not compute the per-sequence parameters") as info:
        recipe_config(tmp_path, tiny, "distillm2_adaptive.yaml", training={"loss_engine": "fused_linear"})
    assert "teacher_prefix stream's divergence 'skl_adaptive'" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["table1_2_math.yaml", "table3_code.yaml", "table4_instruct.yaml"])
def test_the_paper_table_grids_validate_with_their_evaluators(name: str) -> None:
    from vcrd_core.grid.spec import load_grid, validate_cells

    grid = validate_cells(load_grid(ROOT / "examples" / "grids" / name))
    recipes = {c.labels.get("zip1") for c in grid.cells}
    assert {"KD", "DistiLLM-2"} <= recipes
    evaluators = {e.name for c in grid.cells for e in c.config.evaluation.evaluators}
    assert evaluators == {"table1_2_math.yaml": {"math"}, "table3_code.yaml": {"code"},
                          "table4_instruct.yaml": {"pairwise"}}[name]  # fmt: skip
    kd = next(c for c in grid.cells if c.labels.get("zip1") == "KD")
    assert (
        kd.config.objective.teacher_prefix.divergence.name == "fkl" and not kd.config.objective.student_prefix.enabled
    )


def test_the_toy_baseline_grid_validates_every_recipe() -> None:
    from vcrd_core.grid.spec import load_grid, validate_cells

    grid = validate_cells(load_grid(ROOT / "examples" / "demo" / "baselines.yaml"))
    labels = {c.label for c in grid.cells}
    assert len(labels) == len(list(RECIPES.glob("*.yaml")))
    gkd = next(c for c in grid.cells if c.label == "GKD (on-policy)")
    assert gkd.config.on_policy.schedule == "steps" and gkd.config.on_policy.fallback == "teacher"


def test_a_recipe_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    from vcrd_core.errors import VcrdError
    from vcrd_core.grid.spec import load_grid

    grid = yaml.safe_load((ROOT / "examples" / "demo" / "baselines.yaml").read_text())
    grid["base"] = str(ROOT / "examples" / "demo" / "distill.yaml")
    grid["zip"][0] = {"labels": ["KD"], "recipe": ["nope.yaml"]}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    with pytest.raises(VcrdError, match=r"recipe: 'nope.yaml' does not exist"):
        load_grid(tmp_path / "g.yaml")


def distillm_reference(seed: int, total: int, accumulation: int, batch: int, capacity: int, epoch: int,
                       losses: list[float], init: float = 0.0) -> tuple[list[str], list[float]]:  # fmt: skip
    """DistiLLM's loop as its finetune.py writes it (l.265-323, l.411-417), on the same uniform draws: the source of
    every micro-batch and θ after each validation."""
    theta, prev, buffered, sources, thetas = init, None, 0, [], []
    checks = iter(losses)
    for t in range(total):
        if t % epoch == 0:  # evaluate(): before training, then once per epoch
            value = next(checks)
            if prev is not None and value >= prev + 0.1:
                theta = min(theta + 0.1, 1.0)
            prev = value
            thetas.append(theta)
        for micro in range(accumulation):
            r = random.Random(derive_seed(seed, "on_policy", "distillm", t, micro)).random()
            samp_threshold = theta * (1 - t / total)
            if r < samp_threshold or (r < theta and buffered < capacity):
                sources.append("fresh")
                buffered = min(capacity, buffered + batch)
            elif r < theta:
                sources.append("replay")
            else:
                sources.append("data")
    return sources, thetas


def test_the_distillm_rule_follows_distillms_own_loop() -> None:
    from vcrd_core.plugins.registry import create
    from vcrd_core.rollouts.mixing import MixState

    total, accumulation, batch, capacity, epoch = 60, 2, 2, 6, 10
    losses = [2.0, 2.05, 2.2, 2.25, 2.4, 2.6]  # θ: 0, 0, 0.1, 0.1, 0.2, 0.3
    want, thetas = distillm_reference(7, total, accumulation, batch, capacity, epoch, losses)
    rule = create("mixing", "distillm", {})
    got, seen, buffered = [], [], 0
    checks = iter(losses)
    for t in range(total):
        if t % epoch == 0:
            rule.observe_validation(t, next(checks))
            seen.append(rule.threshold)
        for micro in range(accumulation):
            source = rule.choose(MixState(t, total, micro, 7, 1.0, buffered, capacity, batch))
            got.append(source)
            if source == "fresh":
                buffered = min(capacity, buffered + batch)
    assert seen == pytest.approx(thetas) and thetas[-1] == pytest.approx(0.3)
    assert got == want
    assert {"fresh", "replay", "data"} <= set(got)  # every branch was taken
    # with θ = 1 and a full buffer: fresh with probability 1 - t/T, replay otherwise (its "decreasing" ratio)
    full = create("mixing", "distillm", {"init_threshold": 1.0})
    late = [full.choose(MixState(t, 100, 0, 3, 1.0, 6, 6, 2)) for t in range(90, 100)]
    early = [full.choose(MixState(t, 100, 0, 3, 1.0, 6, 6, 2)) for t in range(10)]
    assert late.count("replay") > early.count("replay") and "data" not in late + early


@pytest.mark.slow
def test_the_distillm_recipe_trains_with_its_schedule_and_validation(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    config = recipe_config(tmp_path, tiny, "distillm.yaml", rollouts={"max_new_tokens": 8},
                           training={"max_steps": 6, "per_device_batch_size": 2})  # fmt: skip
    on = config.on_policy.model_copy(update={"validation_examples": 2, "buffer_size": 4,
                                             "mixing": config.on_policy.mixing.model_copy(
                                                 update={"params": {"init_threshold": 1.0}})})  # fmt: skip
    config = config.model_copy(update={"on_policy": on})
    prepared = prepare(config, resume=False, rows=rows(8))
    assert len(prepared.dataset) == 6 and len(prepared.student_rollouts.validation) == 2
    run_train(config, rows=rows(8))
    run = Path(config.output.dir)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [("on_policy/validation_loss" in m) for m in steps] == [True, False, False, True, False, False]  # 3/epoch
    assert all(m["on_policy/threshold"] == 1.0 for m in steps)
    assert sum(m["on_policy/rollouts"] for m in steps) >= 4  # the buffer (4) filled first
    assert sum(m["on_policy/replayed"] for m in steps) > 0
    record = json.loads((run / "provenance.json").read_text())["student_rollouts"]
    assert record["mixing"]["name"] == "distillm" and record["validation_examples"] == 2
