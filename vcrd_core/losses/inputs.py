"""What the two memory-bounded divergence engines (:mod:`vcrd_core.losses.chunked` from logits,
:mod:`vcrd_core.losses.fused_linear` from hidden states and lm_heads) share about their inputs: what they call on
a divergence (:class:`DivergenceValue`), the chunk-size budget (:func:`default_chunk_size`), reading flat rows of
a ``[..., D]`` tensor, and the checks of ``vocab_size``, ``temperature``, ``chunk_size`` and ``rows``. Errors are
one line each and start with the engine's name (``where``)."""

from __future__ import annotations

import math
from typing import Protocol

import torch

from vcrd_core.errors import VcrdError

#: Elements of one default ``[chunk, V]`` float32 block (128 MiB): 220 rows at V = 151,936.
DEFAULT_BLOCK_ELEMENTS = 2**25


def default_chunk_size(vocab_size: int) -> int:
    """Rows per chunk so that one ``[chunk, V]`` float32 block stays near :data:`DEFAULT_BLOCK_ELEMENTS`."""
    return max(1, DEFAULT_BLOCK_ELEMENTS // max(1, vocab_size))


class DivergenceValue(Protocol):
    """What the engines read of a divergence (a :class:`vcrd_core.Divergence` plugin): ``D`` per row of ``[n, V]``
    float32 log-probabilities, ``[n]``, differentiable in ``student_logp``. A protocol, so that the engines need not
    import the plugin base class (which sits above them)."""

    def value(
        self, teacher_logp: torch.Tensor, student_logp: torch.Tensor, **row_params: torch.Tensor
    ) -> torch.Tensor: ...


class FlatRows:
    """Reads rows of a ``[..., D]`` tensor (its first ``columns`` columns, default all) by flat row index
    without copying the whole tensor.

    ``x.view(-1, D)`` is used when the strides allow it; otherwise (a non-contiguous slice such as
    ``logits[:, :-1]``) flat indices are unravelled over the leading shape and read by advanced
    indexing, which copies only the requested rows.
    """

    def __init__(self, x: torch.Tensor, columns: int | None = None) -> None:
        self.lead = tuple(x.shape[:-1])
        narrowed = x if columns is None else x[..., :columns]
        try:
            self.flat: torch.Tensor | None = narrowed.view(-1, narrowed.shape[-1])
            self.x = None
        except RuntimeError:
            self.flat = None
            self.x = narrowed

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        if self.flat is not None:
            return self.flat.index_select(0, rows)
        assert self.x is not None
        return self.x[torch.unravel_index(rows, self.lead)]


def is_number(x: object) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def checked_vocab(where: str, vocab_size: int | None, teacher: int, student: int, inputs: str) -> int:
    """The real vocabulary: ``vocab_size``, or the common width of the teacher's and the student's ``inputs``
    (``"logits"``, ``"lm_heads"``) when it is None."""
    if vocab_size is None:
        if teacher != student:
            raise VcrdError(
                f"{where}: teacher and student {inputs} have different vocabulary sizes ({teacher} vs {student}, "
                "padded lm_heads); pass vocab_size=<the tokenizer's real vocabulary size>"
            )
        return student
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 1 <= vocab_size <= min(teacher, student):
        raise VcrdError(
            f"{where}: vocab_size={vocab_size!r} is invalid; expected an int in [1, {min(teacher, student)}] "
            f"(the teacher {inputs} cover {teacher} ids, the student {inputs} {student})"
        )
    return vocab_size


def check_temperature_and_chunk_size(where: str, temperature: float, chunk_size: int | None) -> None:
    if not (is_number(temperature) and temperature > 0):
        raise VcrdError(f"{where}: temperature={temperature!r} is invalid; expected a finite number > 0")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise VcrdError(f"{where}: chunk_size={chunk_size!r} is invalid; expected an int >= 1 or None")


def check_rows(where: str, rows: object, lead: tuple[int, ...]) -> int:
    """``rows`` (None: every row) must be a 1-D int tensor of flat indices into ``lead``, the leading dims;
    returns their number of rows. Reads the range on the host: one device synchronisation."""
    m = math.prod(lead)
    if rows is None:
        return m
    if not isinstance(rows, torch.Tensor) or rows.dim() != 1 or rows.dtype not in (torch.int64, torch.int32):
        raise VcrdError(f"{where}: rows must be a 1-D int64 tensor of flat row indices (decision points)")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= m):
        raise VcrdError(
            f"{where}: rows must lie in [0, {m}) (the flattened leading dims {lead}); "
            f"got values in [{int(rows.min())}, {int(rows.max())}]"
        )
    return m
