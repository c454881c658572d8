"""``vcrd teacher-cache``: the frozen teacher's top-k distribution at every decision point of a rollout store.

With static rollouts both streams' sequences are fixed and the teacher is frozen, so its distribution at each
decision point is the same in every step and every epoch. One pass of the teacher over the store's teacher
rollouts (the teacher-prefix stream) and student rollouts (the student-prefix stream) keeps, per response token
``t`` (the decision point whose distribution is the teacher's logits row ``t - 1``), its ``k`` most likely ids
over the tokenizer's real vocabulary, their log-probabilities at the objective's temperature and the log of the
remaining mass (:func:`vcrd_core.losses.sparse.topk_teacher`; the tail treatment is stated there).

Layout: ``DIR/teacher-cache.json`` (what the cache depends on: the store's identity, the teacher's fingerprint
and dtype, ``k``, the temperature and the vocabulary; a directory made with anything else is refused) and one
Parquet part per store chunk and role, ``DIR/data/<role>-<chunk>.parquet``, written atomically: an interrupted
run resumes with the missing parts only. One row per rollout: ``prompt_index``, ``sample_index``, ``points``
(its number of decision points ``n``) and three little-endian byte strings: ``ids`` int32 ``[n, k]``, ``logp``
float16 ``[n, k]`` and ``tail`` float32 ``[n]`` — ``6k + 4`` bytes per decision point (388 at k = 64, 1,540 at
k = 256), before Parquet's compression; ``--logp-dtype float32`` stores exact float32 log-probabilities instead
(``8k + 4`` bytes).
"""

from __future__ import annotations

import json
import shutil
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from rich.console import Console

from vcrd_core.config.models import RunConfig
from vcrd_core.errors import VcrdError
from vcrd_core.losses.sparse import SparseTeacher, topk_teacher
from vcrd_core.rollouts.run import store_dir
from vcrd_core.rollouts.sequences import RolloutSequence, StreamBatch
from vcrd_core.rollouts.store import RolloutStore, model_fingerprint
from vcrd_core.runs.atomic import atomic_path, atomic_write_text
from vcrd_core.runs.console import console as make_console
from vcrd_core.runs.console import progress
from vcrd_core.runs.models import load_causal_lm, pad_token_id
from vcrd_core.runs.preflight import preflight

CACHE_FILE = "teacher-cache.json"
#: The stored log-probabilities' dtypes (``--logp-dtype``; the identity records the format).
LOGP_DTYPES = {"float16": "<f2", "float32": "<f4"}
SCHEMA = pa.schema(
    [
        ("prompt_index", pa.int64()),
        ("sample_index", pa.int64()),
        ("points", pa.int32()),
        ("digest", pa.int64()),
        ("ids", pa.binary()),
        ("logp", pa.binary()),
        ("tail", pa.binary()),
    ]
)


def default_dir(config: RunConfig) -> Path:
    """Where the cache goes unless told: ``teacher-cache`` inside the run's rollout store."""
    return store_dir(config) / "teacher-cache"


def cache_identity(
    config: RunConfig, store: RolloutStore, *, k: int, temperature: float, vocab: int, logp_dtype: str = "float16"
) -> dict:
    """What the cached distributions depend on; a cache with another identity is refused, never mixed."""
    teacher = config.models.teacher
    manifest = store.manifest()
    return {
        "store": {"identity": manifest["identity"], "created": manifest.get("created")},  # --overwrite: a new one
        "teacher": {"fingerprint": model_fingerprint(teacher.path), "dtype": teacher.dtype},
        "k": min(int(k), int(vocab)),
        "temperature": float(temperature),
        "vocab_size": int(vocab),
        "format": {"ids": "int32", "logp": logp_dtype, "tail": "float32"},
    }


def encode_rows(sparse: SparseTeacher, counts: list[int], logp_dtype: str = "float16") -> list[dict[str, bytes | int]]:
    """Split a batch's :class:`SparseTeacher` (points in order, ``counts[b]`` of them for sequence ``b``) into one
    record per sequence of the stored byte strings."""
    ids = sparse.ids.cpu().numpy().astype("<i4")
    logp = sparse.logp.cpu().numpy().astype(LOGP_DTYPES[logp_dtype])
    tail = sparse.tail.cpu().numpy().astype("<f4")
    out, start = [], 0
    for n in counts:
        stop = start + n
        out.append(
            {"points": n, "ids": ids[start:stop].tobytes(), "logp": logp[start:stop].tobytes(),
             "tail": tail[start:stop].tobytes()}
        )  # fmt: skip
        start = stop
    return out


def sequence_digest(prompt: list[int], response: list[int]) -> int:
    """A CRC-32 of a rollout's token ids: a cached row is used only for the very sequence it was made from."""
    return zlib.crc32(np.asarray([*prompt, -1, *response], dtype="<i8").tobytes())


