"""DecisionPoints: the one object that maps decision point t to logits row t-1."""

from __future__ import annotations

import pytest
import torch

from vcrd_core import IGNORE_INDEX, DecisionPoints, VcrdError


def test_from_masks_selects_response_tokens_that_are_not_padding() -> None:
    attention = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    response = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])
    expected = torch.tensor(
        [[False, False, True, True, False], [False, False, True, True, True], [False, False, False, False, False]]
    )
    points = DecisionPoints.from_masks(attention, response)
    assert torch.equal(points.mask, expected)
    assert points.batch.tolist() == [0, 0, 1, 1, 1]
    assert points.position.tolist() == [2, 3, 2, 3, 4]
    assert points.counts.tolist() == [2, 3, 0]
    assert points.num_points == 5


def test_rows_are_the_flat_index_of_the_logits_row_before_each_point() -> None:
    attention = torch.ones(2, 4, dtype=torch.long)
    response = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    points = DecisionPoints.from_masks(attention, response)
    # (b, t) -> b * L + t - 1 with L = 4
    assert points.rows.tolist() == [0, 1, 2, 5, 6]
    logits = torch.randn(2, 4, 7)
    flat = logits.reshape(-1, 7)
    torch.testing.assert_close(points.logits_at(logits), flat[points.rows], rtol=0, atol=0)
    torch.testing.assert_close(points.logits_at(logits, 1, 3), flat[points.rows[1:3]], rtol=0, atol=0)
    for i, (b, t) in enumerate(zip(points.batch.tolist(), points.position.tolist(), strict=True)):
        assert torch.equal(points.logits_at(logits)[i], logits[b, t - 1])


def test_from_labels_follows_the_hf_convention_and_equals_from_masks() -> None:
    input_ids = torch.tensor([[5, 6, 7, 8, 2], [0, 5, 6, 7, 2]])
    attention = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    response = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])
    labels = input_ids.masked_fill(~(attention.bool() & response.bool()), IGNORE_INDEX)
    from_labels = DecisionPoints.from_labels(labels, attention)
    from_masks = DecisionPoints.from_masks(attention, response)
    assert torch.equal(from_labels.mask, from_masks.mask)
    assert torch.equal(from_labels.rows, from_masks.rows)


def test_from_labels_ignores_the_label_at_position_zero_as_transformers_does() -> None:
    labels = torch.tensor([[4, 5, 6]])  # labels = input_ids, nothing masked
    points = DecisionPoints.from_labels(labels)
    assert points.position.tolist() == [1, 2]


def test_gather_and_scatter_are_inverse_at_the_points() -> None:
    points = DecisionPoints.from_masks(torch.ones(2, 3, dtype=torch.long), torch.tensor([[0, 1, 1], [0, 0, 1]]))
    values = torch.tensor([[9.0, 1.0, 2.0], [9.0, 9.0, 3.0]])
    assert points.gather(values).tolist() == [1.0, 2.0, 3.0]
    assert points.scatter(torch.tensor([1.0, 2.0, 3.0])).tolist() == [[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]]
    with pytest.raises(VcrdError, match="expected 3 values, got shape"):
        points.scatter(torch.ones(2))


def test_chunks_cover_every_point_once() -> None:
    points = DecisionPoints.from_masks(torch.ones(3, 5, dtype=torch.long), torch.ones(3, 5, dtype=torch.long))
    covered = [i for chunk in points.chunks(5) for i in range(points.num_points)[chunk]]
    assert covered == list(range(points.num_points)) and points.num_points == 12


def test_a_point_at_position_zero_is_refused() -> None:
    mask = torch.tensor([[True, True, False]])
    with pytest.raises(VcrdError, match="a decision point at position 0 has no preceding logits row"):
        DecisionPoints.from_mask(mask)


def test_a_point_after_mid_sequence_padding_is_refused() -> None:
    # a right-padded prompt concatenated with its response: [P P pad | R R]
    attention = torch.tensor([[1, 1, 0, 1, 1]])
    response = torch.tensor([[0, 0, 0, 1, 1]])
    with pytest.raises(VcrdError, match=r"decision point \(row 0, position 3\) follows padding at position 2"):
        DecisionPoints.from_masks(attention, response)
    labels = torch.tensor([[-100, -100, -100, 4, 5]])
    with pytest.raises(VcrdError, match=r"follows padding at position 2"):
        DecisionPoints.from_labels(labels, attention)
    left_padded = DecisionPoints.from_masks(torch.tensor([[0, 1, 1, 1, 1]]), response)
    assert left_padded.mask.tolist() == [[False, False, False, True, True]]


def test_a_point_on_padding_is_refused() -> None:
    with pytest.raises(VcrdError, match="a decision point lies on padding"):
        DecisionPoints.from_mask(torch.tensor([[False, True, True]]), torch.tensor([[1, 1, 0]]))


def test_shapes_are_checked_in_one_line() -> None:
    with pytest.raises(VcrdError, match=r"must both be \[B, L\]"):
        DecisionPoints.from_masks(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(VcrdError, match=r"labels must be a \[B, L\] tensor"):
        DecisionPoints.from_labels(torch.ones(3, dtype=torch.long))
    points = DecisionPoints.from_masks(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(VcrdError, match=r"values has shape \(2, 4\), but .* \[B, L\] = \[2, 3\]"):
        points.gather(torch.ones(2, 4))
