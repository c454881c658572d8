"""Plugin loading from real entry points (``*.dist-info`` on a subprocess's path): broken imports,
incompatible API versions, duplicates across distributions, and the allow/block environment variables."""

from __future__ import annotations

import importlib.metadata
import json
import os
import textwrap
from pathlib import Path

import pytest

from tests.conftest import BUILT_IN_PLUGINS, MINIMAL_CONFIG, run_vcrd
from vcrd_core.plugins.manager import normalize

RULE_MODULE = '''
from typing import ClassVar
from pydantic import BaseModel, ConfigDict
import vcrd_core

VCRD_PLUGIN_API = {api}


class Twin(vcrd_core.WeightingRule):
    """A rule that two distributions both call 'twin'."""

    name: ClassVar[str] = "twin"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def weight(self, r_student, r_teacher):
        return r_student


@vcrd_core.hookimpl
def vcrd_register_weighting():
    return [Twin]
'''


def make_dist(site: Path, dist: str, module: str, source: str, entry: str | None = None) -> None:
    """A real installed distribution: a module plus ``<name>-<version>.dist-info`` with an entry point."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[vcrd]\n{entry or dist} = {module}\n")


def env_with(site: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment with ``site`` on the path and its distributions allowed to load."""
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    dists = [d.name.split("-")[0].replace("_", "-") for d in site.glob("*.dist-info")]
    return {"PYTHONPATH": path, "VCRD_PLUGINS": ",".join([BUILT_IN_PLUGINS, *dists]), **extra}


def test_plugin_that_fails_to_import_is_named_and_others_still_load(tmp_path: Path) -> None:
    make_dist(tmp_path, "broken-plugin", "broken_plugin", "raise ImportError('boom: missing dependency')\n")
    result = run_vcrd("plugins", "--json", env=env_with(tmp_path))
    assert result.returncode == 0  # a listing: the broken plugin is a warning
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines == [
        "warning: plugin 'broken-plugin' (distribution broken-plugin) not loaded: "
        "import of 'broken_plugin' failed: ImportError: boom: missing dependency"
    ]
    data = json.loads(result.stdout)
    assert {d["name"] for d in data["components"]["divergences"]} >= {"skl", "srkl"}
    assert data["failures"][0]["distribution"] == "broken-plugin"


def test_plugin_for_another_api_version_is_refused(tmp_path: Path) -> None:
    make_dist(tmp_path, "future-plugin", "future_plugin", RULE_MODULE.format(api=2))
    result = run_vcrd("plugins", "--json", env=env_with(tmp_path))
    assert result.returncode == 0
    assert "built for vcrd plugin API 2, but this vcrd provides plugin API 1" in result.stderr
    assert "future-plugin" in result.stderr and "Traceback" not in result.stderr
    data = json.loads(result.stdout)
    assert "twin" not in {d["name"] for d in data["components"]["weighting"]}


def test_plugin_without_api_declaration_is_refused(tmp_path: Path) -> None:
    make_dist(tmp_path, "bare-plugin", "bare_plugin", RULE_MODULE.replace("VCRD_PLUGIN_API = {api}\n", ""))
    result = run_vcrd("plugins", "--json", env=env_with(tmp_path))
    assert result.returncode == 0
    assert "does not declare VCRD_PLUGIN_API" in result.stderr


