"""Loading a process reward model from a local HF-format directory, without ``trust_remote_code``.

A PRM checkpoint is a causal-LM body (keys ``model.*``, an optional ``lm_head.*`` that is never used) plus a
small head: Skywork-o1-Open-PRM's ``v_head.summary.{weight,bias}`` or Qwen2.5-Math-PRM's
``score.0.*``/``score.2.*``. Its ``config.json`` may name a reward-model class that only exists as remote
code (``"Qwen2ForPrmModel"``, ``"Qwen2ForProcessRewardModel"``); the body class is found from
``model_type`` instead (``qwen2`` → ``Qwen2Model``), so no code from the checkpoint ever runs.

Checks that need no weights (directory, config, head tensors, tokenizer) run before any weight is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vcrd_core import VcrdError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass
class PrmCheckpoint:
    """A checkpoint directory whose layout has been checked (nothing heavy loaded yet)."""

    path: Path
    config: dict[str, Any]
    files_by_key: dict[str, Path]  # tensor name -> safetensors file holding it


def inspect_checkpoint(path: str | Path, head_keys: Sequence[str], *, who: str, kind: str) -> PrmCheckpoint:
    """Check that ``path`` is a PRM checkpoint with ``head_keys``; read only ``config.json`` and the
    safetensors headers. ``kind`` names the expected layout in the message ("a value-head PRM")."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise VcrdError(f"{who}: checkpoint directory {root} does not exist (params.path must be a local HF directory)")
    config_file = root / "config.json"
    if not config_file.is_file():
        raise VcrdError(f"{who}: {root} has no config.json; params.path must be an HF-format model directory")
    config = json.loads(config_file.read_text())
    files_by_key = _safetensors_keys(root, who=who)
    for key in head_keys:
        if key not in files_by_key:
            raise VcrdError(f"{who}: checkpoint at {root} has no {key}; is it {kind}?")
    return PrmCheckpoint(root, config, files_by_key)


def _safetensors_keys(root: Path, *, who: str) -> dict[str, Path]:
    from safetensors import safe_open

    index = root / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return {key: root / name for key, name in weight_map.items()}
    single = root / SINGLE_FILE
    if not single.is_file():
        raise VcrdError(
            f"{who}: {root} has neither {SINGLE_FILE} nor {INDEX_FILE}; only safetensors checkpoints are supported"
        )
    with safe_open(str(single), framework="pt") as handle:
        return dict.fromkeys(handle.keys(), single)


def read_tensors(checkpoint: PrmCheckpoint, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """The named tensors only (head weights), read from whichever shard holds each."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for key in keys:
        by_file.setdefault(checkpoint.files_by_key[key], []).append(key)
    for file, names in by_file.items():
        with safe_open(str(file), framework="pt") as handle:
            for name in names:
                out[name] = handle.get_tensor(name)
    return out


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Loading a body from a PRM checkpoint reports the head tensors as "unexpected"; that is by design."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def body_class(checkpoint: PrmCheckpoint, *, who: str) -> tuple[type, Any]:
    """The HF base-model class and config for the checkpoint's ``model_type`` (never its remote code)."""
    from transformers import CONFIG_MAPPING, MODEL_MAPPING

    model_type = checkpoint.config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise VcrdError(
            f"{who}: checkpoint at {checkpoint.path} has model_type {model_type!r}, which this transformers does not "
            "know; vcrd loads PRMs without trust_remote_code, from a body transformers provides (e.g. qwen2, llama)"
        )
    config_dict = {k: v for k, v in checkpoint.config.items() if k not in ("auto_map", "architectures")}
    config = CONFIG_MAPPING[model_type].from_dict(config_dict)
    try:
        cls = MODEL_MAPPING[type(config)]
    except KeyError:
        raise VcrdError(f"{who}: transformers has no base model for model_type {model_type!r}") from None
    return cls, config


def load_body(
    checkpoint: PrmCheckpoint, *, dtype: torch.dtype, device: torch.device | str, attn_implementation: str, who: str
) -> torch.nn.Module:
    """The transformer body (no LM head) with every weight from the checkpoint; a missing body weight is
    refused rather than left randomly initialised."""
    cls, config = body_class(checkpoint, who=who)
    with _quiet_transformers():
        body, info = cls.from_pretrained(
            str(checkpoint.path),
            config=config,
            dtype=dtype,
            attn_implementation=attn_implementation,
            output_loading_info=True,
            local_files_only=True,
        )
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        raise VcrdError(
            f"{who}: checkpoint at {checkpoint.path} lacks {len(missing)} body weight(s) of {cls.__name__} "
            f"(first: {missing[0]}); is it a complete model directory?"
        )
    return body.to(device).eval()


def load_tokenizer(checkpoint: PrmCheckpoint, *, who: str) -> Any:
    """The judge's own tokenizer, from the checkpoint directory."""
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(str(checkpoint.path), trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VcrdError(f"{who}: no usable tokenizer in {checkpoint.path} ({first})") from None


def check_vocabulary(policy_tokenizer: Any, judge_tokenizer: Any, *, who: str, path: Path) -> None:
    """Refuse unless the policy vocabulary is a subset of the judge's with equal ids.

    The judge reads the policy's response ids as they are, so a token must mean the same in both; the judge
    may have extra tokens (Qwen2.5-Math-PRM adds ``<extra_0>``). Cross-tokenizer distillation is out of scope.
    """
    policy = policy_tokenizer.get_vocab()
    judge = judge_tokenizer.get_vocab()
    bad = [(idx, tok) for tok, idx in policy.items() if judge.get(tok) != idx]
    if not bad:
        return
    idx, tok = min(bad)
    where = "is missing from" if tok not in judge else f"has id {judge[tok]} in"
    raise VcrdError(
        f"{who}: policy token {tok!r} (id {idx}) {where} the judge tokenizer at {path} ({len(bad)} token(s) differ); "
        "the policy vocabulary must be a subset of the judge's with equal ids (cross-tokenizer judging is unsupported)"
    )
