"""Training from the teacher's top-k cache (``training.teacher_cache``): with k = the vocabulary (float32 cache)
the run equals the run with a teacher forward; with a small k the first loss is the coarsened one (never above
the exact, for these f-divergences); the teacher model is never constructed; what needs a teacher is refused in
one line before any model loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from vcrd_arithmetic.task import build_task

import vcrd_core.training.run as run_module
from tests.conftest import run_vcrd
from tests.core.training.helpers import config_dict, run_config, save_model
from vcrd_core.config.loader import load_config
from vcrd_core.errors import VcrdError
from vcrd_core.rollouts.run import generate_rollouts
from vcrd_core.rollouts.store import RolloutStore
from vcrd_core.training.run import build_trainer, prepare

pytestmark = pytest.mark.slow
#: Shorter than the longest rollouts: some responses are cut, and their cached rows with them.
MAX_LENGTH = 24


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cached")
    build_task(root / "task")
    teacher, student = save_model(root / "teacher", 32, seed=0), save_model(root / "student", 16, seed=1)
    lines = (root / "task" / "distill.jsonl").read_text().splitlines()[:16]
    (root / "p.jsonl").write_text("\n".join(lines) + "\n")
    cfg = config_dict(root, teacher, student, weighting={"name": "constant"})
    cfg["judge"] = None
    cfg["data"] = {**cfg["data"], "train": str(root / "p.jsonl"), "max_length": MAX_LENGTH}
    cfg["rollouts"] = {"generator": {"name": "arithmetic_solver", "params": {"error_rate": 0.2}},
                       "max_new_tokens": 32, "chunk_size": 8, "store": str(root / "store")}  # fmt: skip
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    generate_rollouts(load_config(root / "run.yaml"))
    caches = {}
    for name, extra in {"full": ["--k", "17", "--logp-dtype", "float32"], "k3": ["--k", "3"]}.items():
        caches[name] = root / f"cache-{name}"
        made = run_vcrd("teacher-cache", str(root / "run.yaml"), "--out", str(caches[name]), *extra)
        assert made.returncode == 0, made.stderr[-3000:]
    return {"root": root, "cfg": cfg, "caches": caches}


def train(cfg: dict[str, Any], out: Path, **training: Any) -> Any:
    cfg = {**cfg, "training": {**cfg["training"], **training}, "output": {"dir": str(out)}}
    config = run_config(cfg)
    prepared = prepare(config, resume=False, rows=None)
    trainer = build_trainer(config, prepared)
    trainer.train()
    return trainer


def test_with_k_equal_to_the_vocabulary_the_cached_run_is_the_run_with_a_teacher(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = setup["root"]
    store = RolloutStore(root / "store").read().to_pylist()
    cut = [r for r in store if len(r["prompt_token_ids"]) + len(r["response_token_ids"]) > MAX_LENGTH]
    assert 0 < len(cut) < len(store)  # the alignment of cut responses with their cached rows is exercised
    exact = train(setup["cfg"], root / "exact")
    loaded: list[str] = []
    real = run_module.load_causal_lm

    def spy(spec: Any, what: str, *args: Any, **kwargs: Any) -> Any:  # the real loader, recording who is loaded
        loaded.append(what)
        return real(spec, what, *args, **kwargs)

    monkeypatch.setattr(run_module, "load_causal_lm", spy)
    cache = str(setup["caches"]["full"])
    cached = {engine: train(setup["cfg"], root / f"cached-{engine}", teacher_cache=cache, loss_engine=engine)
              for engine in ("logits", "fused_linear")}  # fmt: skip
    assert loaded == ["models.student.path"] * 2  # the teacher is never constructed
    assert exact.teacher is not None and exact.loss_engine == "fused_linear"  # auto: fused for these models
    want = [h["loss"] for h in exact.state.log_history if "loss" in h]
    assert len(want) == 4
    for engine, run in cached.items():
        assert run.teacher is None and run.loss_engine == engine
        got = [h["loss"] for h in run.state.log_history if "loss" in h]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=1e-6)
        a, b = dict(exact.model.named_parameters()), dict(run.model.named_parameters())
        for name, p in a.items():
            if p.requires_grad:
                torch.testing.assert_close(b[name], p, rtol=1e-4, atol=1e-6)


def test_with_a_small_k_the_first_loss_is_the_coarsened_one_never_above_the_exact(setup: dict[str, Any]) -> None:
    root = setup["root"]
    exact = train(setup["cfg"], root / "exact-1", max_steps=1)
    cached = train(setup["cfg"], root / "k3-1", max_steps=1, teacher_cache=str(setup["caches"]["k3"]))
    first = [next(h["loss"] for h in t.state.log_history if "loss" in h) for t in (exact, cached)]
    assert first[1] < first[0]  # the tail bucket hides the teacher's shape beyond its top 3
    assert first[1] > 0.2 * first[0]  # ... but most of the divergence is in the top 3 of a 17-id vocabulary


def test_online_teacher_likelihood_from_a_full_cache_is_the_run_with_a_teacher(setup: dict[str, Any]) -> None:
    """VCRD-Prob online: the judge reads the cached distribution inside the fused pass (r_s, r_t exact at k = V)."""
    root = setup["root"]
    cfg = {**setup["cfg"], "weighting": {"name": "log_clamp"}, "judge": {"name": "teacher_likelihood"}}
    exact = train(cfg, root / "prob-exact")
    cached = train(cfg, root / "prob-cached", teacher_cache=str(setup["caches"]["full"]))
    assert cached.teacher is None and cached.loss_engine == exact.loss_engine == "fused_linear"
    histories = [[h for h in t.state.log_history if "loss" in h] for t in (exact, cached)]
    for key in ("loss", "teacher_prefix/weight_mean", "student_prefix/weight_mean"):
        want = torch.tensor([h[key] for h in histories[0]])
        got = torch.tensor([h[key] for h in histories[1]])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(torch.tensor([h["teacher_prefix/weight_mean"] for h in histories[0]]), torch.tensor(1.0))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weighting": {"name": "ratio"}, "judge": {"name": "oracle"}}, "with the judge 'oracle' reads the teacher's"),
        (
            {
                "weighting": {"name": "log_clamp"},
                "judge": {"name": "teacher_likelihood"},
                "training": {"loss_engine": "logits"},
            },
            "is made inside the fused-linear loss pass; set training.loss_engine to auto",
        ),
        ({"objective": {"temperature": 2.0}}, "was made with another temperature than this run's"),
        (
            {"objective": {"student_prefix": {"divergence": {"name": "srkl_adaptive"}}}},
            "reads the teacher's log-probability of every rollout token",
        ),
    ],
)
def test_what_needs_a_teacher_is_refused_in_one_line_before_any_model_loads(
    setup: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    cfg = dict(setup["cfg"])
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(cfg.get(key), dict) else value
    if "objective" in change and "student_prefix" in change["objective"]:
        cfg["objective"] = {"student_prefix": {"enabled": True, **change["objective"]["student_prefix"]}}
    cfg["training"] = {**cfg["training"], "teacher_cache": str(setup["caches"]["k3"])}
    cfg["output"] = {"dir": str(setup["root"] / "refused")}
    with pytest.raises(VcrdError, match=message):
        prepare(run_config(cfg), resume=False, rows=None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("on_policy.schedule=steps", "on-policy student rollouts are generated during training"),
    ],
)
def test_config_check_reports_what_the_cache_cannot_do(setup: dict[str, Any], change: str, message: str) -> None:
    root = setup["root"]
    result = run_vcrd(
        "config", "check", str(root / "run.yaml"), "--set", f"training.teacher_cache={setup['caches']['k3']}",
        "--set", change,
    )  # fmt: skip
    assert result.returncode != 0 and message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr


def test_vcrd_train_from_the_cache_says_so_in_its_summary(setup: dict[str, Any]) -> None:
    root = setup["root"]
    out = root / "cli-cached"
    result = run_vcrd(
        "train", str(root / "run.yaml"), "--set", f"training.teacher_cache={setup['caches']['k3']}",
        "--set", "training.max_steps=2", "--set", f"output.dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"] == {"cache": str(setup["caches"]["k3"]), "loaded": False}
