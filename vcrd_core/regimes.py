"""The three regimes of a decision point, defined once: attenuation, parity, amplification.

A value ``v`` (a weight ``w_t``, or the validity ratio ``ρ_t = r_s / (r_t + ε)`` of ``vcrd analyze``) is

* **attenuation** where ``v < 1 - τ`` (the point's divergence counts less than with ``w = 1``),
* **parity** where ``|v - 1| ≤ τ``,
* **amplification** where ``v > 1 + τ``,

with one tolerance ``τ`` (:data:`DEFAULT_PARITY_TOL` = 0.05, i.e. ±5%; any value in ``(0, 0.5]``). The
training metrics (``metrics.jsonl``: ``<stream>/weight_share_attenuation`` ...), ``vcrd score``'s summary,
``vcrd analyze`` and the grid's ``score/<stream>/<regime>`` columns all use :func:`regime_masks`.
"""

from __future__ import annotations

from typing import Any

from vcrd_core.errors import VcrdError

#: ``τ``: a value within ``1 ± τ`` is parity.
DEFAULT_PARITY_TOL: float = 0.05
#: The regimes, in the order every table shows them.
REGIMES: tuple[str, ...] = ("attenuation", "parity", "amplification")


def check_parity_tol(parity_tol: float) -> float:
    """Refuse a tolerance outside ``(0, 0.5]``: ``1 - τ`` must stay a positive ratio."""
    if isinstance(parity_tol, bool) or not (isinstance(parity_tol, (int, float)) and 0.0 < parity_tol <= 0.5):
        raise VcrdError(f"parity tolerance must lie in (0, 0.5] (e.g. 0.05 for ±5%), got {parity_tol!r}")
    return float(parity_tol)


def regime_masks(values: Any, parity_tol: float = DEFAULT_PARITY_TOL) -> dict[str, Any]:
    """Boolean masks of the three regimes for a numpy array or a torch tensor of values (same type back)."""
    tol = check_parity_tol(parity_tol)
    return {
        "attenuation": values < 1.0 - tol,
        "parity": abs(values - 1.0) <= tol,
        "amplification": values > 1.0 + tol,
    }
