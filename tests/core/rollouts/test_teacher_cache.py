"""``vcrd teacher-cache``: the stored top-k equals the teacher's own top-k at every decision point (ids exactly,
float16 log-probabilities to their precision), an interrupted run resumes without gaps or duplicates, a cache
made with another teacher, k or temperature is refused in one line, k beyond the vocabulary is capped."""

from __future__ import annotations

import json
import shutil
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from vcrd_arithmetic.task import build_task

from tests.conftest import run_vcrd
from tests.core.training.helpers import save_model
from vcrd_core.config.loader import load_config
from vcrd_core.errors import VcrdError
from vcrd_core.losses.sparse import topk_teacher
from vcrd_core.rollouts.run import generate_rollouts
from vcrd_core.rollouts.sequences import RolloutSequence, StreamBatch
from vcrd_core.rollouts.store import RolloutStore
from vcrd_core.rollouts.teacher_cache import CACHE_FILE, TeacherCache
from vcrd_core.runs.models import load_causal_lm

K = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cache")
    build_task(root / "task")
    save_model(root / "teacher", 32, seed=0)
    save_model(root / "student", 16, seed=1)
    lines = (root / "task" / "distill.jsonl").read_text().splitlines()[:30]
    (root / "p.jsonl").write_text("\n".join(lines) + "\n")
    cfg = {
        "models": {
            "teacher": {"path": str(root / "teacher"), "dtype": "float32"},
            "student": {"path": str(root / "student"), "dtype": "float32"},
        },
        "data": {"train": str(root / "p.jsonl"), "template": "plain", "answer_field": "answer",
                 "max_prompt_length": 16, "max_length": 48},
        "rollouts": {"generator": {"name": "arithmetic_solver", "params": {"error_rate": 0.1}}, "max_new_tokens": 32,
                     "chunk_size": 8, "store": str(root / "store")},
        "judge": {"name": "teacher_likelihood"},
        "objective": {"temperature": 1.5},
        "output": {"dir": str(root / "out")},
    }  # fmt: skip
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    generate_rollouts(load_config(root / "run.yaml"))
    made = run_vcrd("teacher-cache", str(root / "run.yaml"), "--k", str(K), "--batch-size", "3")
    assert made.returncode == 0, made.stderr[-3000:]
    return {"root": root, "stdout": made.stdout, "cache": root / "store" / "teacher-cache"}


def test_the_cache_holds_the_teachers_top_k_at_every_decision_point(setup: dict[str, Any]) -> None:
    root, cache_dir = setup["root"], setup["cache"]
    config = load_config(root / "run.yaml")
    store = RolloutStore(root / "store")
    cache = TeacherCache.open(cache_dir)
    teacher = load_causal_lm(config.models.teacher, "t").eval()
    table = store.read().to_pylist()
    assert len(cache.rows) == len(table) > 40  # every rollout of both roles, once
    for row in table[::7]:
        seq = RolloutSequence(row["prompt_token_ids"], row["response_token_ids"])
        batch = StreamBatch.of([seq], 0)
        with torch.no_grad():
            logits = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        want = topk_teacher(logits, batch.points.rows, K, vocab_size=17, temperature=1.5)
        got = cache.sparse(row["role"], row["prompt_index"], row["sample_index"], batch.points.num_points)
        assert len(got) == len(row["response_token_ids"])  # one entry per response token (EOS included)
        assert got.ids.dtype == torch.int32 and got.logp.dtype == torch.float16  # kept compact in memory
        assert torch.equal(got.ids.long(), want.ids)
        torch.testing.assert_close(got.logp.float(), want.logp, rtol=0, atol=1e-2)  # float16 storage
        torch.testing.assert_close(got.tail, want.tail, rtol=0, atol=1e-6)
        assert got.temperature == 1.5
    printed = " ".join(setup["stdout"].split())  # the console wraps long lines
    assert f"top-{K} of {len(table)} rollouts" in printed and "MiB per million decision points" in printed


