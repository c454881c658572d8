"""On-policy student rollouts (``on_policy``) on tiny real models, CPU, ``hf`` generator: the rollouts a step trains on
come from that step's weights, ``lambda`` 0 is the static run bit for bit, the loss normalisation stays exact
under gradient accumulation and two processes, SIGKILL + ``--resume`` is bitwise, the merged LoRA weights a vLLM
engine receives equal peft's merge, and a schedule that contradicts the config is refused with one line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from tests.core.training.helpers import config_dict, models, rows, run_config
from tests.core.training.test_resume_and_processes import run_script
from vcrd_core.errors import ConfigError
from vcrd_core.plugins.registry import create
from vcrd_core.rollouts.generator import GeneratorContext, Sampling
from vcrd_core.runs.preflight import load_tokenizer
from vcrd_core.training.on_policy import inference_weights
from vcrd_core.training.run import build_trainer, prepare, run_train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return models(tmp_path_factory.mktemp("models"))


def records(run: Path, step: int, rank: int = 0) -> list[dict[str, Any]]:
    return pq.read_table(run / "on_policy" / f"step-{step:06d}-rank-{rank}.parquet").to_pylist()


def regenerate(
    student: Path, adapter: Path | None, recs: list[dict[str, Any]], budget: int, temperature: float
) -> list[list[int]]:
    """The recorded prompts generated again with the ``hf`` generator from the student (with ``adapter``), the
    record's seed and the run's sampling, cut as the run cuts them (``data.max_length`` 64)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    tok = load_tokenizer(str(student), "x")
    gen = create("generators", "hf", {"device": "cpu"})
    gen.load(GeneratorContext(str(student), tok, str(student), len(tok), "float32", extra={"model": model}))
    prompts = [r["prompt_token_ids"] for r in recs]
    (seed,) = {r["seed"] for r in recs}
    out = gen.generate(prompts, Sampling(max_new_tokens=budget, temperature=temperature, seed=seed))
    return [o[0].token_ids[: 64 - len(p)] for o, p in zip(out, prompts, strict=True)]


def on_policy_config(root: Path, tiny: tuple[Path, Path], **on: Any) -> dict[str, Any]:
    return config_dict(root, *tiny, on_policy={"schedule": "steps", **on}, rollouts={"max_new_tokens": 20},
                       training={"max_steps": 3, "per_device_batch_size": 4, "learning_rate": 0.3,
                                 "save_steps": 1, "args": {"use_cpu": True, "disable_tqdm": True}})  # fmt: skip


def test_every_step_rollouts_come_from_the_weights_of_the_step_that_used_them(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    cfg = on_policy_config(tmp_path, tiny, record=True)  # oracle judge, online (the helpers' defaults)
    run_train(run_config(cfg), rows=rows(8))
    run = tmp_path / "run"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["on_policy/fresh"] for m in steps] == [1.0, 1.0, 1.0]
    assert all(m["on_policy/rollouts"] == 4 and m["on_policy/staleness"] == 0 for m in steps)
    assert all(m["time/generation"] > 0 and 0 < m["on_policy/generation_share"] < 1 for m in steps)
    assert json.loads((run / "provenance.json").read_text())["student_rollouts"]["schedule"] == "steps"
    recs = records(run, 3)  # step 3 trained on rollouts of the weights after 2 steps
    assert {r["weights_step"] for r in recs} == {2} and {r["role"] for r in recs} == {"student"}
    used = [r["response_token_ids"] for r in recs]
    assert regenerate(tiny[1], run / "checkpoint-2", recs, 20, 1.0) == used
    assert regenerate(tiny[1], run / "checkpoint-1", recs, 20, 1.0) != used  # the weights do matter here
    first = records(run, 1)
    assert regenerate(tiny[1], None, first, 20, 1.0) == [r["response_token_ids"] for r in first]


def final_adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "adapter_model.safetensors"))


def test_lambda_zero_is_the_static_run_bit_for_bit(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    static = config_dict(tmp_path / "s", *tiny)
    zero = config_dict(tmp_path / "z", *tiny, on_policy={"schedule": "steps", "lambda": 0.0, "buffer_size": 8})
    run_train(run_config(static), rows=rows(8))
    run_train(run_config(zero), rows=rows(8))
    a, b = final_adapter(tmp_path / "s" / "run"), final_adapter(tmp_path / "z" / "run")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line) for line in (tmp_path / "z" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["on_policy/fresh"] == 0 and m["on_policy/rollouts"] == 0 for m in steps)


