"""A grid stage for the grid tests: a deterministic metric from the cell's config, in well under a second.

Importable as ``grid_stages`` (the tests put this directory on ``PYTHONPATH``). It appends the cell it ran
to ``$GRID_LOG`` so that a test sees exactly which cells ran, and sleeps ``$GRID_SLEEP`` seconds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from vcrd_core.grid.spec import produces


@produces("accuracy", "loss")
def metric(config: Any, cell_dir: Path) -> dict[str, Any]:
    with open(os.environ["GRID_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{Path(cell_dir).name}\n")
    time.sleep(float(os.environ.get("GRID_SLEEP", "0")))
    bonus = {"ratio": 0.1, "constant": 0.0}.get(config.weighting.name, 0.05)
    return {"accuracy": 0.5 + bonus + 0.01 * config.seed, "loss": 1.0 - bonus}


def undeclared(config: Any, cell_dir: Path) -> dict[str, Any]:
    """:func:`metric` without a declaration of its names (checked once a cell has run)."""
    return metric(config, cell_dir)