def test_an_interrupted_run_resumes_without_gaps_or_duplicates(setup: dict[str, Any]) -> None:
    root, cache_dir = setup["root"], setup["cache"]
    copy = root / "cache-resumed"
    shutil.copytree(cache_dir, copy)
    parts = sorted((copy / "data").glob("*.parquet"))
    parts[0].unlink()
    parts[-1].unlink()
    info = json.loads((copy / CACHE_FILE).read_text())
    info["complete"] = False  # as a run that died leaves it
    (copy / CACHE_FILE).write_text(json.dumps(info))
    with pytest.raises(VcrdError, match="is incomplete"):
        TeacherCache.open(copy)
    again = run_vcrd("teacher-cache", str(root / "run.yaml"), "--k", str(K), "--out", str(copy), "--batch-size", "3")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "(2 parts written now)" in " ".join(again.stdout.split())
    once_more = run_vcrd("teacher-cache", str(root / "run.yaml"), "--k", str(K), "--out", str(copy))
    printed = " ".join(once_more.stdout.split())
    assert once_more.returncode == 0 and "(0 parts written now)" in printed  # finished: no teacher pass at all
    assert f"mean teacher mass outside the top-{K}:" in printed  # over every cached point, not only new ones
    info = json.loads((copy / CACHE_FILE).read_text())
    assert info["tail_mass_mean"] == pytest.approx(json.loads((cache_dir / CACHE_FILE).read_text())["tail_mass_mean"])
    a, b = TeacherCache.open(cache_dir), TeacherCache.open(copy)
    assert a.rows.keys() == b.rows.keys()
    for key in a.rows:
        for x, y in zip(a.rows[key], b.rows[key], strict=True):
            np.testing.assert_array_equal(x, y)


def test_a_cache_made_with_another_setup_is_refused_in_one_line(setup: dict[str, Any]) -> None:
    root, cache_dir = setup["root"], setup["cache"]
    other_k = run_vcrd("teacher-cache", str(root / "run.yaml"), "--k", "7")
    other_teacher = run_vcrd(
        "teacher-cache", str(root / "run.yaml"), "--k", str(K), "--set", f"models.teacher.path={root / 'student'}"
    )
    for result, what in ((other_k, "another k;"), (other_teacher, "another teacher;")):
        assert result.returncode != 0
        assert what in " ".join(result.stderr.split()), result.stderr
        assert "Traceback" not in result.stderr
    assert TeacherCache.open(cache_dir).k == K  # nothing was overwritten
    # a run reading the cache with another objective temperature or teacher is refused
    cache = TeacherCache.open(cache_dir)
    store = RolloutStore(root / "store")
    cache.check_matches(load_config(root / "run.yaml"), store, 17)
    with pytest.raises(VcrdError, match="another temperature"):
        cache.check_matches(load_config(root / "run.yaml", ["objective.temperature=1.0"]), store, 17)
    with pytest.raises(VcrdError, match="another teacher"):
        cache.check_matches(load_config(root / "run.yaml", [f"models.teacher.path={root / 'student'}"]), store, 17)
    # a row is used only for the sequence it was made from (a rewritten store)
    key = next(iter(cache.rows))
    with pytest.raises(VcrdError, match="is not the sequence the cache was made from"):
        cache.sparse(*key, points=1, digest=cache.digests[key] + 1)


def test_k_beyond_the_vocabulary_is_capped_and_has_no_tail(setup: dict[str, Any]) -> None:
    root = setup["root"]
    out = root / "cache-full"
    result = run_vcrd("teacher-cache", str(root / "run.yaml"), "--k", "1000", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    cache = TeacherCache.open(out)
    assert cache.k == 17
    ids, logp, tail = next(iter(cache.rows.values()))
    assert ids.shape[1] == 17 and np.isneginf(tail).all()
    np.testing.assert_allclose(np.exp(logp.astype(np.float64)).sum(1), 1.0, atol=2e-2)
