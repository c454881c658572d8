"""The core's guarantees around every weighting rule (vcrd_core.WeightingRule.__call__)."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

import vcrd_core
from tests.fakes import NoParams, PlainRatio
from vcrd_core import VcrdError


class Recorder(vcrd_core.WeightingRule):
    """Records what the core hands to weight() and returns r_s * 2 (keeps the graph if there is one)."""

    name: ClassVar[str] = "test_recorder"
    Params = NoParams

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        self.seen = {
            "dtype": (r_student.dtype, r_teacher.dtype),
            "requires_grad": (r_student.requires_grad, r_teacher.requires_grad),
            "grad_enabled": torch.is_grad_enabled(),
        }
        return r_student * 2


class Returns(vcrd_core.WeightingRule):
    """Returns a fixed tensor (or scalar), whatever the scores."""

    name: ClassVar[str] = "test_returns"
    Params = NoParams

    def __init__(self, value: torch.Tensor | float) -> None:
        super().__init__()
        self.value = value

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return self.value  # type: ignore[return-value]


def scores(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g), torch.rand(n, generator=g)


def test_weights_are_detached_even_when_scores_require_grad() -> None:
    r_s, r_t = scores()
    r_s.requires_grad_(True)
    w = Recorder()(r_s, r_t)
    assert not w.requires_grad
    assert w.grad_fn is None


def test_weight_runs_without_grad_on_detached_float32_copies() -> None:
    rule = Recorder()
    r_s, r_t = scores()
    r_s = r_s.double().requires_grad_(True)
    w = rule(r_s, r_t.to(torch.bfloat16))
    assert rule.seen == {
        "dtype": (torch.float32, torch.float32),
        "requires_grad": (False, False),
        "grad_enabled": False,
    }
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, (r_s.detach() * 2).float())


class ParityOneRatio(PlainRatio):
    """A ratio rule that pins parity, as the built-in ``ratio`` does."""

    name: ClassVar[str] = "test_parity_one_ratio"

    def parity_weight(self, r: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(r)


class StudentScore(vcrd_core.WeightingRule):
    """w = r_s, a third-party rule that states no parity_weight."""

    name: ClassVar[str] = "test_student_score"
    Params = NoParams

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return r_student.clone()


def test_a_rule_without_parity_weight_keeps_its_own_formula_at_same_token_points() -> None:
    r = torch.tensor([1e-9, 0.3, 0.8, 0.0])
    same = torch.ones(4, dtype=torch.bool)
    assert StudentScore()(r, r.clone(), same_token=same).tolist() == pytest.approx(r.tolist())  # not 1
    # r / (r + eps) at r_s = r_t: the formula, drifting from 1 where r is tiny (1e-9 / (1e-9 + 1e-8) = 0.0909...)
    w = PlainRatio()(r, r.clone(), same_token=same)
    expected = (r.double() / (r.double() + 1e-8)).tolist()
    assert w.tolist() == pytest.approx(expected, rel=1e-5)


def test_a_rule_that_pins_parity_gives_exactly_one_where_both_proposals_are_the_same_token() -> None:
    # r / (r + eps) drifts from 1 when r is tiny: 1e-9 / (1e-9 + 1e-8) = 0.0909...
    r = torch.tensor([1e-9, 1e-9, 1e-4, 1e-4, 0.0])
    same = torch.tensor([True, False, True, False, True])
    w = ParityOneRatio()(r, r.clone(), same_token=same)
    assert w[same].tolist() == [1.0, 1.0, 1.0]
    assert w[1].item() == pytest.approx(1e-9 / (1e-9 + 1e-8), rel=1e-5)
    assert w[3].item() < 1.0
    assert w[3].item() == pytest.approx(1e-4 / (1e-4 + 1e-8), rel=1e-6)


def test_the_parity_weight_replaces_an_invalid_weight_at_that_position() -> None:
    class ParityOne(Returns):
        def parity_weight(self, r: torch.Tensor) -> torch.Tensor:
            return torch.ones_like(r)

    r_s, r_t = scores(3)
    w = ParityOne(torch.tensor([float("nan"), 0.5, -1.0]))(r_s, r_t, same_token=torch.tensor([True, False, True]))
    assert w.tolist() == [1.0, 0.5, 1.0]


def test_negative_weights_raise_naming_the_rule_and_how_many() -> None:
    r_s, r_t = scores(4)
    with pytest.raises(VcrdError, match=r"weighting rule 'test_returns' returned 2 negative weight\(s\) out of 4"):
        Returns(torch.tensor([0.5, -0.1, -2.0, 1.0]))(r_s, r_t)


def test_nan_weights_raise_naming_the_rule_and_how_many() -> None:
    r_s, r_t = scores(4)
    with pytest.raises(VcrdError, match=r"'test_returns' returned 3 NaN weight\(s\) out of 4"):
        Returns(torch.tensor([float("nan")] * 3 + [1.0]))(r_s, r_t)


def test_nan_and_negative_weights_are_both_counted_in_one_line() -> None:
    r_s, r_t = scores(4)
    with pytest.raises(VcrdError) as info:
        Returns(torch.tensor([float("nan"), -1.0, -1.0, 1.0]))(r_s, r_t)
    assert "1 NaN, 2 negative" in str(info.value)
    assert "\n" not in str(info.value)


def test_infinite_weights_raise() -> None:
    r_s, r_t = scores(3)
    with pytest.raises(VcrdError, match=r"1 infinite"):
        Returns(torch.tensor([float("inf"), 1.0, 2.0]))(r_s, r_t)


def test_zero_weights_are_allowed() -> None:
    r_s, r_t = scores(3)
    assert Returns(torch.zeros(3))(r_s, r_t).tolist() == [0.0, 0.0, 0.0]


def test_mask_zeroes_weights_outside_decision_points_and_skips_their_check() -> None:
    r_s = torch.tensor([[0.5, 0.0], [0.2, 0.0]])
    r_t = torch.tensor([[0.25, 0.0], [0.1, 0.0]])
    raw = torch.tensor([[2.0, float("nan")], [2.0, -3.0]])
    w = Returns(raw)(r_s, r_t, mask=torch.tensor([[True, False], [True, False]]))
    assert w.tolist() == [[2.0, 0.0], [2.0, 0.0]]


def test_a_scalar_weight_is_broadcast_to_the_scores_shape() -> None:
    r_s, r_t = torch.rand(2, 3), torch.rand(2, 3)
    w = Returns(0.7)(r_s, r_t)
    assert w.shape == (2, 3)
    torch.testing.assert_close(w, torch.full((2, 3), 0.7))


def test_a_weight_of_the_wrong_shape_is_refused() -> None:
    r_s, r_t = scores(4)
    with pytest.raises(VcrdError, match=r"'test_returns' returned weights of shape \(3,\), expected \(4,\)"):
        Returns(torch.ones(3))(r_s, r_t)


def test_scores_of_different_shapes_are_refused() -> None:
    with pytest.raises(VcrdError, match=r"r_student has shape \(3,\) but r_teacher has shape \(4,\)"):
        PlainRatio()(torch.rand(3), torch.rand(4))


def test_same_token_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(VcrdError, match=r"same_token has shape \(2,\), expected the scores' shape \(3,\)"):
        PlainRatio()(torch.rand(3), torch.rand(3), same_token=torch.tensor([True, False]))


def test_weights_keep_the_scores_device_and_are_float32() -> None:
    r_s, r_t = scores(5)
    w = PlainRatio()(r_s.double(), r_t.double())
    assert w.dtype == torch.float32
    assert w.device == r_s.device
    torch.testing.assert_close(w, (r_s.double() / (r_t.double() + 1e-8)).float())


def test_may_be_nonpositive_is_conservative_by_default() -> None:
    assert PlainRatio().may_be_nonpositive() is True
