"""The reduction of one stream's weighted divergences, written once for both loss engines.

:class:`Reduction` names it; :func:`row_coefficients` folds it into one coefficient per decision point, so that a
stream's ``loss_sum`` is ``Σ_n c_n D_n`` on either engine (the fused-linear engine needs the coefficients before
its pass, where the gradient is accumulated; the logits engine multiplies its values by the same coefficients);
:func:`reduction_count` is the count that normalises ``loss_sum`` (the trainer sums it over micro-batches and
processes before the step).
"""

from __future__ import annotations

import enum

import torch

from vcrd_core.decision_points import DecisionPoints
from vcrd_core.errors import VcrdError


class Reduction(str, enum.Enum):
    """How one stream's weighted divergences ``w_t D_t`` become a loss.

    * ``sequence_mean`` (default; DistiLLM-2's code, with which Table 9's learning rate was tuned):
      :math:`\\frac{1}{B'} \\sum_b \\frac{1}{n_b} \\sum_t w_{b,t} D_{b,t}`, ``n_b`` the number of
      decision points of sequence ``b`` (*not* :math:`\\sum_t w_{b,t}`);
    * ``sequence_sum`` (Eq. 3 and Alg. 1 literally): :math:`\\frac{1}{B'} \\sum_b \\sum_t w_{b,t} D_{b,t}`;
    * ``token_mean``: :math:`\\frac{1}{N} \\sum_{b,t} w_{b,t} D_{b,t}` over the ``N`` decision points.

    ``B'`` counts the sequences with at least one decision point: one without any contributes
    nothing and is not counted.
    """

    SEQUENCE_MEAN = "sequence_mean"
    SEQUENCE_SUM = "sequence_sum"
    TOKEN_MEAN = "token_mean"


def reduction_count(points: DecisionPoints, reduction: Reduction | str) -> int:
    """The count that normalises a stream's ``loss_sum``: decision points for ``token_mean``, else the sequences
    with at least one decision point (one without any contributes nothing and is not counted)."""
    if Reduction(reduction) is Reduction.TOKEN_MEAN:
        return points.num_points
    return int((points.counts > 0).sum())


def row_coefficients(
    weights: torch.Tensor | None,
    sequence_index: torch.Tensor,
    reduction: str,
) -> tuple[torch.Tensor, int]:
    """Per-row coefficients ``c_n`` and the count such that ``Σ c_n D_n`` is the objective's ``loss_sum``.

    ``sequence_index``: int ``[n]``, the sequence of each decision point; ``weights``: ``[n]`` (``None``: 1).
    ``reduction`` (the objective's :class:`~vcrd_core.losses.objective.Reduction` value):

    * ``sequence_mean``: ``c_n = w_n / n_b`` (``n_b``: decision points of row ``n``'s sequence),
      count = sequences with at least one decision point;
    * ``sequence_sum``: ``c_n = w_n``, the same count;
    * ``token_mean``: ``c_n = w_n``, count = ``n``.
    """
    if not isinstance(sequence_index, torch.Tensor) or sequence_index.dim() != 1:
        raise VcrdError("row_coefficients: sequence_index must be a 1-D integer tensor [n]")
    n = sequence_index.numel()
    if weights is None:
        w = torch.ones(n, dtype=torch.float32, device=sequence_index.device)
    else:
        if not isinstance(weights, torch.Tensor) or weights.shape != (n,):
            got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
            raise VcrdError(f"row_coefficients: weights must be [n] = ({n},) like sequence_index, got {got}")
        w = weights.detach().to(torch.float32, copy=True)  # never the caller's storage: it is scaled or reused
    mode = getattr(reduction, "value", reduction)
    if mode == "token_mean":
        return w, n
    if mode not in ("sequence_mean", "sequence_sum"):
        raise VcrdError(
            f"row_coefficients: reduction={reduction!r} is unknown; expected sequence_mean, sequence_sum or token_mean"
        )
    if n == 0:
        return w, 0
    seq = sequence_index.long()
    _, inverse, counts = torch.unique(seq, return_inverse=True, return_counts=True)
    if mode == "sequence_mean":
        w = w / counts[inverse].to(w.dtype)
    return w, int(counts.numel())
