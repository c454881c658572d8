"""On-disk format of scored rollouts: JSON Lines, one record per (rollout, stream).

The offline-scoring pipeline writes these files and ``vcrd analyze`` reads them. One line::

    {"id": "gsm8k-17/s0", "stream": "teacher_prefix",
     "r_s": [0.91, 0.12], "r_t": [0.88, 0.75], "same_token": [true, false], "weights": [1.0, 0.16]}

``r_s[j]`` / ``r_t[j]`` are the judge scores ``r(c_{t_j}, a^S_{t_j})`` / ``r(c_{t_j}, a^T_{t_j})`` at the
``j``-th decision point of the rollout (SPEC's indexing convention), ``same_token[j]`` says whether
both proposals were the same token there (parity by definition), and the optional ``weights`` are
the weights the run used. Lists have one entry per decision point, in order, all of equal length.
Scores lie in ``[0, 1]``; weights are finite and non-negative. Nothing NaN is ever written or read.

:class:`ScoreRecord` is the schema (a strict pydantic model): lines are read with ``model_validate_json``
and written with ``model_dump_json``, and any other store (a Parquet row) can be validated against it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from vcrd_core.decision_points import DecisionPoints, Stream
from vcrd_core.errors import VcrdError
from vcrd_core.plugins.validation import first_error
from vcrd_core.runs.atomic import atomic_writer

#: A judge score: a number (not a bool, not a string) in [0, 1], never NaN.
Score = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
#: A weight: a finite number >= 0.
Weight = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]


class ScoreRecord(BaseModel):
    """The judge scores at every decision point of one rollout in one stream.

    A strict, frozen pydantic model: the lists accept JSON arrays (and Python lists or tuples, e.g. a
    Parquet row's) but their items must be numbers or ``true``/``false`` themselves (no ``"0.5"``, no
    ``0``/``1`` flags), scores in ``[0, 1]``, weights finite and ``>= 0``, no NaN, all lists of equal
    length. Validate a row of another store with ``ScoreRecord.model_validate(row)`` (errors to one line
    with :func:`record_error`). Built in Python, positionally or by keyword, an invalid record is one
    :class:`VcrdError` line naming it, so it can neither be written nor be read back.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Strict()]
    stream: Stream
    r_s: tuple[Score, ...]
    r_t: tuple[Score, ...]
    same_token: tuple[Annotated[bool, Strict()], ...]
    weights: tuple[Weight, ...] | None = None

    def __init__(
        self,
        id: str,
        stream: Stream | str,
        r_s: Sequence[float],
        r_t: Sequence[float],
        same_token: Sequence[bool],
        weights: Sequence[float] | None = None,
    ) -> None:
        try:
            super().__init__(id=id, stream=stream, r_s=r_s, r_t=r_t, same_token=same_token, weights=weights)
        except ValidationError as exc:
            shown = stream.value if isinstance(stream, Stream) else stream
            raise VcrdError(f"score record {id!r} ({shown}): {record_error(exc)}") from None

    # Positional construction only: validation (model_validate, model_validate_json) goes straight to
    # pydantic-core without calling this __init__, as for pydantic's own RootModel.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @model_validator(mode="after")
    def _one_entry_per_decision_point(self) -> ScoreRecord:
        lengths = {"r_s": len(self.r_s), "r_t": len(self.r_t), "same_token": len(self.same_token)}
        if self.weights is not None:
            lengths["weights"] = len(self.weights)
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k}={n}" for k, n in lengths.items())
            raise ValueError(f"lists must have one entry per decision point, but their lengths differ ({shown})")
        return self

    @property
    def n_points(self) -> int:
        """Number of decision points."""
        return len(self.r_s)


def record_error(exc: ValidationError) -> str:
    """A :class:`ScoreRecord` validation error as one line: the field path (``r_s.3``) and what is wrong."""
    path, message = first_error(exc, ScoreRecord)
    return f"{path}: {message}" if path else message


def records_from_batch(
    ids: Sequence[str],
    stream: Stream | str,
    r_s: torch.Tensor,
    r_t: torch.Tensor,
    points: DecisionPoints,
    same_token: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> list[ScoreRecord]:
    """One record per row of a padded ``[B, L]`` batch, keeping only its decision points, in order.

    This is how a scoring pipeline turns :class:`vcrd_core.JudgeScores` (and the weights it applied)
    into records.
    """
    mask = points.mask
    if len(ids) != mask.shape[0]:
        raise VcrdError(f"records_from_batch: {len(ids)} ids for a batch of {mask.shape[0]} rows")
    tensors = {
        "r_s": r_s,
        "r_t": r_t,
        "same_token": same_token,
        **({"weights": weights} if weights is not None else {}),
    }
    for key, tensor in tensors.items():
        if tensor.shape != mask.shape:
            raise VcrdError(f"records_from_batch: {key} has shape {tuple(tensor.shape)}, expected {tuple(mask.shape)}")
    out = []
    for row, ident in enumerate(ids):
        keep = mask[row]
        out.append(
            ScoreRecord(
                ident,
                stream,
                r_s[row][keep].double().tolist(),
                r_t[row][keep].double().tolist(),
                same_token[row][keep].bool().tolist(),
                None if weights is None else weights[row][keep].double().tolist(),
            )
        )
    return out


def write_records(path: str | os.PathLike[str], records: Iterable[ScoreRecord]) -> int:
    """Write ``records`` as JSON Lines to ``path``; returns how many were written.

    Atomic: lines go to a temporary file in the same directory, which then replaces ``path`` with
    one ``os.replace``. If anything fails midway, an existing ``path`` is left exactly as it was.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise VcrdError(f"cannot write score records to {target}: directory {target.parent} does not exist")
    count = 0
    with atomic_writer(target) as fh:
        for record in records:
            fh.write(record.model_dump_json(exclude_none=True) + "\n")
            count += 1
    return count


def read_records(path: str | os.PathLike[str]) -> list[ScoreRecord]:
    """Every record of a JSON Lines file (blank lines are skipped).

    Each problem is one :class:`VcrdError` line starting with ``file:line`` (bad JSON, missing or
    unknown fields, unequal list lengths, unknown stream, scores outside [0, 1] or NaN, a repeated
    ``(id, stream)`` pair).
    """
    source = Path(path)
    if not source.exists():
        raise VcrdError(f"score records file not found: {source}")
    if not source.is_file():
        raise VcrdError(f"score records path is not a file: {source}")
    records: list[ScoreRecord] = []
    seen: dict[tuple[str, Stream], int] = {}
    try:
        with source.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{source}:{lineno}"
                try:
                    record = ScoreRecord.model_validate_json(line.rstrip("\r\n"))
                except ValidationError as exc:
                    raise VcrdError(f"{where}: {record_error(exc)}") from None
                key = (record.id, record.stream)
                if key in seen:
                    raise VcrdError(
                        f"{where}: duplicate record for id {record.id!r}, stream {record.stream.value} "
                        f"(first at line {seen[key]})"
                    )
                seen[key] = lineno
                records.append(record)
    except UnicodeDecodeError as exc:
        raise VcrdError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return records
