"""The plugin template installed with pip for real into a throw-away venv layered on .venv: its divergence,
weighting rule and token-scoring judge, each used by name from a YAML config."""

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


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The template pip-installed into a throw-away venv: its python and the environment enabling it."""
    root = tmp_path_factory.mktemp("template-venv")
    py = layered_venv(root / "venv")
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in examples/plugin_template.
    template = Path(shutil.copytree(ROOT / "examples" / "plugin_template", root / "template", ignore=IGNORED))
    pip_install(py, template)
    return py, {**os.environ, "VCRD_PLUGINS": f"{BUILT_IN_PLUGINS},vcrd-example-weighting"}


def test_template_plugin_installs_lists_validates_and_weights(
    tmp_path: Path, installed: tuple[Path, dict[str, str]]
) -> None:
    py, env = installed
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


JUDGE_SCRIPT = """
import json, sys, torch
from vcrd_core import DecisionPoints, Stream
from vcrd_core.config.loader import load_config, validate_components
from vcrd_core.judging.scoring import score_batch

components = validate_components(load_config(sys.argv[1]))
judge, rule = components["judge"], components["weighting"]
torch.manual_seed(0)
B, L, V = 3, 12, 5  # a tiny vocabulary: repeats happen
ids = torch.randint(0, V, (B, L))
attention = torch.ones(B, L, dtype=torch.long)
attention[2, :3] = 0  # row 2 is left-padded
response = torch.zeros(B, L, dtype=torch.long)
response[:, 5:] = 1
points = DecisionPoints.from_masks(attention, response)
teacher, student = torch.randn(B, L, V), torch.randn(B, L, V)
out = {"judge": judge.name, "module": type(judge).__module__, "ids": ids.tolist(), "attention": attention.tolist(),
       "mask": points.mask.tolist(), "teacher": teacher.tolist(), "student": student.tolist()}
for stream in (Stream.TEACHER_PREFIX, Stream.STUDENT_PREFIX):
    s = score_batch(stream, ids, attention, points, teacher, student, judge, rule, proposal="greedy", vocab_size=V)
    out[stream.value] = {"proposals": s.proposals.tolist(), "r_s": s.r_s.tolist(), "r_t": s.r_t.tolist(),
                         "weights": s.weights.tolist(), "dtype": str(s.r_s.dtype)}
print(json.dumps(out))
"""


def _no_repeat(ids: list[int], attention: list[int], t: int, token: int, window: int, low: float) -> float:
    """The judge's formula written the plain way: ``low`` if ``token`` is one of the previous ``window`` real
    tokens before position ``t``, else 1."""
    previous = [ids[t - k] for k in range(1, window + 1) if t - k >= 0 and attention[t - k]]
    return low if token in previous else 1.0


def test_template_judge_is_used_by_name_from_yaml_and_scores_a_real_batch(
    tmp_path: Path, installed: tuple[Path, dict[str, str]]
) -> None:
    py, env = installed
    listed = subprocess.run([str(py), "-m", "vcrd_core", "plugins", "--json"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr
    judges = {d["name"]: d for d in json.loads(listed.stdout)["components"]["judges"]}
    assert judges["no_repeat"]["distribution"] == "vcrd-example-weighting"
    assert "teacher_likelihood" in judges  # the built-ins still load beside it

    window, low = 2, 0.25
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {**MINIMAL_CONFIG, "judge": {"name": "no_repeat", "params": {"window": window, "repeat_score": low}}}
        )
    )
    valid = subprocess.run(
        [str(py), "-m", "vcrd_core", "config", "validate", str(config)], capture_output=True, text=True, env=env
    )
    assert valid.returncode == 0, valid.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**MINIMAL_CONFIG, "judge": {"name": "no_repeat", "params": {"repeat_score": 2}}}))
    refused = subprocess.run(
        [str(py), "-m", "vcrd_core", "config", "validate", str(bad)], capture_output=True, text=True, env=env
    )
    assert refused.returncode == 2 and "judge.params.repeat_score" in refused.stderr, refused.stderr

    scored = subprocess.run([str(py), "-c", JUDGE_SCRIPT, str(config)], capture_output=True, text=True, env=env)
    assert scored.returncode == 0, scored.stderr
    out = json.loads(scored.stdout)
    assert out["judge"] == "no_repeat" and out["module"] == "vcrd_example_weighting.judge"
    ids, attention, mask = out["ids"], out["attention"], out["mask"]
    repeats = 0
    for stream, other in (("teacher_prefix", out["student"]), ("student_prefix", out["teacher"])):
        s = out[stream]
        assert s["dtype"] == "torch.float32"
        for b, row in enumerate(mask):
            for t, point in enumerate(row):
                if not point:  # zero outside the mask
                    assert s["r_s"][b][t] == 0.0 and s["r_t"][b][t] == 0.0 and s["weights"][b][t] == 0.0
                    continue
                proposal = s["proposals"][b][t]
                logits = other[b][t - 1]
                assert proposal == logits.index(max(logits))  # the other model's greedy proposal at row t-1
                actual = _no_repeat(ids[b], attention[b], t, ids[b][t], window, low)
                alt = _no_repeat(ids[b], attention[b], t, proposal, window, low)
                r_s, r_t = (alt, actual) if stream == "teacher_prefix" else (actual, alt)
                assert s["r_s"][b][t] == pytest.approx(r_s) and s["r_t"][b][t] == pytest.approx(r_t)
                w = 1.0 if proposal == ids[b][t] else r_s / (r_t + 1e-8)  # `ratio`, parity on the same token
                assert s["weights"][b][t] == pytest.approx(w, rel=1e-6)
                repeats += (actual == low) + (alt == low)
    assert repeats > 0 and sum(map(sum, mask)) > 10  # the batch exercises both values of the judge
