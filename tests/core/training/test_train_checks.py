"""`vcrd train` / `vcrd sft` refuse bad input with one line before any model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.core.training.helpers import config_dict, rows, run_config, save_model
from vcrd_core.errors import ConfigError
from vcrd_core.training import run as run_module
from vcrd_core.training.arguments import training_arguments_kwargs
from vcrd_core.training.run import run_train


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(run_module, "load_causal_lm", refuse)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return save_model(tmp_path / "t", 16, 0), save_model(tmp_path / "s", 16, 1)


def refused(cfg: dict, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as err:
        run_train(run_config(cfg), rows=kwargs.pop("rows", rows(4)), **kwargs)  # type: ignore[arg-type]
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.usefixtures("no_model_loading")
def test_missing_model_path(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    cfg = config_dict(tmp_path, tmp_path / "nowhere", dirs[1])
    assert "models.teacher.path" in refused(cfg)


@pytest.mark.usefixtures("no_model_loading")
def test_teacher_and_student_tokenizers_differ(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    teacher = dirs[0]
    vocab = json.loads((teacher / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["+"], vocab["model"]["vocab"]["-"] = (
        vocab["model"]["vocab"]["-"],
        vocab["model"]["vocab"]["+"],
    )
    (teacher / "tokenizer.json").write_text(json.dumps(vocab))
    message = refused(config_dict(tmp_path, teacher, dirs[1]))
    assert "models.teacher.path" in message and "share a tokenizer" in message


@pytest.mark.usefixtures("no_model_loading")
def test_output_dir_holding_another_run(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    cfg = config_dict(tmp_path, *dirs)
    out = Path(cfg["output"]["dir"])
    out.mkdir()
    (out / "config.yaml").write_text("name: other\n")
    (out / "provenance.json").write_text("{}\n")
    assert "already holds a run; pass --resume" in refused(cfg)
    assert 'holds a different run (name: "other" then, "vcrd" now)' in refused(cfg, resume=True)


@pytest.mark.usefixtures("no_model_loading")
def test_resume_without_a_run(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    assert "holds no run to resume" in refused(config_dict(tmp_path, *dirs), resume=True)


def _started_run(tmp_path: Path, dirs: tuple[Path, Path]) -> tuple[dict, Path]:
    """A run directory as an interrupted run leaves it: its config, provenance and some metrics."""
    from vcrd_core.runs.provenance import write_run_metadata

    cfg = config_dict(tmp_path, *dirs)
    out = Path(cfg["output"]["dir"])
    out.mkdir(parents=True)
    write_run_metadata(out, run_config(cfg))
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n')
    return cfg, out


@pytest.mark.usefixtures("no_model_loading")
def test_resume_without_a_complete_checkpoint_is_refused_and_touches_nothing(
    tmp_path: Path, dirs: tuple[Path, Path]
) -> None:
    cfg, out = _started_run(tmp_path, dirs)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    message = refused(cfg, resume=True)
    assert message.startswith("output.dir:") and "no complete checkpoint to resume from (no checkpoint-N" in message
    (out / "checkpoint-3").mkdir()  # written partly: no vcrd-complete marker
    message = refused(cfg, resume=True)
    assert "only incomplete checkpoints (checkpoint-3)" in message
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # metrics.jsonl kept whole


@pytest.mark.usefixtures("no_model_loading")
def test_resume_of_a_finished_run_is_refused(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    cfg, out = _started_run(tmp_path, dirs)
    (out / "summary.json").write_text('{"global_step": 4}\n')
    (out / "final").mkdir()
    message = refused(cfg, resume=True)
    assert "holds a finished run (summary.json, step 4); --resume continues an interrupted run only" in message
    assert (out / "summary.json").read_text() == '{"global_step": 4}\n'


def test_save_steps_that_the_save_strategy_ignores_is_refused(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    cfg = config_dict(tmp_path, *dirs, training={"save_steps": 10, "args": {"save_strategy": "no"}})
    with pytest.raises(ConfigError, match=r"training.save_steps: is ignored under training.args.save_strategy: 'no'"):
        training_arguments_kwargs(run_config(cfg))
    cfg = config_dict(tmp_path, *dirs, training={"save_steps": 10, "args": {"save_strategy": "epoch"}})
    with pytest.raises(ConfigError, match=r"training.save_steps: is ignored under .*'epoch'"):
        training_arguments_kwargs(run_config(cfg))
    kwargs = training_arguments_kwargs(run_config(config_dict(tmp_path, *dirs, training={"save_steps": 10})))
    assert (kwargs["save_strategy"], kwargs["save_steps"]) == ("steps", 10)


def test_an_interruption_names_the_last_checkpoint_and_the_resume_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vcrd_core.training.base import COMPLETE_MARKER
    from vcrd_core.training.run import say_how_to_resume

    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / COMPLETE_MARKER).write_text("{}")
    monkeypatch.setattr("sys.argv", ["/usr/bin/vcrd", "train", "my run.yaml", "--set", "seed=1"])
    with pytest.raises(KeyboardInterrupt), say_how_to_resume(tmp_path):
        raise KeyboardInterrupt
    line = capsys.readouterr().err.strip()
    assert line == (
        f"interrupted; last complete checkpoint: {tmp_path / 'checkpoint-4'}; "
        "resume with: vcrd train 'my run.yaml' --set seed=1 --resume"
    )
    with pytest.raises(KeyboardInterrupt), say_how_to_resume(tmp_path / "empty"):
        raise KeyboardInterrupt
    assert "no complete checkpoint in" in capsys.readouterr().err


def test_micro_batch_larger_than_effective_batch(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    config = run_config(config_dict(tmp_path, *dirs, training={"per_device_batch_size": 8, "batch_size": 4}))
    with pytest.raises(ConfigError, match=r"training.per_device_batch_size: the micro-batch \(8 per device x 1"):
        training_arguments_kwargs(config)
    config = run_config(config_dict(tmp_path, *dirs, training={"per_device_batch_size": 2, "batch_size": 8}))
    assert training_arguments_kwargs(config, world_size=2)["gradient_accumulation_steps"] == 2
    with pytest.raises(ConfigError, match="not a multiple"):
        training_arguments_kwargs(config, world_size=3)


@pytest.mark.usefixtures("no_model_loading")
def test_unknown_training_arguments_field(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    cfg = config_dict(tmp_path, *dirs)
    cfg["training"]["args"] = {"save_totl_limit": 2}
    message = refused(cfg)
    assert "training.args.save_totl_limit" in message and "did you mean 'save_total_limit'?" in message
    cfg["training"]["args"] = {"learning_rate": 1.0}
    assert "set by training.learning_rate" in refused(cfg)


@pytest.mark.usefixtures("no_model_loading")
def test_offline_mode_with_a_store_without_scores(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    store_module = pytest.importorskip("vcrd_core.rollouts.store")
    store = store_module.RolloutStore(tmp_path / "store")
    store.open({"test": 1}, store_module.Layout(4, 4, ("teacher", "student")))
    all_rows = rows(4)
    for role in ("teacher", "student"):
        store.write_chunk(role, 0, [dict(r, text="", finish_reason="stop") for r in all_rows if r["role"] == role])
    cfg = config_dict(tmp_path, *dirs, scoring={"mode": "offline"}, rollouts={"store": str(tmp_path / "store")})
    message = refused(cfg, rows=None)
    assert message.startswith("scoring.mode:") and "have no scores; run `vcrd score CONFIG` first" in message
    # rows without weights given directly are refused the same way
    with pytest.raises(Exception, match="offline mode needs scored rollouts"):
        run_train(run_config(cfg), rows=rows(4))


@pytest.mark.usefixtures("no_model_loading")
def test_offline_mode_refuses_scores_made_by_another_setup(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    from vcrd_core.plan import RunPlan
    from vcrd_core.rollouts.scoring import scoring_identity
    from vcrd_core.rollouts.store import Layout, RolloutStore
    from vcrd_core.runs.atomic import atomic_write_text

    store = RolloutStore(tmp_path / "store")
    store.open({"test": 1}, Layout(4, 4, ("teacher", "student")))
    for role in ("teacher", "student"):
        scored = [r | {"weights": [1.0] * len(r["response_token_ids"])} for r in rows(4) if r["role"] == role]
        store.write_chunk(role, 0, [dict(r, text="", finish_reason="stop") for r in scored])
    cfg = config_dict(tmp_path, *dirs, scoring={"mode": "offline"}, rollouts={"store": str(tmp_path / "store")})
    scored_with = run_config(cfg)
    manifest = store.manifest() | {"scoring": scoring_identity(scored_with, RunPlan.of(scored_with).by_role())}
    atomic_write_text(store.manifest_path, json.dumps(manifest))

    other = json.loads(json.dumps(cfg))
    other["weighting"] = {"name": "clamp", "params": {"inner": {"name": "ratio"}, "max": 1}}
    message = refused(other, rows=None)
    assert "was scored with another setup (scoring.streams.teacher.weighting.name" in message
    other = json.loads(json.dumps(cfg)) | {"seed": 4}
    assert "(scoring.seed: 3 then, 4 now)" in refused(other, rows=None)
    # the setup it was scored with passes every check and goes on to load the models
    with pytest.raises(AssertionError, match="a model was loaded"):
        run_train(scored_with, rows=None)


def test_an_example_whose_prompt_fills_max_length_is_left_out_and_counted_never_cut() -> None:
    from vcrd_core.training.data import RolloutExamples

    data = rows(3)
    for r in data[:2]:  # prompt 0 (both roles) gets a prompt longer than max_length
        r["prompt_token_ids"] = r["prompt_token_ids"] * 10
    max_length = max(len(r["prompt_token_ids"]) for r in data[2:]) + 2
    examples = RolloutExamples(data, ["teacher_prefix", "student_prefix"], max_length=max_length)
    assert examples.too_long == 1 and len(examples) == 2 and examples.slots == [(1, 0), (2, 0)]
    prompts = {(r["prompt_index"], r["role"]): r["prompt_token_ids"] for r in data}
    for (index, _), item in zip(examples.slots, examples.items, strict=True):
        for stream, seq in item.items():
            assert seq.prompt == prompts[(index, stream.split("_")[0])]  # never cut
            assert len(seq.prompt) + len(seq.response) <= max_length
