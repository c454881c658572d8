"""The plugin template installed with pip for real into a throw-away venv layered on .venv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import BUILT_IN_PLUGINS, MINIMAL_CONFIG, ROOT
from tests.venvs import layered_venv, pip_install

pytestmark = pytest.mark.slow
IGNORED = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")

WEIGHTS_SCRIPT = """
import json, sys, torch
from vcrd_core.config.loader import load_config, validate_components
config = load_config(sys.argv[1])
components = validate_components(config)
rule = components["weighting"]
r_s = torch.tensor([0.9, 0.2, 0.5, 0.0], dtype=torch.float64)
r_t = torch.tensor([0.3, 0.8, 0.5, 0.4], dtype=torch.float64)
same = torch.tensor([False, False, True, False])
w = rule(r_s, r_t, same)
divergence = components["objective.teacher_prefix.divergence"]
teacher = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
student = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.5]], requires_grad=True)
d = divergence(teacher, student)
d.sum().backward()
print(json.dumps({
    "rule": rule.name, "module": type(rule).__module__, "w": w.tolist(),
    "divergence": divergence.name, "d": d.tolist(), "grad_finite": bool(torch.isfinite(student.grad).all()),
}))
"""


def test_template_plugin_installs_lists_validates_and_weights(tmp_path: Path) -> None:
    env = {**os.environ, "VCRD_PLUGINS": f"{BUILT_IN_PLUGINS},vcrd-example-weighting"}
    py = layered_venv(tmp_path / "venv")
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in examples/plugin_template.
    template = Path(shutil.copytree(ROOT / "examples" / "plugin_template", tmp_path / "template", ignore=IGNORED))
    pip_install(py, template)

    listed = subprocess.run([str(py), "-m", "vcrd_core", "plugins", "--json"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr
    rules = {d["name"]: d for d in json.loads(listed.stdout)["components"]["weighting"]}
    assert rules["tempered_ratio"]["distribution"] == "vcrd-example-weighting"
    assert rules["tempered_ratio"]["version"] == "0.1.0"
    assert rules["ratio"]["plugin"] == "vcrd-weighting"  # the built-ins still load beside it
    divergences = {d["name"]: d for d in json.loads(listed.stdout)["components"]["divergences"]}
    assert divergences["hellinger"]["distribution"] == "vcrd-example-weighting"
    assert listed.stderr == ""

    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                **MINIMAL_CONFIG,
                "weighting": {"name": "tempered_ratio", "params": {"gamma": 0.5}},
                "objective": {"teacher_prefix": {"divergence": {"name": "hellinger"}}},
            }
        )
    )
    valid = subprocess.run(
        [str(py), "-m", "vcrd_core", "config", "validate", str(config)], capture_output=True, text=True, env=env
    )
    assert valid.returncode == 0, valid.stderr

    weights = subprocess.run([str(py), "-c", WEIGHTS_SCRIPT, str(config)], capture_output=True, text=True, env=env)
    assert weights.returncode == 0, weights.stderr
    out = json.loads(weights.stdout)
    assert out["module"] == "vcrd_example_weighting.plugin"
    expected = [(0.9 / (0.3 + 1e-8)) ** 0.5, (0.2 / (0.8 + 1e-8)) ** 0.5, 1.0, 0.0]
    assert out["w"] == pytest.approx(expected, rel=1e-6)
    # squared Hellinger distance, written the plain way in float64
    p = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]], dtype=torch.float64).softmax(-1)
    q = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.5]], dtype=torch.float64).softmax(-1)
    assert out["divergence"] == "hellinger" and out["grad_finite"]
    assert out["d"] == pytest.approx((1 - (p * q).sqrt().sum(-1)).tolist(), abs=1e-6)

    # The dev venv itself never saw the template: it lives only in the throw-away venv.
    here = subprocess.run(
        [sys.executable, "-m", "vcrd_core", "plugins", "--json"], capture_output=True, text=True, env=env
    )
    assert "tempered_ratio" not in here.stdout
    assert "names 'vcrd-example-weighting' (did you mean 'vcrd-weighting'?), which matches no" in here.stderr
