"""Tree scoring: a judge scores the actual and the alternative token of every decision point in one pass.

Public API for any process-reward-model judge, built-in or third-party: :func:`tree_hidden_states` runs a
transformer body once on a batch and returns, for every decision point selected by a mask (pass
``request.points.mask``), the hidden states where the rollout's token and the alternative are scored; a
PRM applies its own head to ``TreeHidden.actual`` / ``TreeHidden.alt``. :func:`build_tree` exposes the
extended batch (ids, logical positions, 4D float mask) for bodies that need to be called differently, and
:func:`check_context` the context-length rule. ``vcrd_judges.prm`` is a complete user of it.

A process reward model reads ``r(c, a)`` from its hidden state at the token ``a`` appended to the prefix
``c = y_{<t}`` (or at the last token of a ``branch_suffix`` appended after ``a``). Scoring every decision
point of a sequence one prefix at a time costs ``O(T)`` forward passes of up to ``T`` tokens each. The tree
trick (DESIGN.md §2.4) appends, after the sequence ``y``, one short *branch* per selected position ``t``:

* ``(alt_t, *suffix)`` — the alternative proposal, at the logical positions ``pos(t), pos(t)+1, ...``;
* ``(*suffix)`` after the actual token, when a suffix is given — it continues ``y_{\\le t}`` at
  ``pos(t)+1, ...``.

Every token gets an explicit logical position id and one 4D additive float mask ``M`` (``0`` where a query
may attend, ``finfo(dtype).min`` elsewhere):

.. math::

    M_{ij} = 0 \\iff \\begin{cases}
        j \\le i,\\ j \\text{ real} & i, j \\text{ in the sequence (causal, padding skipped)}\\\\
        j < t_i,\\ j \\text{ real} & i \\text{ in the alternative branch of } t_i,\\ j \\text{ in the sequence}\\\\
        j \\le t_i,\\ j \\text{ real} & i \\text{ in the actual-token branch of } t_i,\\ j \\text{ in the sequence}\\\\
        g_j = g_i,\\ k_j \\le k_i & i, j \\text{ in branches (same branch } g \\text{, offsets } k)
    \\end{cases}

so a branch token sees exactly what it would see if ``y_{<t}, a, *suffix`` were scored alone: the
transformer output is the same (up to float rounding) as scoring each prefix separately.

Why the actual-token branch holds only the suffix: in a causal transformer the key/value states of ``y_t``
at position ``t`` depend only on ``y_{\\le t}``, so the sequence already contains exactly the states a
``(y_t, *suffix)`` branch would recompute; reading them saves one token per branch. Without a suffix the
actual score is read at ``t`` itself.

Why float masks: with ``eager`` attention transformers 5.x *adds* the 4D mask to the attention scores, so a
boolean mask is silently wrong there (``sdpa`` accepts both). With left padding the position ids stay
logical (the first real token is position 0). The judge's context limit is checked against the largest
position id; longer inputs are refused, never truncated.

``positions_per_pass`` bounds memory for long responses: the sequence is run once with a KV cache, then the
branches are scored in blocks of at most that many positions per row, each block one pass against the
cached sequence (the cache is cropped back after every block).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vcrd_core.errors import VcrdError

__all__ = ["TreeBatch", "TreeHidden", "build_tree", "check_context", "logical_positions", "tree_hidden_states"]


@dataclass
class TreeBatch:
    """One extended batch: the sequences followed by their branches.

    ``rows``/``positions`` ``[N]`` name the scored decision points ``(b, t)``; ``actual_at``/``alt_at`` ``[N]``
    are the indices along the extended length where ``r(y_{<t}, y_t)`` and ``r(y_{<t}, alt_t)`` are read.
    ``seq_len`` is the length of the original part (``L``); branches start there.
    """

    input_ids: torch.Tensor  # [B, L']
    position_ids: torch.Tensor  # [B, L']
    attention_mask: torch.Tensor  # [B, 1, L', L'] additive float mask
    rows: torch.Tensor  # [N]
    positions: torch.Tensor  # [N]
    actual_at: torch.Tensor  # [N]
    alt_at: torch.Tensor  # [N]
    seq_len: int
    max_position: int


@dataclass
class TreeHidden:
    """Hidden states at the read indices of every scored decision point ``(rows[n], positions[n])``."""

    rows: torch.Tensor  # [N]
    positions: torch.Tensor  # [N]
    actual: torch.Tensor  # [N, H]
    alt: torch.Tensor  # [N, H]


def logical_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens: ``pos_j = (Σ_{i \\le j} m_i) - 1``, 0 on leading padding.

    This is what a model sees when the same sequence is scored alone without padding, for left and right
    padding alike.
    """
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).clamp_min(0)


