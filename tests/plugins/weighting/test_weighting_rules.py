"""The built-in weighting rules (DESIGN.md §1.3 table) against plain float64 formulas."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from pydantic import BaseModel

import vcrd_core
from vcrd_core import ConfigError
from vcrd_core.plugins.registry import entries

RULE_NAMES = ["clamp", "constant", "difference", "log_clamp", "ratio", "student_only"]


def rule(name: str, params: dict | None = None) -> vcrd_core.WeightingRule:
    built = vcrd_core.create(vcrd_core.WEIGHTING, name, params or {})
    assert isinstance(built, vcrd_core.WeightingRule)
    return built


def grid() -> tuple[torch.Tensor, torch.Tensor]:
    """Scores covering 0, 1, tiny values and random interior points (float64)."""
    edge = torch.tensor([0.0, 1e-9, 1e-4, 0.25, 0.5, 1.0], dtype=torch.float64)
    r_s, r_t = torch.meshgrid(edge, edge, indexing="ij")
    g = torch.Generator().manual_seed(0)
    rand = torch.rand(2, 50, generator=g, dtype=torch.float64)
    return torch.cat([r_s.reshape(-1), rand[0]]), torch.cat([r_t.reshape(-1), rand[1]])


def check(name: str, params: dict, reference: torch.Tensor) -> None:
    r_s, r_t = grid()
    w = rule(name, params)(r_s, r_t)
    torch.testing.assert_close(w.double(), reference, rtol=2e-6, atol=1e-7)


def test_the_plugin_registers_exactly_the_six_rules_of_the_spec() -> None:
    assert set(RULE_NAMES) <= set(vcrd_core.available(vcrd_core.WEIGHTING))
    for name in RULE_NAMES:
        entry = entries(vcrd_core.WEIGHTING)[name]
        assert (entry.provider.name, entry.provider.distribution) == ("vcrd-weighting", "vcrd")


@pytest.mark.parametrize("name", RULE_NAMES)
def test_every_rule_has_a_summary_and_strict_params(name: str) -> None:
    cls = entries(vcrd_core.WEIGHTING)[name].cls
    assert cls.name == name
    assert (cls.__doc__ or "").strip().splitlines()[0]
    assert issubclass(cls.Params, BaseModel)
    assert cls.Params.model_config.get("extra") == "forbid"


def test_ratio_equals_r_s_over_r_t_plus_eps() -> None:
    r_s, r_t = grid()
    check("ratio", {}, r_s / (r_t + 1e-8))
    check("ratio", {"eps": 0.1}, r_s / (r_t + 0.1))


def test_ratio_reaches_r_s_over_eps_when_the_teacher_token_scores_zero() -> None:
    w = rule("ratio")(torch.tensor([1.0]), torch.tensor([0.0]))
    assert w.item() == pytest.approx(1e8, rel=1e-6)


@pytest.mark.parametrize("eps", [0, -1e-8])
def test_ratio_refuses_a_nonpositive_eps(eps: float) -> None:
    with pytest.raises(ConfigError, match=r"^params\.eps: Input should be greater than 0"):
        rule("ratio", {"eps": eps})


def test_difference_equals_max_of_r_s_minus_r_t_plus_offset_and_floor() -> None:
    r_s, r_t = grid()
    check("difference", {}, torch.clamp(r_s - r_t, min=0.0))
    check("difference", {"offset": 0.5, "floor": 0.1}, torch.clamp(r_s - r_t + 0.5, min=0.1))


def test_difference_drops_a_point_where_the_teacher_token_is_more_valid() -> None:
    w = rule("difference")(torch.tensor([0.2, 0.9]), torch.tensor([0.8, 0.3]))
    torch.testing.assert_close(w, torch.tensor([0.0, 0.6]))


def test_difference_refuses_a_negative_floor() -> None:
    with pytest.raises(ConfigError, match=r"^params\.floor: Input should be greater than or equal to 0"):
        rule("difference", {"floor": -0.5})


def test_student_only_equals_r_s() -> None:
    r_s, _ = grid()
    check("student_only", {}, r_s)


def test_constant_is_c_everywhere_and_one_by_default() -> None:
    r_s, _ = grid()
    check("constant", {}, torch.ones_like(r_s))
    check("constant", {"c": 0.25}, torch.full_like(r_s, 0.25))


def test_constant_refuses_a_negative_c() -> None:
    with pytest.raises(ConfigError, match=r"^params\.c: Input should be greater than or equal to 0"):
        rule("constant", {"c": -1})


def test_clamp_equals_the_inner_rule_clipped_to_min_and_max() -> None:
    r_s, r_t = grid()
    ratio = r_s / (r_t + 1e-8)
    check("clamp", {"inner": {"name": "ratio"}}, ratio)
    check("clamp", {"inner": {"name": "ratio"}, "min": 0.2, "max": 3.0}, torch.clamp(ratio, 0.2, 3.0))


def test_clamp_with_max_one_disables_amplification() -> None:
    w = rule("clamp", {"inner": {"name": "ratio"}, "max": 1})(torch.tensor([0.9, 0.2]), torch.tensor([0.1, 0.8]))
    torch.testing.assert_close(w, torch.tensor([1.0, 0.2 / (0.8 + 1e-8)]))


def test_clamp_passes_nested_params_to_the_inner_rule() -> None:
    r_s, r_t = grid()
    check("clamp", {"inner": {"name": "difference", "params": {"offset": 0.3}}}, torch.clamp(r_s - r_t + 0.3, min=0))


def test_clamp_requires_an_inner_rule() -> None:
    with pytest.raises(ConfigError, match=r"^params\.inner: missing required field 'inner'$"):
        rule("clamp", {})


def test_clamp_refuses_min_above_max() -> None:
    with pytest.raises(ConfigError, match=r"^params: min \(2\.0\) must be <= max \(1\.0\)"):
        rule("clamp", {"inner": {"name": "ratio"}, "min": 2, "max": 1})


def test_an_unknown_inner_rule_is_reported_at_its_path_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        rule("clamp", {"inner": {"name": "ratoi"}})
    assert info.value.path == "params.inner.name"
    assert info.value.message.startswith("Unknown weighting rule 'ratoi'. Did you mean 'ratio'? Available: ")


def test_inner_errors_carry_the_full_yaml_path() -> None:
    with pytest.raises(ConfigError) as info:
        vcrd_core.create(
            vcrd_core.WEIGHTING,
            "clamp",
            {"inner": {"name": "log_clamp", "params": {"inner": {"name": "ratio", "params": {"epss": 1}}}}},
            path="objective.teacher_prefix.weighting",
        )
    assert info.value.path == "objective.teacher_prefix.weighting.params.inner.params.inner.params.epss"
    assert "Did you mean 'eps'?" in info.value.message


def test_log_clamp_equals_exp_of_clipped_scaled_log_ratio() -> None:
    r_s, r_t = grid()
    ratio = r_s / (r_t + 1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float64 reference takes log 0 = -inf on purpose
        reference = torch.exp(torch.clamp(0.5 * torch.log(ratio), math.log(0.5), math.log(2.0)))
        custom = torch.exp(torch.clamp(0.8 * torch.log(r_s), math.log(0.1), math.log(0.9)))
    check("log_clamp", {}, reference)
    check("log_clamp", {"inner": {"name": "student_only"}, "gamma": 0.8, "lo": 0.1, "hi": 0.9}, custom)


def test_log_clamp_gives_lo_for_a_zero_inner_weight_without_warnings() -> None:
    r_s, r_t = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.0, 0.5, 1.0])
    for gamma in (0.5, 0.0):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            w = rule("log_clamp", {"gamma": gamma, "lo": 0.3})(r_s, r_t)
        assert w.tolist() == pytest.approx([0.3, 0.3, 0.3])


def test_log_clamp_stays_within_lo_and_hi() -> None:
    r_s, r_t = grid()
    w = rule("log_clamp")(r_s, r_t)
    assert float(w.min()) >= 0.5 * (1 - 1e-6)
    assert float(w.max()) <= 2.0 * (1 + 1e-6)


@pytest.mark.parametrize(
    "inner",
    [
        {"name": "difference"},
        {"name": "constant", "params": {"c": 0}},
        {"name": "clamp", "params": {"inner": {"name": "difference"}}},
    ],
)
def test_log_clamp_refuses_an_inner_rule_that_can_be_nonpositive(inner: dict) -> None:
    with pytest.raises(ConfigError) as info:
        rule("log_clamp", {"inner": inner})
    assert info.value.path == "params.inner"
    assert f"weighting rule '{inner['name']}'" in info.value.message
    assert "can give weights <= 0" in info.value.message


@pytest.mark.parametrize(
    "inner",
    [
        {"name": "difference", "params": {"floor": 0.05}},
        {"name": "clamp", "params": {"inner": {"name": "difference"}, "min": 0.1}},
        {"name": "constant"},
    ],
)
def test_log_clamp_accepts_an_inner_rule_with_positive_weights(inner: dict) -> None:
    assert rule("log_clamp", {"inner": inner}).may_be_nonpositive() is False


def test_log_clamp_refuses_lo_above_hi() -> None:
    with pytest.raises(ConfigError, match=r"^params: lo \(3\.0\) must be <= hi \(2\.0\)"):
        rule("log_clamp", {"lo": 3})


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("ratio", {}, False),
        ("student_only", {}, False),
        ("log_clamp", {}, False),
        ("constant", {}, False),
        ("constant", {"c": 0}, True),
        ("difference", {}, True),
        ("difference", {"floor": 0.1}, False),
        ("difference", {"offset": 1.5}, False),
        ("clamp", {"inner": {"name": "difference"}}, True),
        ("clamp", {"inner": {"name": "difference"}, "min": 0.1}, False),
        ("clamp", {"inner": {"name": "ratio"}}, False),
        ("clamp", {"inner": {"name": "ratio"}, "max": 0}, True),
    ],
)
def test_may_be_nonpositive_matches_the_rule_and_its_params(name: str, params: dict, expected: bool) -> None:
    assert rule(name, params).may_be_nonpositive() is expected


@pytest.mark.parametrize("name", ["ratio", "log_clamp"])
def test_ratio_rules_give_exactly_one_where_both_proposals_are_the_same_token(name: str) -> None:
    r = torch.tensor([1e-9, 0.2, 0.7])
    assert (r / (r + 1e-8)).tolist() != [1.0, 1.0, 1.0]  # what the formula alone would give
    w = rule(name)(r, r.clone(), same_token=torch.ones(3, dtype=torch.bool))
    assert w.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("difference", {}, [0.0, 0.0, 0.0]),  # max(r - r + 0, 0): the paper's literal rule
        ("difference", {"offset": 0.5, "floor": 0.2}, [0.5, 0.5, 0.5]),
        ("student_only", {}, [1e-9, 0.2, 0.7]),
        ("constant", {"c": 0.5}, [0.5, 0.5, 0.5]),
        ("clamp", {"inner": {"name": "ratio"}, "max": 0.5}, [0.5, 0.5, 0.5]),  # parity 1, clipped to max
        ("clamp", {"inner": {"name": "ratio"}, "min": 2}, [2.0, 2.0, 2.0]),
        ("clamp", {"inner": {"name": "student_only"}, "min": 0.1}, [0.1, 0.2, 0.7]),
        ("log_clamp", {"lo": 1.5, "hi": 2}, [1.5, 1.5, 1.5]),  # parity 1 lies below lo
    ],
)
def test_other_rules_keep_their_own_formula_where_both_proposals_are_the_same_token(
    name: str, params: dict, expected: list[float]
) -> None:
    r = torch.tensor([1e-9, 0.2, 0.7])
    same = torch.tensor([True, True, True])
    w = rule(name, params)(r, r.clone(), same_token=same)
    assert w.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_same_token_points_mix_with_formula_points() -> None:
    r_s, r_t = torch.tensor([0.3, 0.3, 0.9]), torch.tensor([0.3, 0.6, 0.3])
    same = torch.tensor([True, False, False])
    w = rule("difference", {"offset": 0.1})(r_s, r_t, same_token=same)
    assert w.tolist() == pytest.approx([0.1, 0.0, 0.7])


def test_log_clamp_refuses_a_clamp_that_is_always_zero() -> None:
    with pytest.raises(ConfigError, match=r"^params\.inner: weighting rule 'clamp'"):
        rule("log_clamp", {"inner": {"name": "clamp", "params": {"inner": {"name": "ratio"}, "max": 0}}})


def test_unknown_params_key_suggests_the_valid_one() -> None:
    with pytest.raises(ConfigError, match=r"^params\.epss: unknown key 'epss'\. Did you mean 'eps'\?"):
        rule("ratio", {"epss": 1e-6})
