"""On-disk format of scored rollouts: JSON Lines, one record per (rollout, stream).

The offline-scoring pipeline writes these files and ``vcrd analyze`` reads them. One line::

    {"id": "gsm8k-17/s0", "stream": "teacher_prefix",
     "r_s": [0.91, 0.12], "r_t": [0.88, 0.75], "same_token": [true, false], "weights": [1.0, 0.16]}

``r_s[j]`` / ``r_t[j]`` are the judge scores ``r(c_{t_j}, a^S_{t_j})`` / ``r(c_{t_j}, a^T_{t_j})`` at the
``j``-th decision point of the rollout (SPEC's indexing convention), ``same_token[j]`` says whether
both proposals were the same token there (parity by definition), and the optional ``weights`` are
the weights the run used. Lists have one entry per decision point, in order, all of equal length.
Scores lie in ``[0, 1]``; weights are finite and non-negative. Nothing NaN is ever written or read.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vcrd_core.decision_points import DecisionPoints, Stream
from vcrd_core.errors import VcrdError
from vcrd_core.runs.atomic import atomic_writer

#: Keys of one record; ``weights`` is optional.
REQUIRED_KEYS: tuple[str, ...] = ("id", "stream", "r_s", "r_t", "same_token")
OPTIONAL_KEYS: tuple[str, ...] = ("weights",)
_STREAMS = ", ".join(s.value for s in Stream)


@dataclass(frozen=True)
class ScoreRecord:
    """The judge scores at every decision point of one rollout in one stream.

    Construction validates the record (one :class:`VcrdError` line naming the record), so an
    invalid record can neither be written nor be read back.
    """

    id: str
    stream: Stream  # a stream's string value is accepted and converted
    r_s: tuple[float, ...]
    r_t: tuple[float, ...]
    same_token: tuple[bool, ...]
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # Accept a stream's string value and any sequences; store the enum and tuples.
        if isinstance(self.stream, str) and self.stream in {s.value for s in Stream}:
            object.__setattr__(self, "stream", Stream(self.stream))
        for key in ("r_s", "r_t", "same_token", "weights"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, key, tuple(value))
        problem = _problem(self)
        if problem:
            raise VcrdError(f"score record {self.id!r} ({_stream_text(self.stream)}): {problem}")

    @property
    def n_points(self) -> int:
        """Number of decision points."""
        return len(self.r_s)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of one line (``weights`` only when present)."""
        out: dict[str, Any] = {
            "id": self.id,
            "stream": Stream(self.stream).value,
            "r_s": list(self.r_s),
            "r_t": list(self.r_t),
            "same_token": list(self.same_token),
        }
        if self.weights is not None:
            out["weights"] = list(self.weights)
        return out

    @classmethod
    def from_dict(cls, obj: Any) -> ScoreRecord:
        """A record from one parsed JSON line; a :class:`VcrdError` (without location) if malformed."""
        if not isinstance(obj, dict):
            raise VcrdError(f"expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in REQUIRED_KEYS if k not in obj]
        if missing:
            raise VcrdError(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
        unknown = sorted(set(obj) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
        if unknown:
            valid = ", ".join(REQUIRED_KEYS + OPTIONAL_KEYS)
            raise VcrdError(f"unknown field {unknown[0]!r}; valid fields: {valid}")
        if not isinstance(obj["id"], str):
            raise VcrdError(f"field 'id' must be a string, got {type(obj['id']).__name__}")
        ident = obj["id"]
        if not isinstance(obj["stream"], str) or obj["stream"] not in {s.value for s in Stream}:
            raise VcrdError(f"record {ident!r}: unknown stream {obj['stream']!r}; valid: {_STREAMS}")
        for key in ("r_s", "r_t", "same_token", *(("weights",) if obj.get("weights") is not None else ())):
            if not isinstance(obj[key], list):
                raise VcrdError(f"record {ident!r}: field {key!r} must be a list, got {type(obj[key]).__name__}")
        for key in ("r_s", "r_t", "weights"):
            values = obj.get(key)
            if values is None:
                continue
            bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))), None)
            if bad is not None:
                raise VcrdError(f"record {ident!r}: field {key!r} must hold numbers, found {bad!r}")
        bad_flag = next((v for v in obj["same_token"] if not isinstance(v, bool)), None)
        if bad_flag is not None:
            raise VcrdError(f"record {ident!r}: field 'same_token' must hold true/false, found {bad_flag!r}")
        weights = obj.get("weights")
        try:
            return cls(
                id=ident,
                stream=Stream(obj["stream"]),
                r_s=tuple(float(v) for v in obj["r_s"]),
                r_t=tuple(float(v) for v in obj["r_t"]),
                same_token=tuple(obj["same_token"]),
                weights=None if weights is None else tuple(float(v) for v in weights),
            )
        except VcrdError as exc:
            raise VcrdError(str(exc).removeprefix("score ")) from None
        except OverflowError:
            raise VcrdError(f"record {ident!r}: a number is too large for a float") from None


def _stream_text(stream: Any) -> str:
    return stream.value if isinstance(stream, Stream) else str(stream)


def _problem(record: ScoreRecord) -> str | None:
    """What is wrong with ``record`` (one phrase), or ``None``."""
    if not isinstance(record.stream, Stream):
        return f"unknown stream {record.stream!r}; valid: {_STREAMS}"
    lengths = {"r_s": len(record.r_s), "r_t": len(record.r_t), "same_token": len(record.same_token)}
    if record.weights is not None:
        lengths["weights"] = len(record.weights)
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k}={n}" for k, n in lengths.items())
        return f"lists must have one entry per decision point, but their lengths differ ({shown})"
    for key in ("r_s", "r_t"):
        for j, value in enumerate(getattr(record, key)):
            if math.isnan(value):
                return f"{key}[{j}] is NaN; judge scores must lie in [0, 1]"
            if not 0.0 <= value <= 1.0:
                return f"{key}[{j}] = {value!r} is outside [0, 1]; judge scores must lie in [0, 1]"
    for j, value in enumerate(record.weights or ()):
        if not (math.isfinite(value) and value >= 0.0):
            return f"weights[{j}] = {value!r}; weights must be finite and non-negative"
    return None


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
    stream = Stream(stream)
    out = []
    for row, ident in enumerate(ids):
        keep = mask[row]
        out.append(
            ScoreRecord(
                id=ident,
                stream=stream,
                r_s=tuple(r_s[row][keep].double().tolist()),
                r_t=tuple(r_t[row][keep].double().tolist()),
                same_token=tuple(bool(v) for v in same_token[row][keep].tolist()),
                weights=None if weights is None else tuple(weights[row][keep].double().tolist()),
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
            if not isinstance(record, ScoreRecord):
                raise VcrdError(f"write_records expects ScoreRecord objects, got {type(record).__name__}")
            fh.write(json.dumps(record.to_dict(), allow_nan=False, separators=(",", ":")) + "\n")
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
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise VcrdError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
                try:
                    record = ScoreRecord.from_dict(obj)
                except VcrdError as exc:
                    raise VcrdError(f"{where}: {exc}") from None
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
