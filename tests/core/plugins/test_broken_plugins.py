"""Every kind of broken plugin, pip-installed for real into one throw-away venv beside the built-ins:
`vcrd plugins` names each in one line and exits 0, the built-ins still list, configs that do not use
the broken plugins still validate, and a broken plugin never half-registers."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import BUILT_IN_PLUGINS, MINIMAL_CONFIG, ROOT
from tests.venvs import layered_venv, pip_install

pytestmark = pytest.mark.slow

HEADER = '''
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

import vcrd_core

VCRD_PLUGIN_API = 1


class Good(vcrd_core.WeightingRule):
    """A valid rule: listed only if its plugin is not broken."""

    name: ClassVar[str] = "good_{suffix}"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def weight(self, r_student, r_teacher):
        return r_student
'''

#: distribution name -> (module body after HEADER, the one-line reason `vcrd plugins` must give)
BROKEN: dict[str, tuple[str, str]] = {
    "vcrd-broken-import": (
        "import vcrd_missing_dependency_xyz\n",
        "not loaded: import of 'vcrd_broken_import' failed: ModuleNotFoundError: "
        "No module named 'vcrd_missing_dependency_xyz'",
    ),
    "vcrd-broken-api": (
        "VCRD_PLUGIN_API = 2\n\n\n@vcrd_core.hookimpl\ndef vcrd_register_weighting():\n    return [Good]\n",
        "not loaded: built for vcrd plugin API 2, but this vcrd provides plugin API 1",
    ),
    "vcrd-broken-no-api": (
        "del VCRD_PLUGIN_API\n\n\n@vcrd_core.hookimpl\ndef vcrd_register_weighting():\n    return [Good]\n",
        "not loaded: module vcrd_broken_no_api does not declare VCRD_PLUGIN_API",
    ),
    "vcrd-broken-params": (
        '''
class Sloppy(vcrd_core.WeightingRule):
    """Params without extra="forbid"."""

    name: ClassVar[str] = "sloppy"

    class Params(BaseModel):
        factor: float = 1.0


@vcrd_core.hookimpl
def vcrd_register_weighting():
    return [Good, Sloppy]
''',
        "skipped for weighting: Sloppy.Params must be a pydantic BaseModel with extra='forbid'",
    ),
    "vcrd-broken-subclass": (
        '''
class NotARule:
    """Has a name and Params, but is no WeightingRule."""

    name = "not_a_rule"


@vcrd_core.hookimpl
def vcrd_register_weighting():
    return [Good, NotARule]
''',
        "skipped for weighting: registered <class 'vcrd_broken_subclass.NotARule'> as a weighting rule, but it "
        "is not a subclass of WeightingRule",
    ),
    "vcrd-broken-raises": (
        '''
class Fine(vcrd_core.Divergence):
    """A valid divergence beside a broken weighting hook: registered (plugins are skipped per kind)."""

    name: ClassVar[str] = "fine_divergence"

    def value(self, teacher_logp, student_logp):
        return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)


@vcrd_core.hookimpl
def vcrd_register_divergences():
    return [Fine]


@vcrd_core.hookimpl
def vcrd_register_weighting():
    raise RuntimeError("checkpoint index missing\\nsecond line never shown")
''',
        "skipped for weighting: vcrd_register_weighting() failed: RuntimeError: checkpoint index missing",
    ),
    "vcrd-broken-not-list": (
        "@vcrd_core.hookimpl\ndef vcrd_register_weighting():\n    return Good\n",
        "skipped for weighting: vcrd_register_weighting() must return a list of classes, got the class Good itself",
    ),
    "vcrd-broken-hook-name": (
        "@vcrd_core.hookimpl\ndef vcrd_register_weightings():\n    return [Good]\n",
        "not loaded: unknown hook 'vcrd_register_weightings' in plugin <module 'vcrd_broken_hook_name' from ",
    ),
}


def module_of(dist: str) -> str:
    return dist.replace("-", "_")


def write_distribution(where: Path, dist: str, body: str) -> Path:
    """A real source distribution: pyproject.toml with the entry point, and one module."""
    module = module_of(dist)
    src = where / dist
    src.mkdir()
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools>=77"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "0.2"

            [project.entry-points.vcrd]
            {dist} = "{module}"

            [tool.setuptools]
            py-modules = ["{module}"]
            """
        )
    )
    (src / f"{module}.py").write_text(HEADER.format(suffix=module) + "\n\n" + body)
    return src


@pytest.fixture(scope="module")
def broken_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One throw-away venv layered on .venv (for vcrd and its dependencies), with every broken plugin."""
    tmp = tmp_path_factory.mktemp("broken")
    py = layered_venv(tmp / "venv")
    pip_install(py, *(write_distribution(tmp, dist, body) for dist, (body, _) in BROKEN.items()), cwd=tmp)
    return py


def run_in(py: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VCRD_DEBUG", "VCRD_DISABLE_PLUGINS")}
    env["VCRD_PLUGINS"] = ",".join([BUILT_IN_PLUGINS, *BROKEN])
    return subprocess.run(
        [str(py), "-m", "vcrd_core", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_vcrd_plugins_names_every_broken_plugin_in_one_line_and_lists_the_rest(
    broken_venv: Path, tmp_path: Path
) -> None:
    result = run_in(broken_venv, "plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == len(BROKEN), result.stderr
    for dist, (_, reason) in BROKEN.items():
        (line,) = [ln for ln in lines if f"plugin '{dist}' " in ln]
        assert line.startswith(f"warning: plugin '{dist}' (distribution {dist}) {reason}"), line
    data = json.loads(result.stdout)
    assert {f["distribution"] for f in data["failures"]} == set(BROKEN)

    comps = data["components"]
    providers = {(d["name"], d["distribution"]) for kind in comps for d in comps[kind]}
    assert {("skl", "vcrd"), ("ratio", "vcrd"), ("teacher_likelihood", "vcrd"), ("oracle", "vcrd")} <= providers
    # a broken plugin registers none of that kind (no `good_*` rule), but its other kinds still load
    assert not [name for name, _ in providers if name.startswith("good_") or name in ("sloppy", "not_a_rule")]
    assert ("fine_divergence", "vcrd-broken-raises") in providers


def test_the_table_listing_and_configs_that_do_not_use_them_still_work(broken_venv: Path, tmp_path: Path) -> None:
    table = run_in(broken_venv, "plugins", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "ratio" in table.stdout and len(table.stderr.splitlines()) == len(BROKEN)
    valid = run_in(
        broken_venv, "config", "validate", str(ROOT / "examples" / "configs" / "qwen25_math_table9.yaml"), cwd=tmp_path
    )
    assert valid.returncode == 0, valid.stderr


def test_a_config_naming_a_skipped_component_says_why(broken_venv: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**MINIMAL_CONFIG, "weighting": {"name": "good_vcrd_broken_params"}}))
    result = run_in(broken_venv, "config", "validate", str(config), cwd=tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "Unknown weighting rule 'good_vcrd_broken_params'" in line
    assert "plugin(s) failed to load (plugin 'vcrd-broken-" in line and "run `vcrd plugins`" in line
