"""A rollout as the trainer and the scorer read it (prompt + response token ids, optional per-token weights)
and right-padded batches of them: the masks :meth:`vcrd_core.DecisionPoints.from_masks` reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class RolloutSequence:
    """One rollout: its prompt and response token ids, and (offline) one weight per response token."""

    prompt: list[int]
    response: list[int]
    weights: list[float] | None = None


def pad_sequences(seqs: Sequence[RolloutSequence], pad_token_id: int, key: str = "") -> dict[str, torch.Tensor]:
    """Right-padded ``[B, L]`` tensors of prompt + response: ``input_ids``, ``attention_mask``, ``response_mask``
    (1 on the response tokens, EOS included), ``prompt_lengths`` ``[B]``, and ``weights`` at the response tokens
    when every sequence has them; every key prefixed with ``key``."""
    length = max(len(s.prompt) + len(s.response) for s in seqs)
    n = len(seqs)
    ids = torch.full((n, length), pad_token_id, dtype=torch.long)
    attention = torch.zeros(n, length, dtype=torch.long)
    response = torch.zeros(n, length, dtype=torch.long)
    weights = torch.zeros(n, length, dtype=torch.float32) if all(s.weights is not None for s in seqs) else None
    for b, s in enumerate(seqs):
        p, r = len(s.prompt), len(s.response)
        ids[b, : p + r] = torch.tensor(s.prompt + s.response, dtype=torch.long)
        attention[b, : p + r] = 1
        response[b, p : p + r] = 1
        if weights is not None and r:
            weights[b, p : p + r] = torch.tensor(s.weights, dtype=torch.float32)
    out = {
        f"{key}input_ids": ids,
        f"{key}attention_mask": attention,
        f"{key}response_mask": response,
        f"{key}prompt_lengths": torch.tensor([len(s.prompt) for s in seqs], dtype=torch.long),
    }
    if weights is not None:
        out[f"{key}weights"] = weights
    return out
