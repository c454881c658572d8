"""The six built-in divergences against plain float64 references, their identities and NaN-safety.

Every divergence is called the public way, ``div(teacher_logits, student_logits)`` (float32 through the
core's chunked engine), and compared with a float64 reference written the straightforward way:
probabilities ``exp(log_softmax(z))``, mixtures formed in probability space, ``Σ a (log a - log b)``
with the terms where ``a = 0`` dropped. Gradients are w.r.t. the student logits, by float64 autograd.

Tolerances: values rtol 1e-5 with atol 1e-6 (near-zero values, e.g. ``p = q``, are held to atol 1e-6);
``ab`` uses atol 1e-5 because its general case subtracts O(1) terms and divides by αβ (float32
cancellation ≈ 1e-7·V/(αβ)). Gradients: rtol 1e-5 with atol 1e-6 times max(1, the largest entry of the
reference gradient), since the log-softmax backward ``g - q Σ g`` cancels in float32 when ``g`` is large
(``ab`` at α = β = 0 has entries ≈ 10).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import vcrd_core
from vcrd_core.errors import ConfigError

Tensor = torch.Tensor


# ---------------------------------------------------------------- float64 references (probability space)


def ref_kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    a = log_a.exp()
    keep = a > 0
    la = torch.where(keep, log_a, 0.0)
    lb = torch.where(keep, log_b, 0.0)
    return torch.where(keep, a * (la - lb), 0.0).sum(-1)


def ref_mix_log(log_p: Tensor, log_q: Tensor, w: float) -> Tensor:
    if w in (0, 1):  # the mixture is one component exactly; exp() would underflow at logits of ±1e4
        return log_q if w == 0 else log_p
    m = w * log_p.exp() + (1 - w) * log_q.exp()
    return torch.where(m > 0, torch.log(torch.where(m > 0, m, 1.0)), float("-inf"))


def ref_skl(lp: Tensor, lq: Tensor, alpha: float = 0.1) -> Tensor:
    return ref_kl(lp, ref_mix_log(lp, lq, alpha))


def ref_srkl(lp: Tensor, lq: Tensor, alpha: float = 0.1, detach_mixture: bool = True) -> Tensor:
    inner = lq.detach() if detach_mixture else lq
    return ref_kl(lq, ref_mix_log(lp, inner, 1 - alpha))


def ref_fkl(lp: Tensor, lq: Tensor) -> Tensor:
    return ref_kl(lp, lq)


def ref_rkl(lp: Tensor, lq: Tensor) -> Tensor:
    return ref_kl(lq, lp)


def ref_jsd(lp: Tensor, lq: Tensor, beta: float = 0.5) -> Tensor:
    if beta == 0:  # TRL's mapping
        return ref_kl(lp, lq)
    if beta == 1:
        return ref_kl(lq, lp)
    lm = ref_mix_log(lp, lq, beta)
    return beta * ref_kl(lp, lm) + (1 - beta) * ref_kl(lq, lm)


def ref_ab(lp: Tensor, lq: Tensor, alpha: float = 0.2, beta: float = 0.7) -> Tensor:
    """ABKD's ab_div branch by branch (powers as exp(s·log x) so that underflowing x is exact 0)."""
    p, q = lp.exp(), lq.exp()
    if alpha == 0 and beta == 0:
        finite = torch.isfinite(lp) & torch.isfinite(lq)
        d = torch.where(finite, lq, 0.0) - torch.where(finite, lp, 0.0)
        return 0.5 * (d**2).sum(-1)
    if alpha == 0:
        qb, pb = torch.exp(beta * lq), torch.exp(beta * lp)
        log_ratio = beta * (torch.where(q > 0, lq, 0.0) - torch.where(q > 0, lp, 0.0))
        return (1 / beta) * (torch.where(q > 0, qb * log_ratio, 0.0) - qb + pb).sum(-1)
    if beta == 0:
        pa, qa = torch.exp(alpha * lp), torch.exp(alpha * lq)
        log_ratio = alpha * (torch.where(p > 0, lp, 0.0) - torch.where(p > 0, lq, 0.0))
        return (1 / alpha) * (torch.where(p > 0, pa * log_ratio, 0.0) - pa + qa).sum(-1)
    s = alpha + beta
    terms = torch.exp(alpha * lp + beta * lq) - alpha / s * torch.exp(s * lp) - beta / s * torch.exp(s * lq)
    return -(1 / (alpha * beta)) * terms.sum(-1)