def _suffix_tensor(branch_suffix: Sequence[int] | torch.Tensor | None, device: torch.device) -> torch.Tensor:
    if branch_suffix is None:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.as_tensor(branch_suffix, dtype=torch.long, device=device).reshape(-1)


def _check_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, alt_ids: torch.Tensor, score_mask: torch.Tensor
) -> None:
    if input_ids.dim() != 2:
        raise VcrdError(f"tree scoring: input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    for what, tensor in (("attention_mask", attention_mask), ("alt_ids", alt_ids), ("score_mask", score_mask)):
        if tuple(tensor.shape) != tuple(input_ids.shape):
            raise VcrdError(
                f"tree scoring: {what} has shape {tuple(tensor.shape)}, expected {tuple(input_ids.shape)} as input_ids"
            )
    outside = score_mask.bool() & ~attention_mask.bool()
    if bool(outside.any()):
        b, t = (int(v) for v in outside.nonzero()[0])
        raise VcrdError(
            f"tree scoring: score_mask selects padding position (row {b}, position {t}); "
            "only positions with attention_mask == 1 can be scored"
        )


def build_tree(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    alt_ids: torch.Tensor,
    score_mask: torch.Tensor | None = None,
    branch_suffix: Sequence[int] | torch.Tensor | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    pad_id: int = 0,
    with_sequence: bool = True,
) -> TreeBatch:
    """Build the extended batch for :func:`tree_hidden_states` (see the module docstring for the mask).

    ``input_ids``, ``attention_mask``, ``alt_ids`` and ``score_mask`` are ``[B, L]``, left or right padded;
    ``score_mask`` defaults to every real position. ``with_sequence=False`` leaves the sequence out of the
    query part (its keys are expected from a KV cache of length ``L``): the returned ids, positions and mask
    rows then cover the branches only, the mask columns still cover ``L`` cached keys plus the branches, and
    ``actual_at`` for the no-suffix case points into the sequence (``< L``).
    """
    device = input_ids.device
    attention_mask = attention_mask.to(device)
    score_mask = attention_mask.bool() if score_mask is None else score_mask.to(device).bool()
    alt_ids = alt_ids.to(device)
    _check_inputs(input_ids, attention_mask, alt_ids, score_mask)

    bsz, seq_len = input_ids.shape
    real = attention_mask.bool()
    pos = logical_positions(attention_mask)
    suffix = _suffix_tensor(branch_suffix, device)
    n_suffix = int(suffix.numel())
    alt_len = 1 + n_suffix  # (alt_t, *suffix)
    act_len = n_suffix  # (*suffix) after y_t, empty without a suffix

    counts = score_mask.sum(-1)  # [B]
    n_max = int(counts.max()) if bsz else 0
    # slot s of row b holds the s-th selected position of that row (vectorised ranks, no loop over t)
    rows, positions = score_mask.nonzero(as_tuple=True)
    ranks = score_mask.long().cumsum(-1)[rows, positions] - 1
    slot_t = torch.zeros(bsz, n_max, dtype=torch.long, device=device)
    slot_used = torch.zeros(bsz, n_max, dtype=torch.bool, device=device)
    slot_t[rows, ranks] = positions
    slot_used[rows, ranks] = True

    # --- branch tokens: [B, n_max, alt_len] then [B, n_max, act_len] ---
    k_alt = torch.arange(alt_len, device=device)
    alt_tok = torch.empty(bsz, n_max, alt_len, dtype=torch.long, device=device)
    alt_tok[..., 0] = alt_ids.gather(1, slot_t)
    if n_suffix:
        alt_tok[..., 1:] = suffix
    t_pos = pos.gather(1, slot_t)  # logical position of t
    alt_pos = t_pos[..., None] + k_alt  # alt_t sits at pos(t)
    k_act = torch.arange(1, act_len + 1, device=device)
    act_tok = suffix.expand(bsz, n_max, act_len)
    act_pos = t_pos[..., None] + k_act  # the suffix continues after y_t

    # per branch token: the last sequence key it may see, its branch group and offset
    alt_limit = (slot_t - 1)[..., None].expand(bsz, n_max, alt_len)
    act_limit = slot_t[..., None].expand(bsz, n_max, act_len)
    slot_ids = torch.arange(n_max, device=device)
    alt_group = slot_ids[None, :, None].expand(bsz, n_max, alt_len)
    act_group = (n_max + slot_ids)[None, :, None].expand(bsz, n_max, act_len)
    alt_used = slot_used[..., None].expand(bsz, n_max, alt_len)
    act_used = slot_used[..., None].expand(bsz, n_max, act_len)

    br_tok = torch.cat([alt_tok.reshape(bsz, -1), act_tok.reshape(bsz, -1)], dim=1)
    br_pos = torch.cat([alt_pos.reshape(bsz, -1), act_pos.reshape(bsz, -1)], dim=1)
    br_limit = torch.cat([alt_limit.reshape(bsz, -1), act_limit.reshape(bsz, -1)], dim=1)
    br_group = torch.cat([alt_group.reshape(bsz, -1), act_group.reshape(bsz, -1)], dim=1)
    br_off = torch.cat(
        [k_alt.expand(bsz, n_max, alt_len).reshape(bsz, -1), k_act.expand(bsz, n_max, act_len).reshape(bsz, -1)], 1
    )
    br_used = torch.cat([alt_used.reshape(bsz, -1), act_used.reshape(bsz, -1)], dim=1)
    br_tok = torch.where(br_used, br_tok, torch.full_like(br_tok, pad_id))
    br_pos = torch.where(br_used, br_pos, torch.zeros_like(br_pos))

    # --- allowed[b, i, j] over queries i (sequence then branches) and keys j (sequence then branches) ---
    seq_idx = torch.arange(seq_len, device=device)
    if with_sequence:
        q_limit = torch.cat([seq_idx.expand(bsz, seq_len), br_limit], dim=1)
        q_group = torch.cat([torch.full((bsz, seq_len), -1, device=device, dtype=torch.long), br_group], dim=1)
        q_off = torch.cat([torch.zeros(bsz, seq_len, dtype=torch.long, device=device), br_off], dim=1)
        q_tok = torch.cat([input_ids, br_tok], dim=1)
        q_pos = torch.cat([torch.where(real, pos, torch.zeros_like(pos)), br_pos], dim=1)
        q_offset = 0
    else:
        q_limit, q_group, q_off, q_tok, q_pos = br_limit, br_group, br_off, br_tok, br_pos
        q_offset = seq_len
    sees_seq = (seq_idx[None, None, :] <= q_limit[:, :, None]) & real[:, None, :]  # [B, Q, L]
    sees_br = (br_group[:, None, :] == q_group[:, :, None]) & (br_off[:, None, :] <= q_off[:, :, None])  # [B, Q, n_br]
    allowed = torch.cat([sees_seq, sees_br], dim=2)
    # every query sees at least itself (padding queries and unused slots would otherwise have an empty row)
    q_count = allowed.shape[1]
    diag = torch.arange(q_count, device=device)
    allowed[:, diag, diag + q_offset] = True
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)

    # --- where to read ---
    # read indices along the key axis (sequence first, then branches); with_sequence=False callers subtract L
    read_alt = seq_len + (slot_ids * alt_len + alt_len - 1)[None, :].expand(bsz, n_max)
    if n_suffix:
        read_act = seq_len + n_max * alt_len + (slot_ids * act_len + act_len - 1)[None, :].expand(bsz, n_max)
    else:
        read_act = slot_t
    used_rows, used_slots = slot_used.nonzero(as_tuple=True)
    real_max = int(pos[real].max()) if bool(real.any()) else 0
    br_max = int(br_pos[br_used].max()) if bool(br_used.any()) else 0
    return TreeBatch(
        input_ids=q_tok,
        position_ids=q_pos,
        attention_mask=mask[:, None],
        rows=used_rows,
        positions=slot_t[used_rows, used_slots],
        actual_at=read_act[used_rows, used_slots],
        alt_at=read_alt[used_rows, used_slots],
        seq_len=seq_len,
        max_position=max(real_max, br_max),
    )