def test_two_distributions_registering_the_same_name_are_refused(tmp_path: Path, write_config) -> None:
    make_dist(tmp_path, "twin-a", "twin_a", RULE_MODULE.format(api=1))
    make_dist(tmp_path, "twin-b", "twin_b", RULE_MODULE.format(api=1))
    result = run_vcrd("plugins", env=env_with(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: Duplicate weighting rule 'twin': registered by distribution twin-a (plugin 'twin-a') and by "
        "distribution twin-b (plugin 'twin-b'); uninstall one or disable it with VCRD_DISABLE_PLUGINS"
    )
    blocked = run_vcrd("plugins", "--json", env=env_with(tmp_path, VCRD_DISABLE_PLUGINS="twin-b"))
    assert blocked.returncode == 0, blocked.stderr
    twin = [d for d in json.loads(blocked.stdout)["components"]["weighting"] if d["name"] == "twin"]
    assert twin == [
        {
            "name": "twin",
            "distribution": "twin-a",
            "version": "0.3",
            "plugin": "twin-a",
            "summary": "A rule that two distributions both call 'twin'.",
        }
    ]


@pytest.mark.parametrize(
    ("env", "expect_divergences", "expect_weighting"),
    [
        ({"VCRD_PLUGINS": "vcrd-divergences"}, True, False),
        ({"VCRD_DISABLE_PLUGINS": "vcrd-divergences"}, False, True),
        ({"VCRD_DISABLE_PLUGINS": "vcrd"}, False, False),  # the distribution: every built-in
        ({"VCRD_PLUGINS": ""}, False, False),
    ],
)
def test_allow_and_block_lists_select_plugins(
    env: dict[str, str], expect_divergences: bool, expect_weighting: bool
) -> None:
    result = run_vcrd("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert bool(data["components"]["divergences"]) is expect_divergences
    assert bool(data["components"]["weighting"]) is expect_weighting


def test_plugins_json_lists_built_in_components_with_their_distributions() -> None:
    result = run_vcrd("plugins", "--json")
    assert result.returncode == 0, result.stderr
    comps = json.loads(result.stdout)["components"]
    div = {d["name"]: (d["plugin"], d["distribution"]) for d in comps["divergences"]}
    rules = {d["name"]: (d["plugin"], d["distribution"]) for d in comps["weighting"]}
    names = ["ab", "fkl", "jsd", "rkl", "skl", "skl_adaptive", "srkl", "srkl_adaptive"]
    assert div == dict.fromkeys(names, ("vcrd-divergences", "vcrd"))
    assert rules == dict.fromkeys(
        ["clamp", "constant", "difference", "log_clamp", "ratio", "student_only"], ("vcrd-weighting", "vcrd")
    )
    assert all(d["summary"] for d in comps["divergences"] + comps["weighting"])


def test_object_entry_point_from_a_module_for_another_api_is_refused(tmp_path: Path) -> None:
    source = RULE_MODULE.format(api=99) + "\n\nclass _Holder:\n    pass\n\nINSTANCE = _Holder()\n"
    source += "INSTANCE.vcrd_register_weighting = vcrd_register_weighting\n"
    (tmp_path / "objplug.py").write_text(textwrap.dedent(source))
    info = tmp_path / "objplug-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: objplug\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[vcrd]\nobjplug = objplug:INSTANCE\n")
    result = run_vcrd("plugins", "--json", env=env_with(tmp_path))
    assert result.returncode == 0
    assert "plugin 'objplug' (distribution objplug) not loaded: built for vcrd plugin API 99" in result.stderr
    assert "twin" not in {d["name"] for d in json.loads(result.stdout)["components"]["weighting"]}


def test_unknown_name_mentions_plugins_that_failed_to_load(tmp_path: Path, write_config) -> None:
    make_dist(tmp_path, "future-plugin", "future_plugin", RULE_MODULE.format(api=2))
    config = write_config({**MINIMAL_CONFIG, "weighting": {"name": "twin"}})
    result = run_vcrd("config", "validate", str(config), env=env_with(tmp_path))
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "Unknown weighting rule 'twin'" in line
    assert "1 plugin(s) failed to load (plugin 'future-plugin' (distribution future-plugin) not loaded" in line


def test_plugin_filters_normalise_distribution_names() -> None:
    result = run_vcrd("plugins", "--json", env={"VCRD_PLUGINS": "VCRD_Divergences"})
    assert result.returncode == 0, result.stderr
    comps = json.loads(result.stdout)["components"]
    assert comps["divergences"] and not comps["weighting"]


def installed_names() -> str:
    """The entry-point and distribution names of group ``vcrd`` as the warnings list them."""
    eps = importlib.metadata.entry_points(group="vcrd")
    names = {normalize(n) for ep in eps for n in (ep.name, ep.dist.metadata["Name"] if ep.dist else ep.name)}
    return ", ".join(sorted(names))


@pytest.mark.parametrize("env_name", ["VCRD_PLUGINS", "VCRD_DISABLE_PLUGINS"])
def test_a_filter_name_that_matches_nothing_is_named_with_what_is_available(env_name: str) -> None:
    result = run_vcrd("plugins", "--json", env={env_name: "vcrd-divergence,nonexistent"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"warning: {env_name} names 'nonexistent', 'vcrd-divergence' (did you mean 'vcrd-divergences'?), which "
        f"match no installed plugin (entry-point or distribution names available: {installed_names()})"
    ]
    assert "vcrd, vcrd-arithmetic, vcrd-divergences" in installed_names()
    assert json.loads(result.stdout)["filter_warnings"] == [result.stderr.splitlines()[0].removeprefix("warning: ")]


def test_an_allow_list_of_typos_says_so_instead_of_listing_nothing_silently() -> None:
    result = run_vcrd("plugins", env={"VCRD_PLUGINS": "nonexistent"})
    assert result.returncode == 0
    assert result.stderr.strip() == (
        "warning: VCRD_PLUGINS names 'nonexistent', which matches no installed plugin (entry-point or "
        f"distribution names available: {installed_names()})"
    )


def test_unknown_name_mentions_a_filter_name_that_matches_nothing(write_config) -> None:
    config = write_config({**MINIMAL_CONFIG, "weighting": {"name": "ratio"}})
    result = run_vcrd("config", "validate", str(config), env={"VCRD_PLUGINS": "vcrd-weighting,vcrd-judge"})
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "Unknown judge 'teacher_likelihood'" in line
    assert "VCRD_PLUGINS names 'vcrd-judge' (did you mean 'vcrd-judges'?), which matches no installed plugin" in line
