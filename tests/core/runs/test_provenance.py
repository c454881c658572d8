"""Provenance: every output directory records the resolved config, versions, commit, seed and mode."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.conftest import MINIMAL_CONFIG, ROOT
from vcrd_core import __version__
from vcrd_core.config.loader import load_config, resolved_dict
from vcrd_core.runs.provenance import write_run_metadata


def test_run_metadata_records_config_versions_commit_seed_and_mode(tmp_path: Path, write_config) -> None:
    data = {**MINIMAL_CONFIG, "seed": 7, "scoring": {"mode": "offline"}}
    data["weighting"] = {"name": "log_clamp"}
    config = load_config(write_config(data))
    out = tmp_path / "run"
    write_run_metadata(out, config, rollout_seed=11)

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["weighting"]["params"]["gamma"] == 0.5  # resolved: defaults filled in
    assert resolved_dict(load_config(out / "config.yaml")) == resolved_dict(config)  # it reloads to the same run

    record = json.loads((out / "provenance.json").read_text())
    assert record["vcrd"] == __version__
    assert record["plugins"] == {"vcrd": "0.1.0"}  # the built-ins ship in the vcrd distribution
    assert record["components"]["weighting"] == {
        "kind": "weighting",
        "name": "log_clamp",
        "plugin": "vcrd-weighting",
        "distribution": "vcrd",
        "version": "0.1.0",
    }
    assert record["components"]["objective.student_prefix.divergence"]["name"] == "srkl"
    assert (record["seed"], record["scoring_mode"], record["rollout_seed"]) == (7, "offline", 11)
    assert record["libraries"]["torch"].startswith("2.")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert record["git"]["commit"] == head.stdout.strip()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary file