def check_context(max_position: int, limit: int | None, *, who: str = "judge") -> None:
    """Refuse (never truncate) an input whose largest logical position id does not fit ``limit`` positions."""
    if limit is not None and max_position >= limit:
        raise VcrdError(
            f"{who}: input needs position ids up to {max_position} (prompt + response + branch), but the model's "
            f"context is {limit} positions (max_position_embeddings); shorten the rollouts to at most {limit} tokens "
            "or use a judge with a longer context (inputs are never truncated)"
        )


def _last_hidden(output: Any) -> torch.Tensor:
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        hidden = output[0]
    return hidden


def tree_hidden_states(
    body: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    alt_ids: torch.Tensor,
    score_mask: torch.Tensor | None = None,
    branch_suffix: Sequence[int] | torch.Tensor | None = None,
    *,
    max_positions: int | None = None,
    positions_per_pass: int | None = None,
    pad_id: int = 0,
    who: str = "judge",
) -> TreeHidden:
    """Run a transformer body (an HF base model returning ``last_hidden_state``) on the tree of ``input_ids``.

    Returns the hidden states where ``r(y_{<t}, y_t)`` and ``r(y_{<t}, alt_t)`` are read, for every position
    selected by ``score_mask`` (default: every real position). One forward pass in total, or, with
    ``positions_per_pass``, one pass over the sequence (KV cache) plus one per block of positions.
    """
    layer_types = getattr(getattr(body, "config", None), "layer_types", None) or ()
    if any("sliding" in str(kind) for kind in layer_types):
        raise VcrdError(
            f"{who}: the model uses sliding-window attention layers, which tree masks do not reproduce; "
            "use a judge with full attention (e.g. Qwen2 with use_sliding_window: false)"
        )
    dtype = next(body.parameters()).dtype
    device = next(body.parameters()).device
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device)
    alt_ids = alt_ids.to(device)
    score_mask = attention_mask.bool() if score_mask is None else score_mask.to(device).bool()
    counts = score_mask.sum(-1)
    n_max = int(counts.max()) if counts.numel() else 0
    if positions_per_pass is None or n_max <= positions_per_pass:
        tree = build_tree(input_ids, attention_mask, alt_ids, score_mask, branch_suffix, dtype=dtype, pad_id=pad_id)
        check_context(tree.max_position, max_positions, who=who)
        out = body(
            input_ids=tree.input_ids,
            attention_mask=tree.attention_mask,
            position_ids=tree.position_ids,
            use_cache=False,
        )
        hidden = _last_hidden(out)
        return TreeHidden(
            rows=tree.rows,
            positions=tree.positions,
            actual=hidden[tree.rows, tree.actual_at],
            alt=hidden[tree.rows, tree.alt_at],
        )
    if positions_per_pass < 1:
        raise VcrdError(f"{who}: positions_per_pass must be >= 1 (got {positions_per_pass})")
    return _blocked_hidden_states(
        body, input_ids, attention_mask, alt_ids, score_mask, branch_suffix,
        max_positions=max_positions, positions_per_pass=positions_per_pass, pad_id=pad_id, who=who, dtype=dtype,
    )  # fmt: skip


