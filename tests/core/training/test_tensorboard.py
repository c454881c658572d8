"""``report_to: tensorboard`` works as in transformers: the per-stream VCRD metrics land in TensorBoard too."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.core.training.helpers import config_dict, models, rows, run_config
from vcrd_core.training.run import run_train

pytestmark = pytest.mark.slow


def test_per_step_vcrd_metrics_are_written_to_tensorboard(tmp_path: Path) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    teacher, student = models(tmp_path / "models")
    cfg = config_dict(tmp_path, teacher, student)
    cfg["training"]["args"] |= {"report_to": ["tensorboard"]}
    logs = tmp_path / "run"
    run_train(run_config(cfg), rows=rows(8))

    events = list(logs.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {logs}"
    acc = event_accumulator.EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/teacher_prefix/weight_mean", "train/student_prefix/weight_share_attenuation"):
        assert tag in tags, sorted(tags)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]  # logging_steps 1, 4 steps