def decode_row(row: dict[str, Any], k: int, logp_dtype: str = "float16") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One stored record as ``(ids [n, k] int32, logp [n, k] float16 / float32, tail [n] float32)`` arrays."""
    n = int(row["points"])
    ids = np.frombuffer(row["ids"], dtype="<i4").reshape(n, k).copy()  # a writable copy in the stored dtypes:
    logp = np.frombuffer(row["logp"], dtype=LOGP_DTYPES[logp_dtype]).reshape(n, k).copy()  # widened per batch
    tail = np.frombuffer(row["tail"], dtype="<f4").reshape(n).copy()
    return ids, logp, tail


def teacher_topk_batches(
    teacher: torch.nn.Module,
    rows: list[dict[str, Any]],
    *,
    k: int,
    vocab: int,
    temperature: float,
    pad_id: int,
    device: torch.device,
    batch_size: int,
) -> Iterator[tuple[list[dict[str, Any]], SparseTeacher, list[int]]]:
    """One no-grad teacher pass over rollout ``rows``, ``batch_size`` at a time: per batch its rows, the teacher's
    top-k at their decision points (in order) and each row's number of points."""
    for b in range(0, len(rows), batch_size):
        batch_rows = rows[b : b + batch_size]
        seqs = [RolloutSequence(r["prompt_token_ids"], r["response_token_ids"]) for r in batch_rows]
        batch = StreamBatch.of(seqs, pad_id).to(device)
        with torch.no_grad():
            logits = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        sparse = topk_teacher(logits, batch.points.rows, k, vocab_size=vocab, temperature=temperature)
        del logits  # one [B, L, V] block at a time, not kept while the caller stores the rows
        yield batch_rows, sparse, batch.points.counts.tolist()


def _check_identity(root: Path, identity: dict[str, Any], overwrite: bool) -> bool:
    """Refuse a directory made with another setup, unless ``overwrite``; returns whether its parts are stale (the
    caller deletes them after marking the cache incomplete, so an interruption never leaves a "complete" cache
    without parts)."""
    info_file = root / CACHE_FILE
    if root.exists() and not root.is_dir():
        raise VcrdError(f"--out '{root}' exists and is not a directory")
    if info_file.is_file():
        previous = json.loads(info_file.read_text(encoding="utf-8")).get("identity") or {}
        wanted = json.loads(json.dumps(identity))
        if previous != wanted:
            if not overwrite:
                differs = ", ".join(k.replace("_", " ") for k in wanted if previous.get(k) != wanted[k])
                raise VcrdError(
                    f"teacher cache '{root}' was made with another {differs}; choose another --out or pass --overwrite"
                )
            return True
    elif root.exists() and any(root.iterdir()):
        raise VcrdError(f"--out '{root}' is not empty and holds no teacher cache; choose another directory")
    return False


