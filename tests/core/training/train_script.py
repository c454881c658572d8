"""A training run in its own process (resume and multi-process tests): ``python train_script.py SPEC.json``.

SPEC: ``config`` (a config dict), ``rows`` (n, seed), ``resume``, ``kill_at_step`` (SIGKILL itself from the
``vcrd_on_step_end`` hook at that step), ``report`` (a JSON file for the process count and final weights).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.core.training.helpers import rows, run_config
from vcrd_core.hookspecs import hookimpl
from vcrd_core.plugins.manager import get_plugin_manager
from vcrd_core.training.run import build_trainer, prepare, run_train


class Killer:
    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def vcrd_on_step_end(self, step: int, metrics: dict) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    config = run_config(spec["config"])
    if spec.get("kill_at_step"):
        get_plugin_manager().register(Killer(spec["kill_at_step"]), name="killer")
    if spec.get("report"):
        prepared = prepare(config, resume=False, rows=rows(*spec["rows"]))
        trainer = build_trainer(config, prepared)
        trainer.train()
        if trainer.accelerator.is_main_process:
            weights = {n: p.detach().double().flatten().tolist() for n, p in trainer.model.named_parameters()
                       if p.requires_grad}  # fmt: skip
            report = {"processes": trainer.accelerator.num_processes, "weights": weights}
            Path(spec["report"]).write_text(json.dumps(report))
        return
    run_train(config, rows=rows(*spec["rows"]), resume=spec.get("resume", False))


if __name__ == "__main__":
    main()
