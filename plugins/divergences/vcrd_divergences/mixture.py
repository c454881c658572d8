"""Log-space KL divergence and two-component mixtures, safe at zero probabilities.

Both work on log-probabilities of any float dtype (the core hands float32 chunks). A token with
probability 0 (a ``-inf`` logit: a masked token) contributes ``0·log 0 = 0``; inputs are sanitised
*before* the arithmetic so that neither the values nor the gradients of such entries are NaN
(``torch.where`` after the fact would still back-propagate ``0·NaN``).
"""

from __future__ import annotations

import math

import torch


def kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    r"""Row-wise :math:`\mathrm{KL}(a\,\|\,b) = \sum_i a_i(\log a_i - \log b_i)` with :math:`0 \log 0 = 0`.

    Entries with :math:`a_i = 0` contribute 0 whatever :math:`b_i` is; an entry with
    :math:`a_i > 0 = b_i` gives :math:`+\infty`, the true value (the divergence is infinite there).
    """
    a_zero = torch.isneginf(log_a)
    la = log_a.masked_fill(a_zero, 0.0)
    lb = log_b.masked_fill(a_zero, 0.0)
    return (la.exp() * (la - lb)).masked_fill(a_zero, 0.0).sum(-1)


def log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float | torch.Tensor) -> torch.Tensor:
    r""":math:`\log(w\,p + (1-w)\,q)` as :math:`\mathrm{logaddexp}(\log w + \log p,\ \log(1-w) + \log q)`.

    ``weight_p`` :math:`w \in [0, 1]`. The endpoints return the component itself exactly
    (:math:`w = 0 \Rightarrow \log q`, :math:`w = 1 \Rightarrow \log p`), so no :math:`\log 0` term
    enters the graph; where both :math:`p_i = q_i = 0` the mixture is :math:`-\infty` with a zero
    gradient. ``weight_p`` may also be a tensor ``[n]`` of per-row weights in (0, 1) (a per-sequence α).
    """
    if isinstance(weight_p, torch.Tensor):
        w = weight_p.unsqueeze(-1)
        log_w, log_1mw = torch.log(w), torch.log1p(-w)
    elif weight_p == 0.0:
        return log_q
    elif weight_p == 1.0:
        return log_p
    else:
        log_w, log_1mw = math.log(weight_p), math.log1p(-weight_p)
    both_zero = torch.isneginf(log_p) & torch.isneginf(log_q)
    a = log_p.masked_fill(both_zero, 0.0) + log_w
    b = log_q.masked_fill(both_zero, 0.0) + log_1mw
    return torch.logaddexp(a, b).masked_fill(both_zero, float("-inf"))