def test_lambda_draws_and_the_replay_buffer(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    on = {"schedule": "steps", "lambda": 0.5, "buffer_size": 6}
    training = {"max_steps": 8, "per_device_batch_size": 4}
    cfg = config_dict(tmp_path, *tiny, on_policy=on, rollouts={"max_new_tokens": 12}, training=training)
    run_train(run_config(cfg), rows=rows(8))
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fresh = [m["on_policy/fresh"] for m in steps]
    assert 0 < sum(fresh) < len(fresh)  # some steps generated, some did not
    first = fresh.index(1.0)
    for i, m in enumerate(steps):  # after the first generation the buffer (6 >= 4) serves every other step
        assert m["on_policy/replayed"] == (4.0 if not m["on_policy/fresh"] and i > first else 0.0)


def test_without_a_buffer_a_step_that_is_not_fresh_trains_on_the_store(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    on = {"schedule": "steps", "lambda": 0.5}  # buffer_size 0: GKD's semantics (else the data)
    training = {"max_steps": 8, "per_device_batch_size": 4}
    cfg = config_dict(tmp_path, *tiny, on_policy=on, rollouts={"max_new_tokens": 12}, training=training)
    run_train(run_config(cfg), rows=rows(8))
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 0 < sum(m["on_policy/fresh"] for m in steps) < len(steps)
    assert all(m["on_policy/replayed"] == 0 for m in steps)
    # the store's rollouts are the initial student's: as old as the step
    assert [m["on_policy/staleness"] for m in steps if not m["on_policy/fresh"]] == [
        float(i) for i, m in enumerate(steps) if not m["on_policy/fresh"]
    ]


@pytest.mark.parametrize(("on", "staleness"), [
    ({"schedule": "epoch"}, [0, 1, 0, 1, 0]),  # 8 examples / 4 a step: 2 steps an epoch
    ({"schedule": "steps", "every_steps": 3}, [0, 1, 2, 0, 1]),
    ({"schedule": "steps", "sync": False}, [0, 1, 2, 3, 4]),
])  # fmt: skip
def test_the_schedule_sets_the_generators_staleness(
    tmp_path: Path, tiny: tuple[Path, Path], on: dict[str, Any], staleness: list[int]
) -> None:
    training = {"max_steps": 5, "per_device_batch_size": 4}
    cfg = config_dict(tmp_path, *tiny, on_policy=on, rollouts={"max_new_tokens": 8}, training=training)
    run_train(run_config(cfg), rows=rows(8))
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["on_policy/staleness"] for m in steps] == staleness
    assert all(m["on_policy/fresh"] == 1 for m in steps)


#: float32 sums in another order (the micro-batches', the all-reduce's): rounding only.
TOLERANCE = 1e-5


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean"])
def test_normalisation_under_accumulation_and_two_processes_matches_the_full_batch(
    tmp_path: Path, tiny: tuple[Path, Path], reduction: str
) -> None:
    common = {
        "proposals": {"teacher": "greedy", "student": "greedy"},
        "rollouts": {"max_new_tokens": 16, "temperature": 0.0},  # greedy: the same rollouts however split
        "on_policy": {"schedule": "steps"},
        "objective": {"reduction": reduction},
    }
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    args = {"use_cpu": True, "disable_tqdm": True}

    def cfg(name: str, batch: int, accumulation: int, use_cpu: bool = True) -> dict[str, Any]:
        training = {"per_device_batch_size": batch, "gradient_accumulation_steps": accumulation, "max_steps": 3,
                    "lora": lora, "args": args if use_cpu else {"disable_tqdm": True}}  # fmt: skip
        return config_dict(tmp_path / name, *tiny, training=training, **common)

    def local(c: dict[str, Any]) -> dict[str, torch.Tensor]:
        config = run_config(c)
        trainer = build_trainer(config, prepare(config, resume=False, rows=rows(12)))
        trainer.train()
        return {n: p.detach().double() for n, p in trainer.model.named_parameters() if p.requires_grad}

    full, accumulated = local(cfg("full", 4, 1)), local(cfg("ga", 2, 2))
    assert max(float((full[k] - accumulated[k]).abs().max()) for k in full) < TOLERANCE
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "0"]  # fmt: skip
    done = run_script({"config": cfg("two", 2, 1, use_cpu=False), "rows": [12, 0],
                       "report": str(tmp_path / "two.json")}, tmp_path / "2.json", launcher)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["processes"] == 2
    diff = max(
        max(abs(x - y) for x, y in zip(full[k].flatten().tolist(), two["weights"][k], strict=True)) for k in full
    )
    assert diff < TOLERANCE
    moved = max(float(v.abs().max()) for k, v in full.items() if "lora_B" in k)
    assert moved > 100 * TOLERANCE


