"""Tiny real HF architectures for tests (built from a config: nothing is downloaded)."""

from __future__ import annotations

from typing import Any

from transformers import Qwen2Config


def tiny_qwen2_config(vocab_size: int, hidden_size: int = 32, max_positions: int = 64, **overrides: Any) -> Qwen2Config:
    """A 2-layer Qwen2 config (4 query heads, 2 KV heads, MLP twice the hidden size)."""
    settings: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": max_positions,
    }
    return Qwen2Config(**(settings | overrides))
