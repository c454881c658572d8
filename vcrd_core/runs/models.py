"""The one model loader of every command, and the one pad-id rule.

:func:`load_causal_lm` loads a causal LM from a local directory (no hub: ``local_files_only``) in the config's
dtype and attention implementation; :func:`pad_token_id` is the id every batch is padded with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vcrd_core.config.models import TORCH_DTYPES, ModelSpec
from vcrd_core.errors import ConfigError

#: Weight files besides ``*.safetensors`` that make a directory a loadable model.
WEIGHT_FILES = ("model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def load_causal_lm(spec: ModelSpec, where: str, *, from_scratch: bool = False) -> Any:
    """A causal LM from a local directory (weights required unless ``from_scratch``: then random init from its
    ``config.json``, seeded by the caller); ``where`` names the config path in errors."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = spec.dtype
    kwargs: dict[str, Any] = {}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if from_scratch:
        cfg = AutoConfig.from_pretrained(spec.path, local_files_only=True)
        model = AutoModelForCausalLM.from_config(cfg, **kwargs)
        return model.to(TORCH_DTYPES[dtype]) if dtype != "auto" else model
    root = Path(spec.path)
    if not any((root / f).is_file() for f in WEIGHT_FILES) and not list(root.glob("*.safetensors")):
        raise ConfigError(
            where,
            f"'{spec.path}' has no model weights (model.safetensors); to train it from random initialization "
            "use `vcrd sft --from-scratch`",
        )
    return AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype, local_files_only=True, **kwargs)


def pad_token_id(tokenizer: Any) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS token (padding is never attended
    to, but it must be a real id); a tokenizer with neither is refused with one line."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ConfigError("models.tokenizer", "the tokenizer has neither a pad nor an eos token to pad batches with")
    return int(pad)