def test_sigkill_and_resume_with_a_lagging_generator_and_a_buffer_end_bitwise_equal(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    on = {"schedule": "steps", "every_steps": 2, "lambda": 0.7, "buffer_size": 6, "record": True}
    training = {"max_steps": 7, "save_steps": 3, "per_device_batch_size": 2, "gradient_accumulation_steps": 2,
                "learning_rate": 0.05, "args": {"use_cpu": True, "disable_tqdm": True}}  # fmt: skip
    base = config_dict(tmp_path, *tiny, on_policy=on, training=training, rollouts={"max_new_tokens": 12})
    straight = dict(base, output={"dir": str(tmp_path / "straight")})
    killed = dict(base, output={"dir": str(tmp_path / "killed")})
    assert run_script({"config": straight, "rows": [12, 0]}, tmp_path / "a.json").returncode == 0
    first = run_script({"config": killed, "rows": [12, 0], "kill_at_step": 5}, tmp_path / "b.json")
    assert first.returncode == -9
    second = run_script({"config": killed, "rows": [12, 0], "resume": True}, tmp_path / "c.json")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "(step 3)" in second.stderr  # resumed between two syncs (every 2 steps: at 0, 2, 4, 6)
    a, b = final_adapter(tmp_path / "straight"), final_adapter(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    made = sorted(p.name for p in (tmp_path / "straight" / "on_policy").iterdir())
    assert made == sorted(p.name for p in (tmp_path / "killed" / "on_policy").iterdir()) and made
    for name in made:
        assert pq.read_table(tmp_path / "straight" / "on_policy" / name).equals(
            pq.read_table(tmp_path / "killed" / "on_policy" / name)
        )
    steps = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert {m["on_policy/staleness"] for m in steps if m["on_policy/fresh"]} <= {0.0, 1.0}


def test_merged_lora_weights_equal_peft_merge(tiny: tuple[Path, Path]) -> None:
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny[1]),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    before = {n: p.clone() for n, p in model.named_parameters()}
    weights = dict(inference_weights(model))
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # the model is not touched
    assert not any("lora" in n or "base_layer" in n for n in weights)
    reference = copy.deepcopy(model).merge_and_unload()
    fresh = AutoModelForCausalLM.from_pretrained(tiny[1])
    assert set(weights) == set(reference.state_dict())
    fresh.load_state_dict(weights)
    ids = torch.tensor([[1, 5, 15, 6, 16, 3, 4]])
    assert torch.allclose(fresh(ids).logits, reference(ids).logits, atol=1e-6)
    assert not torch.allclose(fresh(ids).logits, AutoModelForCausalLM.from_pretrained(tiny[1])(ids).logits, atol=1e-3)


@pytest.mark.parametrize(
    ("sections", "path", "phrase"),
    [
        ({"objective": {"student_prefix": {"enabled": False}}}, "on_policy.schedule", "student_prefix stream"),
        ({"scoring": {"mode": "offline"}}, "scoring.mode", "use scoring.mode: online"),
        ({"on_policy": {"schedule": "epoch", "every_steps": 3}}, "on_policy.every_steps", "schedule: steps only"),
        (
            {"on_policy": {"schedule": "steps", "mixing": {"name": "distillm"}}},
            "on_policy.validation_examples",
            "adapts to a validation loss",
        ),
        (
            {
                "on_policy": {"schedule": "steps", "generator": {"name": "vllm"}},
                "training": {"lora": {"target_modules": ["q_proj", "lm_head"]}},
            },
            "training.lora.target_modules",
            "lm_head",
        ),
    ],
)
def test_a_schedule_that_contradicts_the_config_is_one_line(
    tmp_path: Path, tiny: tuple[Path, Path], sections: dict[str, Any], path: str, phrase: str
) -> None:
    sections = {"on_policy": {"schedule": "steps"}, **sections}
    with pytest.raises(ConfigError) as err:
        run_config(config_dict(tmp_path, *tiny, **sections))
    assert err.value.path == path and phrase in str(err.value) and "\n" not in str(err.value)


def test_on_policy_settings_under_a_static_schedule_are_named_as_ignored(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    from vcrd_core.errors import IgnoredSettingWarning

    with pytest.warns(IgnoredSettingWarning, match=r"on_policy.lambda, on_policy.buffer_size: ignored"):
        run_config(config_dict(tmp_path, *tiny, on_policy={"schedule": "static", "lambda": 0.5, "buffer_size": 4}))
    with pytest.warns(IgnoredSettingWarning, match=r"validation_examples: 4 examples are held out .* 'lambda'"):
        run_config(config_dict(tmp_path, *tiny, on_policy={"schedule": "steps", "validation_examples": 4}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a static run's resolved config (every field at its default) says nothing
        run_config(config_dict(tmp_path, *tiny, on_policy={"schedule": "static", "lambda": 1.0}))


def test_the_command_line_prints_an_ignored_setting_as_one_warning_line() -> None:
    config = Path(__file__).resolve().parents[3] / "examples" / "configs" / "qwen25_math_table9.yaml"
    done = subprocess.run([sys.executable, "-m", "vcrd_core", "config", "validate", str(config), "--set",
                           "on_policy.lambda=0.5"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "warning: on_policy.lambda: ignored, on_policy.schedule is static (the store's rollouts); they apply when it "
        "is steps or epoch"
    ]


def test_vllm_without_vllm_is_refused_before_any_model_loads(
    tmp_path: Path, tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vcrd_core.errors import VcrdError

    monkeypatch.setenv("VCRD_NO_VLLM", "1")
    cfg = config_dict(tmp_path, *tiny, on_policy={"schedule": "steps", "generator": {"name": "vllm"}})
    with pytest.raises(VcrdError, match=r"needs vLLM, which is not installed.*'hf'"):
        prepare(run_config(cfg), resume=False, rows=rows(4))
    assert not (tmp_path / "run").exists()


VLLM_SCRIPT = Path(__file__).with_name("vllm_on_policy_script.py")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (make setup)")
def test_vllm_colocated_follows_the_student_and_a_frozen_engine_does_not(tmp_path: Path) -> None:
    """Greedy ids of the colocated engine after k optimizer steps equal ``hf`` greedy ids from the checkpoint of
    step k (LoRA merged into the engine); with ``sync: false`` they equal the initial student's instead."""
    from tests.rollout_helpers import save_tiny_model

    teacher = save_tiny_model(tmp_path / "teacher", seed=1, hidden_size=128)
    student = save_tiny_model(tmp_path / "student", seed=0, hidden_size=128)
    data = rows(8)
    generator = {"name": "vllm", "params": {"gpu_memory_utilization": 0.3, "enforce_eager": True,
                                            "max_model_len": 128}}  # fmt: skip
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2", "VCRD_NO_VLLM": ""}
    for name, sync in (("synced", True), ("frozen", False)):
        cfg = config_dict(tmp_path / name, teacher, student, judge=None, weighting={"name": "constant"},
                          on_policy={"schedule": "steps", "generator": generator, "sync": sync, "record": True},
                          rollouts={"max_new_tokens": 16, "temperature": 0.0},
                          training={"max_steps": 3, "per_device_batch_size": 4, "learning_rate": 0.3,
                                    "save_steps": 1, "args": {"use_cpu": True, "disable_tqdm": True}})  # fmt: skip
        spec = tmp_path / f"{name}.json"
        spec.write_text(json.dumps({"config": cfg, "rows": data}))
        done = subprocess.run([sys.executable, str(VLLM_SCRIPT), str(spec)], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-4000:]
    synced, frozen = records(tmp_path / "synced" / "run", 3), records(tmp_path / "frozen" / "run", 3)
    assert {r["weights_step"] for r in synced} == {2} and {r["weights_step"] for r in frozen} == {0}
    trained = regenerate(student, tmp_path / "synced" / "run" / "checkpoint-2", synced, 16, 0.0)
    assert [r["response_token_ids"] for r in synced] == trained
    initial = regenerate(student, None, frozen, 16, 0.0)
    assert [r["response_token_ids"] for r in frozen] == initial
    assert trained != regenerate(student, None, synced, 16, 0.0)  # training did change the greedy ids
    steps = [json.loads(line) for line in (tmp_path / "frozen" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["on_policy/staleness"] for m in steps] == [0.0, 1.0, 2.0]