REFERENCES: dict[str, Callable[..., Tensor]] = {
    "skl": ref_skl,
    "srkl": ref_srkl,
    "fkl": ref_fkl,
    "rkl": ref_rkl,
    "jsd": ref_jsd,
    "ab": ref_ab,
}

CASES: list[tuple[str, dict[str, Any]]] = [
    ("skl", {}),
    ("skl", {"alpha": 0.0}),
    ("skl", {"alpha": 0.5}),
    ("skl", {"alpha": 1.0}),
    ("srkl", {}),
    ("srkl", {"detach_mixture": False}),
    ("srkl", {"alpha": 0.0}),
    ("srkl", {"alpha": 1.0}),
    ("srkl", {"alpha": 1.0, "detach_mixture": False}),
    ("fkl", {}),
    ("rkl", {}),
    ("jsd", {}),
    ("jsd", {"beta": 0.2}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}),
    ("ab", {}),
    ("ab", {"alpha": 0.5, "beta": 0.5}),
    ("ab", {"alpha": 1.0, "beta": 1.0}),
    ("ab", {"alpha": 0.0, "beta": 0.0}),
    ("ab", {"alpha": 0.0, "beta": 0.5}),
    ("ab", {"alpha": 0.5, "beta": 0.0}),
]


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, params = case
    return name + "".join(f"-{k}={v}" for k, v in params.items())


# ---------------------------------------------------------------- helpers


def make(name: str, **params: Any) -> vcrd_core.Divergence:
    div = vcrd_core.create(vcrd_core.DIVERGENCES, name, params)
    assert isinstance(div, vcrd_core.Divergence)
    return div


