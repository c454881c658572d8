"""End-to-end runs of the training engine on tiny real Qwen2 models (CPU, float32, nothing downloaded)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from tests.core.training.helpers import config_dict, models, prm_run, rows, run_config, save_model
from vcrd_core.errors import VcrdError
from vcrd_core.hookspecs import hookimpl
from vcrd_core.judging.scoring import score_batch
from vcrd_core.plugins.registry import create
from vcrd_core.rollouts.sequences import RolloutSequence, StreamBatch
from vcrd_core.training.run import build_trainer, prepare, run_train
from vcrd_core.training.step import VCRDTrainer
from vcrd_core.training.weight_sources import WeightSource

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return models(tmp_path_factory.mktemp("models"))


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class Recording(VCRDTrainer):
    """Records each micro-batch's weights per stream (as passed to the objective)."""

    seen: list[dict[str, Any]]

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if not hasattr(self, "seen"):
            self.seen = []
        original = self.objective
        record: dict[str, Any] = {"index": next(iter(inputs.values())).index.tolist()}

        def objective(**streams: Any) -> Any:
            for name, s in streams.items():
                record[name] = None if s.weights is None else s.weights.detach().clone()
            return original(**streams)

        self.objective = objective  # type: ignore[assignment]
        try:
            return super().compute_loss(model, inputs, *args, **kwargs)
        finally:
            self.objective = original
            self.seen.append(record)


class NoWeights(WeightSource):
    """No weights at all (the objective's w = 1)."""

    def weights(self, *args: Any, **kwargs: Any) -> None:
        return None


class Plain(VCRDTrainer):
    """The same loop with no weights at all (the objective's w = 1): plain SKL + SRKL."""

    def _engine(self, model: Any, batch: Any) -> Any:
        engine = super()._engine(model, batch)
        self.sources = {s: NoWeights(self.plan.streams[s]) for s in self.streams}
        return engine


def train_with(cfg: dict[str, Any], trainer_class: type[VCRDTrainer] = VCRDTrainer, data: Any = None) -> Any:
    config = run_config(cfg)
    prepared = prepare(config, resume=False, rows=data if data is not None else rows(8))
    trainer = build_trainer(config, prepared, trainer_class=trainer_class)
    trainer.train()
    return trainer


def test_online_oracle_run_lowers_the_loss_and_writes_loadable_outputs(
    tmp_path: Path, tiny: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = config_dict(tmp_path, *tiny, training={"max_steps": 12, "per_device_batch_size": 8, "learning_rate": 2e-2})
    summary = run_train(run_config(cfg), rows=rows(8), merge=True)  # one fixed batch of 8, every step
    run = tmp_path / "run"
    steps = metrics(run)
    assert [m["step"] for m in steps] == list(range(1, 13))
    assert steps[-1]["loss"] < 0.7 * steps[0]["loss"]
    for key in ("teacher_prefix/loss", "student_prefix/weight_mean", "student_prefix/weight_p90",
                "teacher_prefix/weight_share_attenuation", "student_prefix/weight_share_amplification", "learning_rate",
                "tokens_per_second", "judge_share", "grad_norm"):  # fmt: skip
        assert all(math.isfinite(m[key]) for m in steps), key
    # one concise line per logging step (not transformers' dict of every key), the whole record in metrics.jsonl
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(lines) == 12 and all("{" not in line for line in lines)
    assert lines[-1].startswith("step 12/12 | loss ") and " | grad_norm " in lines[-1] and " tok/s | lr " in lines[-1]
    assert "teacher_prefix " in lines[-1] and "(w̄ " in lines[-1]
    assert {"config.yaml", "provenance.json", "summary.json"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "provenance.json").read_text())["scoring_mode"] == "online"
    assert summary["global_step"] == 12 and summary["static_scoring_seconds"] > 0

    base = AutoModelForCausalLM.from_pretrained(tiny[1])
    adapted = PeftModel.from_pretrained(base, run / "final").eval()
    merged = AutoModelForCausalLM.from_pretrained(run / "merged").eval()
    ids = torch.tensor([[1, 5, 15, 6, 16]])
    assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-5)


