"""``hf``: rollouts with transformers ``generate`` (batched, left padding, seeded), for machines without vLLM."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from vcrd_core.config.models import TORCH_DTYPES
from vcrd_core.errors import VcrdError
from vcrd_core.rollouts.generator import Generator, GeneratorContext, Sample, Sampling, trim_response


class _RealVocabulary:
    """A logits processor that never lets ids at or above the tokenizer's real vocabulary be sampled
    (a padded lm_head's extra rows, SPEC decision 6)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[-1] > self.vocab_size:
            scores[:, self.vocab_size :] = float("-inf")
        return scores


class HFGenerator(Generator):
    """transformers ``generate``: batched with left padding, seeded per call; no extra install needed."""

    name = "hf"
    reads_live_model = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        batch_size: int = Field(16, gt=0, description="Prompts per generate call.")
        device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
        attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None

    def load(self, context: GeneratorContext) -> None:
        from transformers import AutoModelForCausalLM

        super().load(context)
        device = self.params.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        kwargs: dict[str, Any] = {"local_files_only": True}
        if context.dtype != "auto":
            kwargs["dtype"] = TORCH_DTYPES[context.dtype]
        if self.params.attn_implementation:
            kwargs["attn_implementation"] = self.params.attn_implementation
        live = context.extra.get("model")
        if live is not None:  # a model already in memory (evaluation during training): used as it is
            self.model = live
            self.device = next(live.parameters()).device
        else:
            try:
                self.model = AutoModelForCausalLM.from_pretrained(context.model_path, **kwargs).to(device).eval()
            except (OSError, ValueError) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise VcrdError(f"generator 'hf': cannot load the model '{context.model_path}': {reason}") from None
            self.device = torch.device(device)
        tok = context.tokenizer
        gen_eos = self.model.generation_config.eos_token_id
        eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        if not eos:
            raise VcrdError(f"generator 'hf': the tokenizer of '{context.tokenizer_path}' has no EOS token")
        self.eos_ids = eos
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(eos)

    def close(self) -> None:
        self.model = None

    def generate(self, prompt_token_ids: list[list[int]], sampling: Sampling) -> list[list[Sample]]:
        # The seed is this call's own: the caller's random state (a training run's dropout, shuffling, online
        # proposals) is restored afterwards, so generating inside a training step does not reset it.
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(sampling.seed)
            return self._generate(prompt_token_ids, sampling)

    def _generate(self, prompt_token_ids: list[list[int]], sampling: Sampling) -> list[list[Sample]]:
        from transformers import LogitsProcessorList

        out: list[list[Sample]] = []
        tok = self.context.tokenizer
        extra: dict[str, Any] = {}
        if sampling.stop:
            extra = {"stop_strings": list(sampling.stop), "tokenizer": tok}
        if sampling.greedy:
            extra |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        else:
            extra |= {
                "do_sample": True,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "top_k": sampling.top_k or None,
            }
        for start in range(0, len(prompt_token_ids), self.params.batch_size):
            batch = prompt_token_ids[start : start + self.params.batch_size]
            width = max(len(p) for p in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, p in enumerate(batch):
                ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[i, width - len(p) :] = 1
            with torch.no_grad():
                generated = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=sampling.max_new_tokens,
                    num_return_sequences=sampling.n,
                    pad_token_id=self.pad_id,
                    eos_token_id=sorted(self.eos_ids),
                    logits_processor=LogitsProcessorList([_RealVocabulary(self.context.vocab_size)]),
                    **extra,
                )
            rows = generated[:, width:].tolist()
            for i in range(len(batch)):
                samples = []
                for j in range(sampling.n):
                    token_ids, reason = trim_response(
                        rows[i * sampling.n + j],
                        eos_ids=self.eos_ids,
                        max_new_tokens=sampling.max_new_tokens,
                        decode=lambda t: tok.decode(t, skip_special_tokens=True),
                        stop=sampling.stop,
                    )
                    samples.append(Sample(token_ids, tok.decode(token_ids, skip_special_tokens=True), reason))
                out.append(samples)
        return out