def _blocked_hidden_states(
    body: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    alt_ids: torch.Tensor,
    score_mask: torch.Tensor,
    branch_suffix: Sequence[int] | torch.Tensor | None,
    *,
    max_positions: int | None,
    positions_per_pass: int,
    pad_id: int,
    who: str,
    dtype: torch.dtype,
) -> TreeHidden:
    from transformers import DynamicCache

    seq_len = input_ids.shape[1]
    real = attention_mask.bool()
    pos = logical_positions(attention_mask)
    n_suffix = int(_suffix_tensor(branch_suffix, input_ids.device).numel())
    # the largest position id of the whole tree, checked before any pass runs
    last_real = torch.where(real, pos, torch.zeros_like(pos)).amax()
    longest_branch = torch.where(score_mask, pos, torch.full_like(pos, -1)).amax() + max(n_suffix, 0)
    check_context(int(torch.maximum(last_real, longest_branch)), max_positions, who=who)

    # the sequence once, keeping its keys and values
    seq_mask = torch.zeros(input_ids.shape[0], 1, seq_len, seq_len, dtype=dtype, device=input_ids.device)
    idx = torch.arange(seq_len, device=input_ids.device)
    allowed = (idx[None, :] <= idx[:, None])[None] & real[:, None, :]
    allowed[:, idx, idx] = True
    seq_mask[:, 0].masked_fill_(~allowed, torch.finfo(dtype).min)
    cache = DynamicCache(config=getattr(body, "config", None))
    out = body(
        input_ids=input_ids,
        attention_mask=seq_mask,
        position_ids=torch.where(real, pos, torch.zeros_like(pos)),
        past_key_values=cache,
        use_cache=True,
    )
    seq_hidden = _last_hidden(out)
    cache = out.past_key_values

    ranks = score_mask.long().cumsum(-1) - 1  # rank of each selected position within its row
    rows_all, pos_all, act_all, alt_all = [], [], [], []
    n_max = int(score_mask.sum(-1).max())
    for start in range(0, n_max, positions_per_pass):  # one pass per block of positions, never per position
        block = score_mask & (ranks >= start) & (ranks < start + positions_per_pass)
        tree = build_tree(
            input_ids, attention_mask, alt_ids, block, branch_suffix, dtype=dtype, pad_id=pad_id, with_sequence=False
        )
        out = body(
            input_ids=tree.input_ids,
            attention_mask=tree.attention_mask,
            position_ids=tree.position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        hidden = _last_hidden(out)
        cache.crop(-tree.input_ids.shape[1])  # drop this block's branches, keep the sequence
        rows_all.append(tree.rows)
        pos_all.append(tree.positions)
        alt_all.append(hidden[tree.rows, tree.alt_at - seq_len])
        if n_suffix:
            act_all.append(hidden[tree.rows, tree.actual_at - seq_len])
        else:
            act_all.append(seq_hidden[tree.rows, tree.actual_at])
    return TreeHidden(
        rows=torch.cat(rows_all),
        positions=torch.cat(pos_all),
        actual=torch.cat(act_all),
        alt=torch.cat(alt_all),
    )
