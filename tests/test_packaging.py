"""`pip install vcrd` works: the distribution built for real (sdist, then a wheel from it, as `python -m build`
does) and installed, not editable, into a fresh venv, where the CLI lists the built-in plugins from the
installed files and validates the example configs.

Offline and honest about dependencies: vcrd itself is installed with ``--no-deps`` into the bare venv
(pip never sees the dev venv's editable vcrd, so it cannot touch it); only then is the dev venv layered
beneath it by a ``.pth`` holding a plain path, which adds its site-packages (torch from the pinned CPU
wheel, pydantic, ...) without running its ``.pth`` files, so the editable finder never loads. The test
then checks that every requirement of the installed vcrd is met by what the venv sees, and that the
fresh vcrd's metadata (and entry points) win over the dev venv's editable dist-info.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Every built-in plugin's entry point and every top-level package, as pyproject.toml declares them ...
BUILT_IN_ENTRY_POINTS = set(PYPROJECT["project"]["entry-points"]["vcrd"])
PACKAGES = {name.split(".")[0] for name in PYPROJECT["tool"]["setuptools"]["packages"]}
#: ... which include at least these.
REQUIRED_ENTRY_POINTS = {"vcrd-divergences", "vcrd-weighting", "vcrd-judges", "vcrd-arithmetic"}
REQUIRED_PACKAGES = {"vcrd_core", "vcrd_divergences", "vcrd_weighting", "vcrd_judges", "vcrd_arithmetic"}
EXAMPLE_CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.yaml"))

#: Run inside the fresh venv: where everything comes from, and whether vcrd's requirements are met.
PROBE = """
import importlib, importlib.metadata as md, json, sys, sysconfig
from packaging.requirements import Requirement
from packaging.version import Version

out = {"purelib": sysconfig.get_paths()["purelib"], "files": {}, "unmet": []}
for name in sys.argv[1].split(","):
    out["files"][name] = importlib.import_module(name).__file__
vcrd = md.distribution("vcrd")
out["dist"] = str(vcrd.locate_file(""))
out["version"] = vcrd.version
out["entry_points"] = [(ep.name, ep.value, str(ep.dist.locate_file(""))) for ep in md.entry_points(group="vcrd")]
for line in vcrd.requires or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # extras (dev) are not needed to run vcrd
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        have = None
    if have is None or not req.specifier.contains(Version(have), prereleases=True):
        out["unmet"].append(f"{req} (found {have})")
