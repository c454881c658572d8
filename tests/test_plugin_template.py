"""The plugin template installed with pip for real into a throw-away venv layered on .venv."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import BUILT_IN_PLUGINS, MINIMAL_CONFIG, ROOT

pytestmark = pytest.mark.slow

WEIGHTS_SCRIPT = """
import json, sys, torch
from vcrd_core.config.loader import load_config, validate_components
config = load_config(sys.argv[1])
rule = validate_components(config)["weighting"]
r_s = torch.tensor([0.9, 0.2, 0.5, 0.0], dtype=torch.float64)
r_t = torch.tensor([0.3, 0.8, 0.5, 0.4], dtype=torch.float64)
same = torch.tensor([False, False, True, False])
w = rule(r_s, r_t, same)
print(json.dumps({"rule": rule.name, "module": type(rule).__module__, "w": w.tolist()}))
"""


def test_template_plugin_installs_lists_validates_and_weights(tmp_path: Path) -> None:
    env = {**os.environ, "VCRD_PLUGINS": f"{BUILT_IN_PLUGINS},vcrd-example-weighting"}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    target_site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Layer on .venv: `import site; site.addsitedir(...)` also runs .venv's editable-install .pth files.
    Path(target_site, "_layer_on_dev_venv.pth").write_text(
        f"import site; site.addsitedir({site.getsitepackages()[0]!r})\n"
    )
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(ROOT / "examples" / "plugin_template"),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr

    listed = subprocess.run(
        [str(py), "-m", "vcrd_core.cli", "plugins", "--json"], capture_output=True, text=True, env=env
    )
    assert listed.returncode == 0, listed.stderr
    rules = {d["name"]: d for d in json.loads(listed.stdout)["components"]["weighting"]}
    assert rules["tempered_ratio"]["distribution"] == "vcrd-example-weighting"
    assert rules["tempered_ratio"]["version"] == "0.1.0"
    assert rules["ratio"]["plugin"] == "vcrd-weighting"  # the built-ins still load beside it

    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump({**MINIMAL_CONFIG, "weighting": {"name": "tempered_ratio", "params": {"gamma": 0.5}}})
    )
    valid = subprocess.run(
        [str(py), "-m", "vcrd_core.cli", "config", "validate", str(config)], capture_output=True, text=True, env=env
    )
    assert valid.returncode == 0, valid.stderr

    weights = subprocess.run([str(py), "-c", WEIGHTS_SCRIPT, str(config)], capture_output=True, text=True, env=env)
    assert weights.returncode == 0, weights.stderr
    out = json.loads(weights.stdout)
    assert out["module"] == "vcrd_example_weighting.plugin"
    expected = [(0.9 / (0.3 + 1e-8)) ** 0.5, (0.2 / (0.8 + 1e-8)) ** 0.5, 1.0, 0.0]
    assert out["w"] == pytest.approx(expected, rel=1e-6)

    # The dev venv itself never saw the template: it lives only in the throw-away venv.
    here = subprocess.run(
        [sys.executable, "-m", "vcrd_core.cli", "plugins", "--json"], capture_output=True, text=True, env=env
    )
    assert "tempered_ratio" not in here.stdout
