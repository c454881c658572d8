"""The rollout store: atomic chunks, identity checks, shards, and readers (pandas, datasets)."""

from __future__ import annotations

from pathlib import Path

import datasets
import pandas as pd
import pytest

from vcrd_core.errors import VcrdError
from vcrd_core.rollouts.generator import Sample, derive_seed, trim_response
from vcrd_core.rollouts.store import SCORE_COLUMNS, Layout, RolloutStore, model_fingerprint, parse_shard

IDENTITY = {"models": {"teacher": {"fingerprint": "a"}}, "sampling": {"temperature": 1.0}}


def rows(role: str, span: range, n: int = 2) -> list[dict]:
    return [
        {
            "prompt_index": i,
            "sample_index": j,
            "role": role,
            "prompt_token_ids": [1, 2, i],
            "response_token_ids": [3] * (j + 1),
            "text": "x" * (j + 1),
            "finish_reason": "stop",
        }
        for i in span
        for j in range(n)
    ]


def filled(root: Path, layout: Layout) -> RolloutStore:
    store = RolloutStore(root)
    store.open(IDENTITY, layout)
    for role in layout.roles:
        for c in range(layout.num_chunks):
            store.write_chunk(role, c, rows(role, layout.span(c)))
    return store


def test_parse_shard() -> None:
    assert parse_shard(None) == (0, 1)
    assert parse_shard("1/4") == (1, 4)
    for bad in ("3/2", "2/2", "0/0", "a/b", "1", "-1/2"):
        with pytest.raises(VcrdError) as err:
            parse_shard(bad)
        assert "\n" not in str(err.value) and "--shard" in str(err.value)


def test_layout_shards_are_disjoint_and_cover() -> None:
    layout = Layout(num_prompts=10, chunk_size=3, roles=("teacher",))
    assert layout.num_chunks == 4 and list(layout.span(3)) == [9]
    parts = [layout.chunks_of_shard(i, 3) for i in range(3)]
    assert sorted(c for p in parts for c in p) == [0, 1, 2, 3]
    assert not set(parts[0]) & set(parts[1])


def test_write_read_and_readers(tmp_path: Path) -> None:
    layout = Layout(5, 2, ("teacher", "student"))
    store = filled(tmp_path / "s", layout)
    assert store.missing() == []
    store.check_complete()
    table = store.read()
    assert table.num_rows == 20
    keys = list(
        zip(
            table["role"].to_pylist(), table["prompt_index"].to_pylist(), table["sample_index"].to_pylist(), strict=True
        )
    )
    assert keys == sorted(keys, key=lambda k: (k[0] != "teacher", k[1], k[2])) and len(set(keys)) == 20
    assert all(table[c].null_count == 20 for c in SCORE_COLUMNS)
    (store.data / ".teacher-000000.parquet.123.tmp").write_bytes(b"half")  # a killed writer's leftover
    frame = pd.read_parquet(store.data)
    assert len(frame) == 20 and set(frame.columns) >= {"response_token_ids", "r_s", "weights"}
    ds = datasets.load_dataset("parquet", data_files=str(store.data / "*.parquet"), split="train")
    assert ds.num_rows == 20


def test_incomplete_store(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "s")
    store.open(IDENTITY, Layout(5, 2, ("teacher",)))
    store.write_chunk("teacher", 1, rows("teacher", range(2, 4)))
    assert store.missing() == [("teacher", 0), ("teacher", 2)]
    with pytest.raises(VcrdError, match="incomplete: 2 chunk"):
        store.check_complete()


def test_other_identity_refused_unless_overwrite(tmp_path: Path) -> None:
    layout = Layout(4, 2, ("teacher",))
    store = filled(tmp_path / "s", layout)
    before = sorted(p.name for p in store.files())
    other = {"models": {"teacher": {"fingerprint": "b"}}, "sampling": {"temperature": 1.0}}
    with pytest.raises(VcrdError, match=r"made differently \(identity.models.teacher.fingerprint: \"a\" then"):
        RolloutStore(tmp_path / "s").open(other, layout)
    with pytest.raises(VcrdError, match=r"layout\.chunk_size"):
        RolloutStore(tmp_path / "s").open(IDENTITY, Layout(4, 3, ("teacher",)))
    assert sorted(p.name for p in store.files()) == before  # nothing touched
    RolloutStore(tmp_path / "s").open(IDENTITY, layout)  # same identity: reopened as it is
    assert sorted(p.name for p in store.files()) == before
    RolloutStore(tmp_path / "s").open(other, layout, overwrite=True)
    assert store.files() == [] and store.manifest()["identity"] == other


def test_non_store_directory_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "something").write_text("x")
    with pytest.raises(VcrdError, match="holds no rollout store"):
        RolloutStore(tmp_path / "d").open(IDENTITY, Layout(1, 1, ("teacher",)))
    with pytest.raises(VcrdError, match="not a rollout store"):
        RolloutStore(tmp_path / "d").manifest()


def test_model_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    a = model_fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 10)
    b = model_fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\1" * 10)
    assert len({a, b, model_fingerprint(tmp_path)}) == 3


def test_derive_seed_is_stable() -> None:
    assert derive_seed(0, "teacher", 3) == derive_seed(0, "teacher", 3)
    assert derive_seed(0, "teacher", 3) != derive_seed(0, "student", 3)
    assert 0 <= derive_seed(1, "x") < 2**31


def test_trim_response() -> None:
    def decode(ids: list[int]) -> str:
        return "".join(chr(96 + i) for i in ids)

    assert trim_response([1, 2, 9, 0, 0], eos_ids={9}, max_new_tokens=5, decode=decode) == ([1, 2, 9], "stop")
    assert trim_response([1, 2, 3], eos_ids={9}, max_new_tokens=3, decode=decode) == ([1, 2, 3], "length")
    # "bc" completes at the third token; the padding after it is cut
    got = trim_response([1, 2, 3, 9, 9], eos_ids={9}, max_new_tokens=5, decode=decode, stop=("bc",))
    assert got == ([1, 2, 3], "stop")
    assert Sample([1], "a", "stop").finish_reason == "stop"
