"""Tree scoring (DESIGN.md §2.4) against scoring every prefix separately with a float64 copy of the model."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Qwen2Model

from tests.tiny_models import tiny_qwen2_config
from vcrd_core import VcrdError
from vcrd_core.judging.tree import build_tree, check_context, logical_positions, tree_hidden_states

VOCAB = 50
SUFFIX = [7, 8]


def tiny_body(attn: str = "sdpa", max_positions: int = 64) -> Qwen2Model:
    torch.manual_seed(0)
    config = tiny_qwen2_config(VOCAB, hidden_size=64, max_positions=max_positions)
    config._attn_implementation = attn
    return Qwen2Model(config).eval()


def padded_batch(padding: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three rows of unequal lengths (9, 6, 4 real tokens), a score mask that skips some real positions."""
    gen = torch.Generator().manual_seed(1)
    lengths = [9, 6, 4]
    width = max(lengths)
    ids = torch.randint(0, VOCAB, (3, width), generator=gen)
    alt = torch.randint(0, VOCAB, (3, width), generator=gen)
    mask = torch.zeros(3, width, dtype=torch.long)
    for b, n in enumerate(lengths):
        if padding == "left":
            mask[b, width - n :] = 1
        else:
            mask[b, :n] = 1
    score = mask.bool() & (torch.rand(3, width, generator=gen) < 0.7)
    score[0, -1] = mask[0, -1].bool()  # the last token is always a decision point (EOS)
    return ids, mask, alt, score


def reference_hidden(body64: Qwen2Model, tokens: list[int]) -> torch.Tensor:
    """The plain way: the prefix alone, no padding, no mask, float64; the hidden state of its last token."""
    with torch.no_grad():
        return body64(input_ids=torch.tensor([tokens])).last_hidden_state[0, -1]


def max_error_against_prefixes(
    body: Qwen2Model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    alt: torch.Tensor,
    score: torch.Tensor,
    suffix: list[int] | None,
    positions_per_pass: int | None = None,
) -> tuple[float, int]:
    body64 = copy.deepcopy(body).double()
    with torch.no_grad():
        tree = tree_hidden_states(body, ids, mask, alt, score, suffix, positions_per_pass=positions_per_pass)
    assert tree.rows.numel() == int(score.sum())
    worst = 0.0
    for n in range(tree.rows.numel()):
        b, t = int(tree.rows[n]), int(tree.positions[n])
        assert bool(score[b, t])
        real = ids[b][mask[b].bool()].tolist()
        k = int(mask[b, :t].sum())  # y_<t has k real tokens
        tail = suffix or []
        actual = reference_hidden(body64, [*real[:k], int(ids[b, t]), *tail])
        other = reference_hidden(body64, [*real[:k], int(alt[b, t]), *tail])
        worst = max(worst, (tree.actual[n].double() - actual).abs().max().item())
        worst = max(worst, (tree.alt[n].double() - other).abs().max().item())
    return worst, tree.rows.numel()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("suffix", [None, SUFFIX], ids=["no_suffix", "suffix"])
def test_tree_hidden_states_equal_scoring_each_prefix_separately(attn: str, padding: str, suffix: list[int] | None):
    body = tiny_body(attn)
    worst, n = max_error_against_prefixes(body, *padded_batch(padding), suffix)
    assert n > 10
    assert worst <= 1e-5


@pytest.mark.parametrize("suffix", [None, SUFFIX], ids=["no_suffix", "suffix"])
def test_blocks_of_positions_against_a_kv_cache_equal_scoring_each_prefix(suffix: list[int] | None):
    body = tiny_body("eager")
    worst, _ = max_error_against_prefixes(body, *padded_batch("left"), suffix, positions_per_pass=2)
    assert worst <= 1e-5


def test_scores_every_real_position_when_no_score_mask_is_given():
    ids, mask, alt, _ = padded_batch("right")
    tree = build_tree(ids, mask, alt)
    assert tree.rows.numel() == int(mask.sum())
    assert bool(mask[tree.rows, tree.positions].all())