import torch
out["torch"] = torch.__version__
print(json.dumps(out))
"""


def copy_working_tree(dest: Path) -> None:
    """The files a ``git clone`` of the working tree would hold (tracked and untracked-but-not-ignored), so
    that no build output or egg-info of the source tree leaks into the build."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:  # not a git checkout (an unpacked sdist): copy without build outputs
        ignore = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*cache")
        shutil.copytree(ROOT, dest, ignore=ignore)
        return
    for rel in filter(None, listed.stdout.split("\0")):
        src = ROOT / rel
        if src.is_file():  # skip files deleted in the working tree
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def pinned(name: str) -> str:
    """The version constraints.txt pins ``name`` to."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.split("#")[0].strip().startswith(f"{name}=="):
            return line.split("==", 1)[1].split("#")[0].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_built_distribution_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip"]
    src, dist = tmp_path / "src", tmp_path / "dist"
    copy_working_tree(src)

    # 1. Build: an sdist, then a wheel from the unpacked sdist (a file missing from the sdist breaks it).
    subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta as b; print(b.build_sdist({str(dist)!r}))"],
        cwd=src,
        check=True,
        capture_output=True,
    )
    (sdist,) = dist.glob("vcrd-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    root = sdist.name.removesuffix(".tar.gz")
    assert f"{root}/plugins/divergences/vcrd_divergences/plugin.py" in names
    assert not [n for n in names if n.startswith((f"{root}/.venv/", f"{root}/build/"))]
    built = subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(sdist)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("vcrd-*.whl")

    # 2. The wheel: the declared packages with every module, no top-level `plugins` or `tests`, the entry points.
    with zipfile.ZipFile(wheel) as zf:
        files = zf.namelist()
        (entry_points,) = [n for n in files if n.endswith(".dist-info/entry_points.txt")]
        entry_text = zf.read(entry_points).decode()
    top_level = {n.split("/")[0] for n in files if not n.split("/")[0].endswith(".dist-info")}
    assert "plugins" not in top_level and "tests" not in top_level
    assert REQUIRED_PACKAGES <= PACKAGES and REQUIRED_ENTRY_POINTS <= BUILT_IN_ENTRY_POINTS
    assert top_level == PACKAGES, top_level
    package_dirs = PYPROJECT["tool"]["setuptools"].get("package-dir", {})
    for package in PACKAGES:  # every module of the source tree, subpackages included (a static list forgets)
        source = src / package_dirs.get(package, package)
        modules = {f"{package}/{f.relative_to(source).as_posix()}" for f in source.rglob("*.py")}
        missing = sorted(modules - set(files))
        assert not missing, f"not in the wheel (list their packages in pyproject.toml [tool.setuptools]): {missing}"
    for package in PACKAGES:
        assert f"{package}/__init__.py" in files
    assert "vcrd_divergences/plugin.py" in files and "vcrd_core/__main__.py" in files
    for name, value in PYPROJECT["project"]["entry-points"]["vcrd"].items():
        assert f"{name} = {value}" in entry_text
        assert f"{value.split(':')[0].replace('.', '/')}.py" in files
    assert "[console_scripts]\nvcrd = vcrd_core.cli:main" in entry_text

    # 3. Install it, not editable, into a bare venv; then layer the dev venv beneath for the dependencies.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    install = subprocess.run(
        [*pip, "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr
    purelib = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # A plain path (not `import site; site.addsitedir(...)`): .venv's editable-vcrd finder stays out.
    (purelib / "_dev_venv_dependencies.pth").write_text(site.getsitepackages()[0] + "\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VCRD_", "PYTHON"))}  # no filters: all plugins

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # cwd outside the repository: `python -m` must not import the source tree's vcrd_core.
        return subprocess.run([*args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)

    # 4. Where everything comes from.
    probe = run(str(py), "-c", PROBE, ",".join(sorted(PACKAGES)))
    assert probe.returncode == 0, probe.stderr
    where = json.loads(probe.stdout)
    assert Path(where["purelib"]) == purelib
    for package, file in where["files"].items():
        assert Path(file).is_relative_to(purelib), (package, file)
        assert not Path(file).is_relative_to(ROOT), (package, file)
    assert Path(where["dist"]) == purelib  # the fresh dist-info, not .venv's editable one
    ours = [ep for ep in where["entry_points"] if ep[0] in BUILT_IN_ENTRY_POINTS]
    assert sorted(ep[0] for ep in ours) == sorted(BUILT_IN_ENTRY_POINTS)  # each once: no duplicate dist
    assert all(Path(ep[2]) == purelib for ep in ours)
    assert where["unmet"] == []  # every requirement of vcrd met by the layered packages
    assert where["torch"].split("+")[0] == pinned("torch")

    # 5. The CLI from the installed files: every built-in, provided by distribution vcrd, nothing failed.
    listed = run(str(py), "-m", "vcrd_core", "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr == ""  # no failure (e.g. "entry point name already used"), no filter warning
    data = json.loads(listed.stdout)
    assert data["failures"] == []
    built_in = {p["name"]: p["distribution"] for p in data["plugins"] if p["name"] in BUILT_IN_ENTRY_POINTS}
    assert built_in == dict.fromkeys(BUILT_IN_ENTRY_POINTS, "vcrd")
    comps = {kind: {d["name"]: d["distribution"] for d in items} for kind, items in data["components"].items()}
    expected = {
        "divergences": ["ab", "fkl", "jsd", "rkl", "skl", "skl_adaptive", "srkl", "srkl_adaptive"],
        "weighting": ["clamp", "constant", "difference", "log_clamp", "ratio", "student_only"],
        "judges": ["mc_value", "oracle", "prm_classifier", "prm_value_head", "teacher_likelihood"],
    }
    for kind, names in expected.items():
        assert {n: comps[kind].get(n) for n in names} == dict.fromkeys(names, "vcrd"), kind
    assert {d["plugin"] for d in data["components"]["judges"] if d["name"] == "oracle"} == {"vcrd-arithmetic"}

    for config in EXAMPLE_CONFIGS:
        valid = run(str(py), "-m", "vcrd_core", "config", "validate", str(config))
        assert valid.returncode == 0, (config.name, valid.stderr)
    assert len(EXAMPLE_CONFIGS) >= 2

    # 6. pip installed the console script too.
    version = run(str(venv / "bin" / "vcrd"), "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"vcrd {where['version']}"
