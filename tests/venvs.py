"""Throw-away venvs layered on the dev .venv, for installing distributions with pip for real."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path


def layered_venv(venv: Path) -> Path:
    """Create a venv at ``venv`` that also sees .venv (vcrd and its dependencies); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    target_site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # `site.addsitedir` also runs .venv's .pth files: the editable vcrd is importable there.
    Path(target_site, "_layer_on_dev_venv.pth").write_text(
        f"import site; site.addsitedir({site.getsitepackages()[0]!r})\n"
    )
    return py


def pip_install(py: Path, *sources: Path, cwd: Path | None = None) -> None:
    """Install ``sources`` into ``py``'s venv with pip (no dependencies, no build isolation)."""
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-build-isolation"]
        + [str(s) for s in sources],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    assert install.returncode == 0, install.stderr