def random_logits(seed: int, n: int = 6, v: int = 64, scale: float = 3.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale


def extreme_logits(seed: int, n: int = 6, v: int = 64) -> Tensor:
    """Random logits with about a tenth of the entries at +1e4 and a tenth at -1e4 (peaked rows, underflow)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, v, generator=g)
    u = torch.rand(n, v, generator=g)
    z[u < 0.1] = -1e4
    z[u > 0.9] = 1e4
    return z


def ours(div: vcrd_core.Divergence, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    s = s.detach().clone().requires_grad_(True)
    values = div(t, s)
    values.sum().backward()
    assert s.grad is not None
    return values.detach(), s.grad


def reference(name: str, params: dict[str, Any], t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    s64 = s.detach().double().requires_grad_(True)
    lp = torch.log_softmax(t.double(), -1)
    lq = torch.log_softmax(s64, -1)
    values = REFERENCES[name](lp, lq, **params)
    if not values.requires_grad:  # skl at alpha = 1 does not depend on the student
        return values.detach(), torch.zeros_like(s64)
    (grad,) = torch.autograd.grad(values.sum(), s64)
    return values.detach(), grad


def close(actual: Tensor, expected: Tensor, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


def close_grad(actual: Tensor, expected: Tensor) -> None:
    """Gradients: rtol 1e-5 and atol 1e-6 times the largest reference entry (float32 log-softmax cancels)."""
    close(actual, expected, atol=1e-6 * max(1.0, float(expected.abs().max())))


def atol_for(name: str) -> float:
    return 1e-5 if name == "ab" else 1e-6


def assert_no_nan(values: Tensor, grad: Tensor) -> None:
    assert not torch.isnan(values).any(), values
    assert not torch.isnan(grad).any()


# ---------------------------------------------------------------- registration and params


def test_all_six_divergences_are_registered_by_the_plugin() -> None:
    assert {"skl", "srkl", "fkl", "rkl", "jsd", "ab"} <= set(vcrd_core.available(vcrd_core.DIVERGENCES))


def test_defaults_are_those_of_distillm2_trl_and_abkd() -> None:
    assert make("skl").params.alpha == 0.1
    assert make("srkl").params.alpha == 0.1 and make("srkl").params.detach_mixture is True
    assert make("jsd").params.beta == 0.5
    assert (make("ab").params.alpha, make("ab").params.beta) == (0.2, 0.7)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("skl", {"alpha": 1.5}, "params.alpha"),
        ("skl", {"alpha": -0.1}, "params.alpha"),
        ("srkl", {"alpha": 2}, "params.alpha"),
        ("jsd", {"beta": -1}, "params.beta"),
        ("ab", {"alpha": 1.1}, "params.alpha"),
        ("ab", {"beta": -0.5}, "params.beta"),
        ("skl", {"beta": 0.5}, "params"),
    ],
)
def test_params_out_of_range_are_refused_naming_the_field(name: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        vcrd_core.create(vcrd_core.DIVERGENCES, name, params)
    assert field in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- values and gradients vs float64


@pytest.mark.parametrize(("logits", "seed"), [(random_logits, 1), (extreme_logits, 3)], ids=["random", "extreme"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_value_and_gradient_match_float64_reference(
    case: tuple[str, dict[str, Any]], logits: Callable[[int], Tensor], seed: int
) -> None:
    name, params = case
    t, s = logits(seed), logits(seed + 1)
    values, grad = ours(make(name, **params), t, s)
    ref_values, ref_grad = reference(name, params, t, s)
    assert_no_nan(values, grad)
    close(values, ref_values, atol=atol_for(name))
    close_grad(grad, ref_grad)


# ---------------------------------------------------------------- identities


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_divergence_is_zero_with_zero_gradient_when_student_equals_teacher(case: tuple[str, dict[str, Any]]) -> None:
    name, params = case
    z = random_logits(5)
    values, grad = ours(make(name, **params), z, z)
    close(values, torch.zeros_like(values), atol=atol_for(name))
    close(grad, torch.zeros_like(grad))


@pytest.mark.parametrize(
    ("name", "params", "equals"),
    [
        ("skl", {"alpha": 0.0}, "fkl"),
        ("srkl", {"alpha": 0.0}, "rkl"),
        ("srkl", {"alpha": 0.0, "detach_mixture": False}, "rkl"),
        ("jsd", {"beta": 0.0}, "fkl"),
        ("jsd", {"beta": 1.0}, "rkl"),
        ("ab", {"alpha": 1.0, "beta": 0.0}, "fkl"),
        ("ab", {"alpha": 0.0, "beta": 1.0}, "rkl"),
    ],
)
def test_limit_cases_equal_forward_or_reverse_kl(name: str, params: dict[str, Any], equals: str) -> None:
    t, s = random_logits(6), random_logits(7)
    values, grad = ours(make(name, **params), t, s)
    other_values, other_grad = ours(make(equals), t, s)
    close(values, other_values)
    close_grad(grad, other_grad)


def test_skew_divergences_vanish_at_alpha_one() -> None:
    t, s = random_logits(8), random_logits(9)
    for name in ("skl", "srkl"):
        values, _ = ours(make(name, alpha=1.0), t, s)
        assert torch.all(values.abs() <= 1e-6)


def test_jsd_formula_itself_tends_to_zero_near_beta_zero_unlike_trl_mapping() -> None:
    t, s = random_logits(10), random_logits(11)
    near, _ = ours(make("jsd", beta=1e-6), t, s)
    at, _ = ours(make("jsd", beta=0.0), t, s)
    assert torch.all(near.abs() < 1e-4)
    assert torch.all(at > 0.1)


def test_srkl_detaching_the_mixture_changes_the_gradient_but_not_the_value() -> None:
    t, s = random_logits(12), random_logits(13)
    v_detached, g_detached = ours(make("srkl", alpha=0.5), t, s)
    v_full, g_full = ours(make("srkl", alpha=0.5, detach_mixture=False), t, s)
    close(v_detached, v_full)
    assert (g_detached - g_full).abs().max() > 1e-3


def test_ab_at_alpha_and_beta_zero_is_half_the_squared_log_ratio() -> None:
    t, s = random_logits(14), random_logits(15)
    values, _ = ours(make("ab", alpha=0.0, beta=0.0), t, s)
    lp, lq = torch.log_softmax(t.double(), -1), torch.log_softmax(s.double(), -1)
    close(values, 0.5 * ((lq - lp) ** 2).sum(-1))


def test_ab_alpha_zero_branch_is_abkd_one_over_beta_limit_not_the_analytic_one() -> None:
    # ab_div's alpha = 0 branch has 1/beta where the general formula's limit has 1/beta^2.
    # Checked in float64 (value() is dtype-agnostic): in float32 the 1/(alpha*beta) factor amplifies rounding.
    lp = torch.log_softmax(random_logits(16).double(), -1)
    lq = torch.log_softmax(random_logits(17).double(), -1)
    beta = 0.5
    at_zero = make("ab", alpha=0.0, beta=beta).value(lp, lq)
    near_zero = make("ab", alpha=1e-6, beta=beta).value(lp, lq)
    close(near_zero * beta, at_zero, rtol=1e-4, atol=0.0)
    assert not torch.allclose(near_zero, at_zero, rtol=0.1)


# ---------------------------------------------------------------- masked tokens and no NaN


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_tokens_masked_in_both_models_are_ignored_without_nan(case: tuple[str, dict[str, Any]]) -> None:
    name, params = case
    t, s = random_logits(18), random_logits(19)
    masked = torch.zeros(64, dtype=torch.bool)
    masked[::5] = True
    t[:, masked], s[:, masked] = float("-inf"), float("-inf")
    div = make(name, **params)
    values, grad = ours(div, t, s)
    assert_no_nan(values, grad)
    kept_values, kept_grad = ours(div, t[:, ~masked], s[:, ~masked])
    close(values, kept_values, atol=atol_for(name))
    close_grad(grad[:, ~masked], kept_grad)
    assert torch.all(grad[:, masked] == 0)


@pytest.mark.parametrize(
    "case",
    [
        c
        for c in CASES
        if c[0] in ("skl", "fkl")
        or (c[0] == "jsd" and c[1].get("beta") != 1.0)  # jsd(beta=1) = KL(q||p): infinite where p = 0 < q
        or (c[0] == "srkl" and 0 < c[1].get("alpha", 0.1) < 1)  # srkl(alpha=0) = KL(q||p), likewise
    ]
    + [("ab", {}), ("ab", {"alpha": 0.5, "beta": 0.0})],
    ids=case_id,
)
def test_teacher_only_masked_tokens_give_finite_values_and_no_nan(case: tuple[str, dict[str, Any]]) -> None:
    name, params = case
    t, s = random_logits(20), random_logits(21)
    t[:, ::7] = float("-inf")
    values, grad = ours(make(name, **params), t, s)
    assert_no_nan(values, grad)
    assert torch.isfinite(values).all()
    ref_values, ref_grad = reference(name, params, t, s)
    close(values, ref_values, atol=atol_for(name))
    close_grad(grad, ref_grad)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("name", ["skl", "srkl"])
def test_no_nan_at_alpha_endpoints_with_masked_and_extreme_logits(name: str, alpha: float) -> None:
    t, s = extreme_logits(22), extreme_logits(23)
    t[:, ::9], s[:, ::9] = float("-inf"), float("-inf")
    values, grad = ours(make(name, alpha=alpha), t, s)
    assert_no_nan(values, grad)


def test_reference_helpers_are_not_vacuous() -> None:
    # Guards the references themselves: a known two-token KL.
    lp = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    lq = torch.log(torch.tensor([[0.9, 0.1]], dtype=torch.float64))
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert abs(float(ref_fkl(lp, lq)) - expected) < 1e-12
    m = 0.1 * 0.5 + 0.9 * torch.tensor([0.9, 0.1], dtype=torch.float64)
    assert abs(float(ref_skl(lp, lq)) - float((0.5 * torch.log(0.5 / m)).sum())) < 1e-12