def test_constant_weights_equal_plain_skl_srkl_bitwise(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    cfg = dict(config_dict(tmp_path / "a", *tiny, weighting={"name": "constant"}), judge=None)
    constant = train_with(cfg)
    plain = train_with(dict(cfg, output={"dir": str(tmp_path / "b")}), Plain)
    a, b = dict(constant.model.named_parameters()), dict(plain.model.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert constant.state.log_history[-2]["loss"] == plain.state.log_history[-2]["loss"]


def test_online_and_offline_weights_are_equal_at_step_0(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    from vcrd_core.judging.judge import JudgeContext
    from vcrd_core.runs.models import load_causal_lm
    from vcrd_core.runs.preflight import load_tokenizer

    base = {"proposals": {"teacher": "greedy", "student": "greedy"}, "training": {"max_steps": 1}}
    cfg = config_dict(tmp_path / "on", *tiny, **base)
    cfg["training"] = {**config_dict(tmp_path, *tiny)["training"], "max_steps": 1, "per_device_batch_size": 8}
    online = train_with(cfg, Recording)

    # offline: scores computed independently with score_batch and the initial models, stored per response token
    config = run_config(cfg)
    tokenizer = load_tokenizer(str(tiny[1]), "x")
    judge = create("judges", "oracle", {})
    judge.load(JudgeContext(tokenizer=tokenizer, vocab_size=len(tokenizer)))
    rule = create("weighting", "ratio", {})
    teacher = load_causal_lm(config.models.teacher, "t").eval()
    student = load_causal_lm(config.models.student, "s").eval()
    scored_rows = []
    for row in rows(8):
        batch = StreamBatch.of([RolloutSequence(row["prompt_token_ids"], row["response_token_ids"])], 0)
        with torch.no_grad():
            t_logits = teacher(input_ids=batch.input_ids).logits
            s_logits = student(input_ids=batch.input_ids).logits
        stream = "teacher_prefix" if row["role"] == "teacher" else "student_prefix"
        out = score_batch(stream, batch.input_ids, batch.attention_mask, batch.points, t_logits, s_logits, judge, rule,
                          proposal="greedy", vocab_size=17, prompt_lengths=batch.prompt_lengths)  # fmt: skip
        p = len(row["prompt_token_ids"])
        scored_rows.append(dict(row, weights=out.weights[0, p:].tolist()))
    offline = train_with(dict(cfg, scoring={"mode": "offline"}, output={"dir": str(tmp_path / "off")}), Recording,
                         scored_rows)  # fmt: skip
    on, off = online.seen[0], offline.seen[0]
    assert on["index"] == off["index"]
    for stream in ("teacher_prefix", "student_prefix"):
        assert torch.allclose(on[stream], off[stream], rtol=1e-6), stream
        assert (on[stream] != 1).any()  # the oracle's weights are not trivial here


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_teacher_likelihood_runs(tmp_path: Path, tiny: tuple[Path, Path], mode: str) -> None:
    data = rows(8)
    if mode == "offline":
        data = [dict(r, weights=[0.5] * len(r["response_token_ids"])) for r in data]
    cfg = config_dict(tmp_path, *tiny, judge={"name": "teacher_likelihood"}, weighting={"name": "log_clamp"},
                      scoring={"mode": mode})  # fmt: skip
    trainer = train_with(cfg, data=data)
    steps = metrics(tmp_path / "run")
    assert len(steps) == 4 and all(math.isfinite(m["loss"]) for m in steps)
    if mode == "online":
        # a RowJudge: with the (default) fused-linear engine it is scored inside the loss pass, every step
        assert trainer.loss_engine == "fused_linear"
        assert all(m["time/judge"] == 0 and m["time/loss"] > 0 for m in steps)
        assert all(0.5 <= m[f"{s}/weight_mean"] <= 2 and m[f"{s}/weight_mean"] != 1 for m in steps
                   for s in ("teacher_prefix", "student_prefix"))  # fmt: skip
        assert trainer.static_scoring_seconds == 0  # reads the student's greedy tokens: nothing is static
    else:
        assert all(m["teacher_prefix/weight_mean"] == pytest.approx(0.5) for m in steps)


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_prm_value_head_runs(tmp_path: Path, mode: str) -> None:
    prm, teacher, student, data = prm_run(tmp_path, 1.5 if mode == "offline" else None)
    cfg = config_dict(tmp_path, teacher, student, judge={"name": "prm_value_head", "params": {"path": str(prm)}},
                      scoring={"mode": mode})  # fmt: skip
    trainer = train_with(cfg, data=data)
    steps = metrics(tmp_path / "run")
    assert len(steps) == 4 and all(math.isfinite(m["loss"]) for m in steps)
    if mode == "online":
        assert trainer.static_scoring_seconds > 0  # the student-prefix stream scored once
        assert all(m["time/judge"] > 0 for m in steps)  # the teacher-prefix stream every step
        assert all(m["student_prefix/weight_mean"] > 0 for m in steps)


def test_a_plugin_receives_every_lifecycle_hook(tmp_path: Path, tiny: tuple[Path, Path], register_plugin: Any) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    class Logger:
        @hookimpl
        def vcrd_on_run_start(self, config: Any, output_dir: str) -> None:
            calls.append(("run_start", {"config": config, "output_dir": output_dir}))

        @hookimpl
        def vcrd_on_step_end(self, step: int, metrics: dict[str, float]) -> None:
            calls.append(("step_end", {"step": step, "metrics": metrics}))

        @hookimpl
        def vcrd_on_evaluation_end(self, step: int, results: dict[str, float]) -> None:
            calls.append(("evaluation_end", {"step": step, "results": results}))

        @hookimpl
        def vcrd_on_run_end(self, output_dir: str, summary: dict[str, Any]) -> None:
            calls.append(("run_end", {"output_dir": output_dir, "summary": summary}))

    register_plugin(Logger(), "test-logger")
    cfg = config_dict(tmp_path, *tiny, training={"max_steps": 2})
    run_train(run_config(cfg), rows=rows(8))
    names = [c[0] for c in calls]
    assert names == ["run_start", "step_end", "step_end", "run_end"]
    assert calls[0][1]["output_dir"] == str(tmp_path / "run") and calls[0][1]["config"].seed == 3
    assert [c[1]["step"] for c in calls[1:3]] == [1, 2]
    assert "teacher_prefix/weight_mean" in calls[1][1]["metrics"]
    assert calls[3][1]["summary"]["global_step"] == 2

    calls.clear()
    trainer = train_with(dict(cfg, output={"dir": str(tmp_path / "eval")}))
    calls.clear()
    results = trainer.evaluate(eval_dataset=trainer.train_dataset)
    assert [c[0] for c in calls] == ["evaluation_end"]
    assert calls[0][1]["results"]["eval_loss"] == pytest.approx(results["eval_loss"])


class NaNAfter(VCRDTrainer):
    """The loss becomes NaN from global step ``bad_from`` on (``only`` steps, or forever)."""

    bad: ClassVar[set[int]] = set()

    def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        return loss * float("nan") if self.state.global_step in self.bad else loss


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    cfg = config_dict(tmp_path, *tiny, training={"max_steps": 4, "save_steps": 2, "max_nonfinite_steps": 2})
    before: dict[str, torch.Tensor] = {}

    class OneBad(NaNAfter):
        bad: ClassVar[set[int]] = {1}

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            if self.state.global_step == 1 and not before:
                before.update({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
            return super().training_step(model, inputs, num_items_in_batch)

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            if self.state.global_step == 2:
                after = {n: p for n, p in model.named_parameters() if p.requires_grad}
                assert all(torch.equal(before[n], after[n]) for n in before)  # step 2 (global_step 1) changed nothing
            super()._save_checkpoint(model, trial)

    trainer = train_with(cfg, OneBad)
    steps = metrics(tmp_path / "run")
    assert [m["skipped"] for m in steps] == [0, 1, 0, 0] and trainer.nonfinite_steps == 1

    class AllBad(NaNAfter):
        bad: ClassVar[set[int]] = {1, 2, 3}

    with pytest.raises(VcrdError, match=r"non-finite for 2 consecutive steps \(training.max_nonfinite_steps\)"):
        train_with(dict(cfg, output={"dir": str(tmp_path / "b")}), AllBad)
    assert not (tmp_path / "b" / "checkpoint-4").exists()


def test_sft_from_scratch_lowers_the_loss(tmp_path: Path) -> None:
    import random

    from vcrd_arithmetic.grammar import canonical_derivation, random_problem

    from vcrd_core.errors import ConfigError
    from vcrd_core.training.sft import run_sft

    rng = random.Random(0)
    data = tmp_path / "train.jsonl"
    with data.open("w") as f:
        for _ in range(16):
            p = random_problem(rng, 3)
            f.write(json.dumps({"prompt": p, "response": canonical_derivation(p)}) + "\n")
    model_dir = save_model(tmp_path / "scratch", 32, 0, weights=False)
    cfg = config_dict(tmp_path, model_dir, model_dir, training={"max_steps": 15, "per_device_batch_size": 16,
                      "learning_rate": 1e-2, "lora": {"enabled": False}})  # fmt: skip
    cfg["data"] = {**cfg["data"], "train": str(data), "response_field": "response"}
    with pytest.raises(ConfigError, match=r"has no model weights.*--from-scratch"):
        run_sft(run_config(cfg))
    summary = run_sft(run_config(dict(cfg, output={"dir": str(tmp_path / "sft")})), from_scratch=True)
    steps = metrics(tmp_path / "sft")
    assert steps[-1]["loss"] < 0.6 * steps[0]["loss"] and summary["global_step"] == 15
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "sft" / "final")


def test_nan_student_logits_skip_the_step_instead_of_crashing_online_scoring(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    """An overflow in the student's forward: proposals cannot be sampled from NaN logits, so the step is
    skipped by the non-finite guard (parameters unchanged) instead of the run crashing in the judge."""

    class NaNLogitsAtStep1(VCRDTrainer):
        def forward_both(self, inputs: Any, model: Any) -> dict[str, Any]:
            out = super().forward_both(inputs, model)
            if self.state.global_step == 1:
                out = {k: (t, s * float("nan")) for k, (t, s) in out.items()}
            return out

    cfg = config_dict(tmp_path, *tiny, training={"max_steps": 3})  # online oracle, sampled proposals
    trainer = train_with(cfg, NaNLogitsAtStep1)
    assert [m["skipped"] for m in metrics(tmp_path / "run")] == [0, 1, 0] and trainer.nonfinite_steps == 1


def test_the_learning_rate_in_metrics_is_the_one_each_step_used(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    training = {"max_steps": 4, "per_device_batch_size": 8, "lr_scheduler": "linear", "warmup_ratio": 0.25,
                "learning_rate": 3e-3}  # fmt: skip
    run_train(run_config(config_dict(tmp_path, *tiny, training=training)), rows=rows(8))
    lrs = [m["learning_rate"] for m in metrics(tmp_path / "run")]
    # one warm-up step from 0, then linear decay to 0 over the other three: the rate before each update
    assert lrs == pytest.approx([0.0, 3e-3, 2e-3, 1e-3])