def build_teacher_cache(
    config: RunConfig,
    *,
    k: int,
    out: str | Path | None = None,
    batch_size: int = 8,
    logp_dtype: str = "float16",
    overwrite: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Make (or finish) the cache of the run's store (see the module docstring); returns its summary.
    ``logp_dtype``: ``float16`` (the default: 2 bytes per id) or ``float32`` (exact: the cached run equals the
    exact one to float32 rounding when ``k`` is the vocabulary)."""
    if logp_dtype not in LOGP_DTYPES:
        raise VcrdError(f"--logp-dtype {logp_dtype!r}: valid: {', '.join(LOGP_DTYPES)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise VcrdError(f"--k must be an integer >= 1, got {k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise VcrdError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    console = console or make_console(stderr=True)
    store = RolloutStore(store_dir(config))
    store.check_complete()
    found = preflight(config, output_dir=False)
    vocab = int(found.vocab_size)
    temperature = float(config.objective.temperature)
    root = Path(out) if out is not None else default_dir(config)
    identity = cache_identity(config, store, k=k, temperature=temperature, vocab=vocab, logp_dtype=logp_dtype)
    stale = _check_identity(root, identity, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / CACHE_FILE, json.dumps({"identity": identity, "complete": False}, indent=2) + "\n")
    if stale:
        shutil.rmtree(root / "data", ignore_errors=True)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    layout = store.layout()
    missing = [
        r
        for r in layout.roles
        for c in range(layout.num_chunks)
        if not (root / "data" / f"{r}-{c:06d}.parquet").is_file()
    ]
    # a finished cache loads no teacher again
    teacher = load_causal_lm(config.models.teacher, "models.teacher.path").to(device).eval() if missing else None
    pad_id = pad_token_id(found.tokenizer)
    start = time.perf_counter()
    points = written = 0
    for role in layout.roles:
        with progress(console, "rollouts") as bar:
            label = f"teacher top-{identity['k']} on {role} rollouts' prompts"
            task = bar.add_task(label, total=layout.num_prompts, rate="")
            for c in range(layout.num_chunks):
                part = root / "data" / f"{role}-{c:06d}.parquet"
                if part.is_file():
                    bar.update(task, advance=len(layout.span(c)))
                    continue
                rows = store.read_chunk(role, c).to_pylist()
                records = []
                assert teacher is not None
                passes = teacher_topk_batches(
                    teacher, rows, k=k, vocab=vocab, temperature=temperature, pad_id=pad_id, device=device,
                    batch_size=batch_size,
                )  # fmt: skip
                for batch_rows, sparse, counts in passes:
                    for r, record in zip(batch_rows, encode_rows(sparse, counts, logp_dtype), strict=True):
                        digest = sequence_digest(r["prompt_token_ids"], r["response_token_ids"])
                        records.append(
                            {"prompt_index": r["prompt_index"], "sample_index": r["sample_index"], "digest": digest,
                             **record}
                        )  # fmt: skip
                    points += sum(counts)
                part.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(part) as tmp:
                    pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), tmp)
                written += 1
                bar.update(task, advance=len(layout.span(c)))
    parts = sorted((root / "data").glob("*.parquet"))
    size = sum(p.stat().st_size for p in parts)
    tables = [pq.read_table(p, columns=["points", "tail"]) for p in parts]
    counts = [t["points"].to_pylist() for t in tables]
    total = sum(len(c) for c in counts)
    tail_sum = sum(
        float(np.exp(np.frombuffer(b, dtype="<f4").astype(np.float64)).sum())
        for t in tables
        for b in t["tail"].to_pylist()
    )  # over every cached point (a resumed run's too)
    summary = {
        "identity": identity,
        "complete": True,
        "dir": str(root),
        "rollouts": total,
        "parts_written": written,
        "points_written": points,
        "points": sum(sum(c) for c in counts),
        "bytes": size,
        "tail_mass_mean": tail_sum / sum(sum(c) for c in counts) if total else None,
        "seconds": round(time.perf_counter() - start, 3),
    }
    atomic_write_text(root / CACHE_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


@dataclass
class TeacherCache:
    """A complete cache, read back: per ``(role, prompt_index, sample_index)`` the arrays of :func:`decode_row`."""

    root: Path
    identity: dict[str, Any]
    rows: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
    #: Per rollout, the CRC-32 of the token ids it was made from (:func:`sequence_digest`).
    digests: dict[tuple[str, int, int], int]

    @property
    def k(self) -> int:
        return int(self.identity["k"])

    @classmethod
    def open(cls, root: str | Path, roles: tuple[str, ...] = ("teacher", "student")) -> TeacherCache:
        root = Path(root)
        info_file = root / CACHE_FILE
        if not info_file.is_file():
            raise VcrdError(
                f"'{root}' holds no teacher cache ({CACHE_FILE} missing); make it with `vcrd teacher-cache`"
            )
        info = json.loads(info_file.read_text(encoding="utf-8"))
        if not info.get("complete"):
            raise VcrdError(f"teacher cache '{root}' is incomplete; run `vcrd teacher-cache` again to finish it")
        identity, k = info["identity"], int(info["identity"]["k"])
        logp_dtype = identity["format"]["logp"]
        rows: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        digests: dict[tuple[str, int, int], int] = {}
        for part in sorted((root / "data").glob("*.parquet")):
            role = part.name.rsplit("-", 1)[0]
            if role not in roles:
                continue
            for row in pq.read_table(part).to_pylist():
                key = (role, int(row["prompt_index"]), int(row["sample_index"]))
                rows[key] = decode_row(row, k, logp_dtype)
                digests[key] = int(row["digest"])
        return cls(root, identity, rows, digests)

    def check_matches(self, config: RunConfig, store: RolloutStore, vocab: int) -> None:
        """Refuse (one line) a cache made for another store, teacher, temperature or vocabulary than the run's."""
        wanted = cache_identity(config, store, k=self.k, temperature=config.objective.temperature, vocab=vocab)
        for key in ("store", "teacher", "temperature", "vocab_size"):
            if json.loads(json.dumps(wanted[key])) != self.identity.get(key):
                raise VcrdError(
                    f"teacher cache '{self.root}' was made with another {key.replace('_', ' ')} than this run's; "
                    f"make it again with `vcrd teacher-cache CONFIG --out {self.root} --k {self.k} --overwrite`"
                )

    def sparse(
        self, role: str, prompt_index: int, sample_index: int, points: int, digest: int | None = None
    ) -> SparseTeacher:
        """The first ``points`` decision points of one rollout (a response cut at ``data.max_length`` keeps its
        first ones) as a :class:`SparseTeacher` in the stored dtypes; ``digest``: the rollout's
        :func:`sequence_digest`, checked against the one the row was made from."""
        key = (role, int(prompt_index), int(sample_index))
        if key not in self.rows:
            raise VcrdError(f"teacher cache '{self.root}' has no {role} rollout {prompt_index}/{sample_index}")
        if digest is not None and digest != self.digests[key]:
            raise VcrdError(
                f"teacher cache '{self.root}': {role} rollout {prompt_index}/{sample_index} is not the sequence the "
                "cache was made from (the store was rewritten?); make it again with `vcrd teacher-cache --overwrite`"
            )
        ids, logp, tail = self.rows[key]
        if points > len(tail):
            raise VcrdError(
                f"teacher cache '{self.root}': {role} rollout {prompt_index}/{sample_index} has {len(tail)} cached "
                f"decision points, the batch asks for {points}"
            )
        return SparseTeacher(  # views: no copy per rollout
            torch.from_numpy(ids[:points]),
            torch.from_numpy(logp[:points]),
            torch.from_numpy(tail[:points]),
            float(self.identity["temperature"]),
        )