def test_one_forward_pass_for_all_positions_and_one_per_block_with_positions_per_pass():
    body = tiny_body()
    calls: list[int] = []
    body.register_forward_hook(lambda module, args, kwargs, out: calls.append(1), with_kwargs=True)
    ids, mask, alt, score = padded_batch("left")
    with torch.no_grad():
        tree_hidden_states(body, ids, mask, alt, score, SUFFIX)
    assert len(calls) == 1
    calls.clear()
    n_max = int(score.sum(-1).max())
    with torch.no_grad():
        tree_hidden_states(body, ids, mask, alt, score, SUFFIX, positions_per_pass=2)
    assert len(calls) == 1 + -(-n_max // 2)  # the sequence once, then ceil(n_max / 2) blocks


def test_position_ids_stay_logical_with_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert logical_positions(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    ids = torch.arange(10).view(2, 5)
    score = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    tree = build_tree(ids, mask, ids + 20, score, [9])
    # row 0: alt branches for t=3 (pos 1), t=4 (pos 2): (alt, 9) at (1, 2) and (2, 3); then suffix-only actual
    # branches at pos(t)+1 = 2 and 3
    assert tree.position_ids[0, 5:].tolist() == [1, 2, 2, 3, 2, 3]
    assert tree.position_ids[0, :5].tolist() == [0, 0, 0, 1, 2]
    assert tree.max_position == 5  # row 1: t=4 sits at 4, its branch suffix at 5


def test_mask_lets_a_branch_see_only_the_real_prefix_and_its_own_earlier_tokens():
    """A hand-written mask for one left-padded row: [pad, y0, y1], scoring t=2 with suffix (s,)."""
    ids = torch.tensor([[5, 6, 7]])
    mask = torch.tensor([[0, 1, 1]])
    score = torch.tensor([[False, False, True]])
    tree = build_tree(ids, mask, torch.full_like(ids, 40), score, [9])
    assert tree.input_ids.tolist() == [[5, 6, 7, 40, 9, 9]]  # sequence, alt branch (40, 9), actual branch (9,)
    allowed = (tree.attention_mask[0, 0] == 0).int().tolist()
    expected = [
        # pad y0 y1 alt s  s'
        [1, 0, 0, 0, 0, 0],  # pad sees only itself (a row is never empty)
        [0, 1, 0, 0, 0, 0],  # y0
        [0, 1, 1, 0, 0, 0],  # y1
        [0, 1, 0, 1, 0, 0],  # alt_2 sees y_<2 = y0 and itself
        [0, 1, 0, 1, 1, 0],  # its suffix sees y0, alt_2, itself
        [0, 1, 1, 0, 0, 1],  # the actual branch's suffix sees y0, y1 (= y_<=2) and itself
    ]
    assert allowed == expected
    assert tree.actual_at.tolist() == [5] and tree.alt_at.tolist() == [4]


def test_mask_is_additive_float_with_finfo_min_never_boolean():
    ids, mask, alt, score = padded_batch("left")
    for dtype in (torch.float32, torch.bfloat16):
        tree = build_tree(ids, mask, alt, score, SUFFIX, dtype=dtype)
        assert tree.attention_mask.dtype == dtype and tree.attention_mask.dim() == 4
        values = set(torch.unique(tree.attention_mask.float()).tolist())
        assert values == {0.0, float(torch.finfo(dtype).min)}


def test_input_longer_than_the_context_is_refused_at_the_largest_position_id():
    body = tiny_body(max_positions=9)
    ids, mask, alt, score = padded_batch("right")  # longest row: positions 0..8 fit exactly in 9
    with torch.no_grad():
        tree_hidden_states(body, ids, mask, alt, score, None, max_positions=9)  # alt_t at pos(t) <= 8: fits
        with pytest.raises(VcrdError, match=r"position ids up to 10 .* context is 9 positions"):
            tree_hidden_states(body, ids, mask, alt, score, SUFFIX, max_positions=9)  # the suffix reaches 10
        with pytest.raises(VcrdError, match="max_position_embeddings"):
            tree_hidden_states(body, ids, mask, alt, score, SUFFIX, max_positions=9, positions_per_pass=2)


def test_check_context_accepts_the_last_position_and_refuses_one_more():
    check_context(63, 64)
    with pytest.raises(VcrdError, match="never truncated"):
        check_context(64, 64)


def test_score_mask_on_padding_is_refused():
    ids, mask, alt, score = padded_batch("left")
    score = score.clone()
    score[2, 0] = True  # row 2 is left padded: position 0 is padding
    with pytest.raises(VcrdError, match=r"padding position \(row 2, position 0\)"):
        build_tree(ids, mask, alt, score)


def test_shape_mismatch_is_refused():
    ids, mask, alt, _ = padded_batch("left")
    with pytest.raises(VcrdError, match="alt_ids has shape"):
        build_tree(ids, mask, alt[:, :-1])


def test_a_body_with_sliding_window_layers_is_refused():
    config = tiny_qwen2_config(VOCAB, hidden_size=64, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    body = Qwen2Model(config).eval()
    assert "sliding_attention" in body.config.layer_types
    ids, mask, alt, score = padded_batch("left")
    with pytest.raises(VcrdError, match="sliding-window attention"):
        tree_hidden_states(body, ids, mask, alt, score)
