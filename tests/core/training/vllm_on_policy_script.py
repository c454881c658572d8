"""One on-policy training run with the ``vllm`` generator colocated, in its own process (vLLM spawns processes
and wants an import-safe script): ``python vllm_on_policy_script.py SPEC.json``. SPEC: ``config`` (a config dict)
and ``rows`` (rollout rows)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from tests.core.training.helpers import run_config
    from vcrd_core.training.run import run_train

    spec = json.loads(Path(sys.argv[1]).read_text())
    run_train(run_config(spec["config"]), rows=spec["rows"])
