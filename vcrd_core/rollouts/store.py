"""The rollout store: Parquet files that pandas and ``datasets`` open directly, and a manifest.

Layout of a store directory::

    manifest.json                      what made it (models' fingerprints, tokenizer, generator, sampling,
                                       prompt file and its sha256, vcrd version) and how it is cut in chunks
    data/teacher-000000.parquet        the teacher's rollouts of prompts [0, chunk_size) of the prompt list
    data/student-000000.parquet        ...
    summary.json                       what `vcrd rollouts` last reported (summary-shard-I-of-N.json per shard)

A chunk is ``chunk_size`` consecutive prompts of one role; it is the unit of work: written whole and
atomically (a temporary file beside it, then ``os.replace``), so an interrupted run leaves complete chunks
only and a rerun generates exactly the missing ones (no duplicate, no gap). ``--shard i/n`` gives process
``i`` the chunks ``c`` with ``c % n == i``: disjoint files of one store, read together as one.

Rows (one per sample): ``prompt_index`` (the prompt's row in its source), ``sample_index``, ``role``
(``teacher``/``student``), ``prompt_token_ids``, ``response_token_ids`` (as sampled, EOS included),
``text``, ``finish_reason`` (``stop``/``length``), ``example`` (the prompt's
:class:`~vcrd_core.data.examples.Example` as JSON: prompt text, reference answer, tests, other fields; what
judges receive), and the columns ``vcrd score`` fills, one value per
decision point (= per response token): ``proposals`` (the other model's proposal at that prefix),
``same_token``, ``r_s``, ``r_t`` and ``weights`` (this role's stream: ``w^T`` on teacher rollouts, ``w^S``
on student rollouts). They are null until scored.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vcrd_core import __version__
from vcrd_core.decision_points import Stream
from vcrd_core.errors import VcrdError
from vcrd_core.judging.score_records import ScoreRecord
from vcrd_core.runs.atomic import atomic_path, atomic_write_text
from vcrd_core.runs.provenance import first_difference

FORMAT = "vcrd-rollouts"
#: 2: rows carry their ``example`` (format 1 had none; such a store is refused with how to rebuild it).
FORMAT_VERSION = 2
ROLES = ("teacher", "student")
SCORE_COLUMNS = ("proposals", "same_token", "r_s", "r_t", "weights")
MANIFEST = "manifest.json"

SCHEMA = pa.schema(
    [
        ("prompt_index", pa.int64()),
        ("sample_index", pa.int32()),
        ("role", pa.string()),
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("response_token_ids", pa.list_(pa.int32())),
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("example", pa.string()),
        ("proposals", pa.list_(pa.int32())),
        ("same_token", pa.list_(pa.bool_())),
        ("r_s", pa.list_(pa.float32())),
        ("r_t", pa.list_(pa.float32())),
        ("weights", pa.list_(pa.float32())),
    ]
)

_CHUNK = re.compile(r"^(teacher|student)-(\d{6})\.parquet$")
#: Files up to this size are fingerprinted by content; larger (weights) by name, size and mtime.
CONTENT_HASH_LIMIT = 64 << 20


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (0-based ``i``) as ``(i, n)``; one-line VcrdError otherwise. None is ``(0, 1)``."""
    if text is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise VcrdError(f"--shard '{text}': expected I/N, e.g. 0/4 (process I of N, I from 0 to N-1)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise VcrdError(f"--shard {text}: I must be in 0..N-1 (0-based) and N at least 1")
    return i, n


def _hash_file(h: Any, f: Path) -> None:
    stat = f.stat()
    h.update(f"{f.name}\0{stat.st_size}\0".encode())
    if stat.st_size <= CONTENT_HASH_LIMIT:
        with f.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
    else:
        h.update(str(stat.st_mtime_ns).encode())


def model_fingerprint(path: str | Path) -> str:
    """A fingerprint of a model directory: the contents of its small files (config.json, tokenizer files,
    small weights) and the names, sizes and modification times of large ones (weights)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.is_file():
            _hash_file(h, f)
    return h.hexdigest()[:16]


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)


def tokenizer_fingerprint(path: str | Path) -> str:
    """A fingerprint of the tokenizer files in ``path``."""
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = Path(path) / name
        if f.is_file():
            _hash_file(h, f)
    return h.hexdigest()[:16]


@dataclass
class Layout:
    """How a store is cut: ``num_prompts`` prompts in chunks of ``chunk_size``, for ``roles``."""

    num_prompts: int
    chunk_size: int
    roles: tuple[str, ...]

    @property
    def num_chunks(self) -> int:
        return -(-self.num_prompts // self.chunk_size)

    def chunks_of_shard(self, shard: int, num_shards: int) -> list[int]:
        return [c for c in range(self.num_chunks) if c % num_shards == shard]

    def span(self, chunk: int) -> range:
        return range(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, self.num_prompts))


class RolloutStore:
    """A store directory (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.manifest_path = self.root / MANIFEST

    # -- manifest ---------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            raise VcrdError(f"'{self.root}' is not a rollout store (no manifest.json); run `vcrd rollouts` first")
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise VcrdError(f"{self.manifest_path}: not a valid manifest ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise VcrdError(f"{self.manifest_path}: not a vcrd rollout store manifest")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise VcrdError(
                f"rollout store '{self.root}' has format version {version}, this vcrd reads version {FORMAT_VERSION} "
                "(its rows carry each prompt's example); rebuild it with `vcrd rollouts CONFIG --overwrite`"
            )
        return manifest

    def layout(self) -> Layout:
        m = self.manifest()["layout"]
        return Layout(m["num_prompts"], m["chunk_size"], tuple(m["roles"]))

    def open(self, identity: dict[str, Any], layout: Layout, *, overwrite: bool = False, **record: Any) -> None:
        """Create the store, or check that the existing one was made with the same ``identity`` (models,
        tokenizer, generator, sampling, prompts) and ``layout``; refused otherwise unless ``overwrite``
        (then its rollouts are deleted first)."""
        if self.root.exists() and not self.root.is_dir():
            raise VcrdError(f"rollout store '{self.root}' exists and is not a directory")
        if self.manifest_path.exists() and not overwrite:
            old = self.manifest()
            wanted = {"identity": identity, "layout": layout.__dict__ | {"roles": list(layout.roles)}}
            for key in ("identity", "layout"):
                diff = first_difference(old.get(key), json.loads(json.dumps(wanted[key])), key)
                if diff:
                    raise VcrdError(
                        f"rollout store '{self.root}' was made differently ({diff}); use another store directory "
                        "(rollouts.store) or pass --overwrite to replace it"
                    )
            return
        if overwrite and self.root.is_dir():
            shutil.rmtree(self.data, ignore_errors=True)
            for f in self.root.glob("summary*.json"):
                f.unlink()
        elif self.root.is_dir() and not self.manifest_path.exists():
            # another shard process may be creating this store right now: its manifest's temporary file and
            # an empty data/ are not "something else"; anything more is
            foreign = [f for f in self.root.iterdir() if not (f.name.startswith(".") or f == self.data)]
            if foreign or self.files():
                raise VcrdError(
                    f"'{self.root}' is not empty and holds no rollout store; choose an empty or new directory"
                )
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "vcrd": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "identity": identity,
            "layout": {"num_prompts": layout.num_prompts, "chunk_size": layout.chunk_size, "roles": list(layout.roles)},
            **record,
        }
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2) + "\n")
        self.data.mkdir(exist_ok=True)  # after the manifest: a concurrent shard never sees data/ without it

    # -- chunks -----------------------------------------------------------------------------------------
    def chunk_path(self, role: str, chunk: int) -> Path:
        return self.data / f"{role}-{chunk:06d}.parquet"

    def files(self) -> list[Path]:
        return sorted(f for f in self.data.glob("*.parquet") if _CHUNK.match(f.name)) if self.data.is_dir() else []

    def done(self, role: str) -> set[int]:
        """The chunks of ``role`` already written."""
        out = set()
        for f in self.files():
            m = _CHUNK.match(f.name)
            if m and m.group(1) == role:
                out.add(int(m.group(2)))
        return out

    def missing(self) -> list[tuple[str, int]]:
        layout = self.layout()
        return [(r, c) for r in layout.roles for c in range(layout.num_chunks) if c not in self.done(r)]

    def write_chunk(self, role: str, chunk: int, rows: list[dict[str, Any]] | pa.Table) -> Path:
        """Write one chunk atomically (:func:`vcrd_core.runs.atomic.atomic_path`)."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(_with_score_columns(rows), schema=SCHEMA)
        target = self.chunk_path(role, chunk)
        for stale in self.data.glob(f".{target.name}.*.tmp"):  # left by a killed run (this chunk is ours)
            stale.unlink(missing_ok=True)
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp)
        return target

    def read_chunk(self, role: str, chunk: int) -> pa.Table:
        return pq.read_table(self.chunk_path(role, chunk), schema=SCHEMA)

    def read(self, roles: Iterable[str] | None = None) -> pa.Table:
        """Every row of the store, sorted by role (teacher first), prompt and sample index."""
        files = [f for f in self.files() if roles is None or _CHUNK.match(f.name).group(1) in set(roles)]  # type: ignore[union-attr]
        if not files:
            return SCHEMA.empty_table()
        table = pa.concat_tables([pq.read_table(f, schema=SCHEMA) for f in files])
        student_last = pc.cast(pc.equal(table["role"], "student"), pa.int8())
        keyed = table.append_column("_role_order", student_last)
        keyed = keyed.sort_by(
            [("_role_order", "ascending"), ("prompt_index", "ascending"), ("sample_index", "ascending")]
        )
        return keyed.drop_columns(["_role_order"])

    def score_records(self) -> list[ScoreRecord]:
        """The scored rows as :class:`ScoreRecord` (one per rollout: id ``<role>-<prompt>/s<sample>``, the
        stream its role's rollouts feed), what ``vcrd analyze`` reads; unscored rows are left out. Where the
        judge's ``r_t`` scores no teacher token (``same_token`` null), no point is marked same-token."""
        table = self.read()
        records = []
        for row in table.select(
            ["role", "prompt_index", "sample_index", "r_s", "r_t", "same_token", "weights"]
        ).to_pylist():
            if row["r_s"] is None:
                continue
            stream = Stream.of_role(row["role"])
            same = row["same_token"] if row["same_token"] is not None else [False] * len(row["r_s"])
            ident = f"{row['role']}-{row['prompt_index']}/s{row['sample_index']}"
            records.append(ScoreRecord(ident, stream, row["r_s"], row["r_t"], same, row["weights"]))
        return records

    def check_complete(self) -> None:
        missing = self.missing()
        if missing:
            role, chunk = missing[0]
            raise VcrdError(
                f"rollout store '{self.root}' is incomplete: {len(missing)} chunk(s) missing (first: {role} "
                f"chunk {chunk}); rerun `vcrd rollouts` (every shard) to finish it"
            )


def _with_score_columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{c: None for c in SCORE_COLUMNS} | r for r in rows]
