"""Tiny local models, a printable-ASCII char tokenizer and prompt files for the data/rollout/generator tests.

Nothing is downloaded: the models are random ``Qwen2ForCausalLM``s built from a config, with head_dim 64
(vLLM's CPU attention refuses smaller heads), saved beside their tokenizer as a user's model would be.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

from tests.tiny_models import tiny_qwen2_config

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<bos>' + m['role'] + ':' + m['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<bos>assistant:' }}{% endif %}"
)


def ascii_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """One token per printable ASCII character (and newline), ids 0-2 the special tokens."""
    vocab = {t: i for i, t in enumerate([PAD, BOS, EOS, *CHARS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([PAD, BOS, EOS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS, clean_up_tokenization_spaces=False
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tiny_model(path: Path, seed: int = 0, hidden_size: int = 128, layers: int = 2, **overrides: Any) -> Path:
    """A random tiny Qwen2 (head_dim 64) and the ASCII tokenizer, saved in ``path``."""
    tok = ascii_tokenizer()
    settings: dict[str, Any] = {
        "num_attention_heads": hidden_size // 64,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "num_hidden_layers": layers,
        "max_positions": 512,
        "initializer_range": 0.2,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": False,
    }
    settings |= overrides
    vocab_size = settings.pop("vocab_size", len(tok))
    config = tiny_qwen2_config(vocab_size, hidden_size=hidden_size, **settings)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def arithmetic_prompts(n: int) -> list[dict[str, Any]]:
    """``n`` deterministic short prompts with answers."""
    out = []
    for i in range(n):
        a, b = i % 10, (3 * i + 1) % 10
        out.append({"question": f"{a}+{b}*{(i + 2) % 10}=", "answer": str(a + b * ((i + 2) % 10)), "id": i})
    return out
