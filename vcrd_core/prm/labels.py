"""``vcrd prm label``: Monte-Carlo value labels for the decision points of a rollout store, as a Parquet dataset.

For every rollout of the store (both roles, or those asked for) and every response token (or only the step ends,
when the judge has a ``step_separator``), the config's ``mc_value`` judge rolls out ``K`` continuations of the
prefix through that token and grades them; one row per labelled point:

=====================  =================================================================================
``prompt_index``       the prompt's row in its source (the store's), ``sample_index``, ``role``
``position``           the scored token's index in the response (0 = the first response token)
``problem``            the example's prompt text (the PRM renders it in its own format)
``prompt_token_ids``   the policy's prompt ids; ``response_token_ids`` the whole response (prefix = ``[:position+1]``)
``successes``          summed grades of the ``K`` continuations; ``samples`` = ``K``
``label``              ``successes / K``: the soft target PRM training fits (unbiased share)
``value``              ``(successes + 1) / (K + 2)``: what the ``mc_value`` judge would return
``split``              ``train`` / ``validation`` / ``test``, by prompt (all samples of a prompt share it)
=====================  =================================================================================

Layout: ``DIR/labels.json`` (the judge, the store, the split fractions, the counts) and one Parquet part per store
chunk and role, ``DIR/data/<role>-<chunk>.parquet``, written atomically: an interrupted run keeps the finished
parts and a rerun labels exactly the missing ones. ``pandas.read_parquet(DIR/"data")`` opens the whole set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from vcrd_core.config.models import RunConfig
from vcrd_core.data.examples import Example
from vcrd_core.errors import VcrdError
from vcrd_core.judging.judge import JudgeContext
from vcrd_core.plugins.registry import create
from vcrd_core.rollouts.generator import derive_seed
from vcrd_core.rollouts.run import store_dir
from vcrd_core.rollouts.store import RolloutStore
from vcrd_core.runs.atomic import atomic_path, atomic_write_text
from vcrd_core.runs.console import console as make_console
from vcrd_core.runs.console import progress
from vcrd_core.runs.preflight import preflight

LABELS_FILE = "labels.json"
SPLITS = ("train", "validation", "test")

SCHEMA = pa.schema(
    [
        ("prompt_index", pa.int64()),
        ("sample_index", pa.int64()),
        ("role", pa.string()),
        ("position", pa.int32()),
        ("problem", pa.string()),
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("response_token_ids", pa.list_(pa.int32())),
        ("successes", pa.float64()),
        ("samples", pa.int32()),
        ("label", pa.float64()),
        ("value", pa.float64()),
        ("split", pa.string()),
        ("example", pa.string()),
    ]
)


def split_of(prompt_index: int, seed: int, validation: float, test: float) -> str:
    """The split of a prompt: a uniform draw from ``(seed, prompt_index)``, stable across runs and processes."""
    u = derive_seed("prm-split", seed, prompt_index) / 2**31
    return "test" if u < test else "validation" if u < test + validation else "train"


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_labels(root: str | Path, split: str | None = None) -> pa.Table:
    """Every label row of ``root`` (a ``vcrd prm label`` directory), or only those of ``split``."""
    root = Path(root)
    if not (root / LABELS_FILE).is_file():
        raise VcrdError(
            f"'{root}' holds no Monte-Carlo labels ({LABELS_FILE} missing); make them with `vcrd prm label`"
        )
    parts = sorted((root / "data").glob("*.parquet"))
    if not parts:
        raise VcrdError(f"'{root}' holds no label part yet; run `vcrd prm label` to the end")
    table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in parts])
    if split is not None:
        if split not in SPLITS:
            raise VcrdError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
        mask = [s == split for s in table["split"].to_pylist()]
        table = table.filter(pa.array(mask))
        if table.num_rows == 0:
            raise VcrdError(f"'{root}' has no label in the '{split}' split (its fractions: see {LABELS_FILE})")
    return table


def label_store(
    config: RunConfig,
    out: str | Path,
    *,
    roles: list[str] | None = None,
    limit: int | None = None,
    validation: float = 0.1,
    test: float = 0.2,
    batch_size: int = 16,
    console: Console | None = None,
) -> dict[str, Any]:
    """Write the labels of the run's rollout store into ``out`` (see the module docstring); returns the summary.

    ``config.judge`` must be an ``mc_value`` judge (the labels are its successes); ``limit`` caps the rollouts
    labelled per role (the first ones); ``batch_size`` rollouts share one generate call."""
    console = console or make_console(stderr=True)
    if not 0 <= validation < 1 or not 0 <= test < 1 or validation + test >= 1:
        raise VcrdError(f"--validation {validation} and --test {test} must be in [0, 1) and leave a training split")
    spec = config.judge
    if spec is None or spec.name != "mc_value":
        got = "none" if spec is None else f"'{spec.name}'"
        raise VcrdError(f"judge: `vcrd prm label` needs an mc_value judge (the labels are its successes), got {got}")
    judge: Any = create("judges", spec.name, spec.params, path="judge")
    store = RolloutStore(store_dir(config))
    manifest = store.manifest()
    store.check_complete()
    layout = store.layout()
    roles = roles or list(layout.roles)
    for role in roles:
        if role not in layout.roles:
            raise VcrdError(f"--role {role}: the store '{store.root}' has rollouts of {', '.join(layout.roles)} only")
    found = preflight(config, output_dir=False)
    root = Path(out)
    identity = {
        "judge": {"name": spec.name, "params": judge.params.model_dump(mode="json")},
        "store": str(store.root),
        "store_identity": manifest.get("identity"),
        "seed": config.seed,
        "validation": validation,
        "test": test,
        "limit": limit,
    }
    info_file = root / LABELS_FILE
    if info_file.is_file():
        before = json.loads(info_file.read_text())
        if before.get("identity") != json.loads(json.dumps(identity)):
            raise VcrdError(
                f"'{root}' holds labels made with another judge, store, seed or split; choose another directory"
            )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(info_file, json.dumps({"identity": identity, "complete": False}, indent=2) + "\n")

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    judge.load(JudgeContext.for_run(config, tokenizer=found.tokenizer, device=device, vocab_size=found.vocab_size))
    k = judge.params.samples
    sep = judge.params.step_separator
    start = time.perf_counter()
    counts = dict.fromkeys(SPLITS, 0)
    try:
        for role in roles:
            left = limit
            with progress(console, "rollouts") as bar:
                task = bar.add_task(f"labelling {role} rollouts", total=None, rate="")
                for c in range(layout.num_chunks):
                    if left is not None and left <= 0:
                        break
                    part = root / "data" / f"{role}-{c:06d}.parquet"
                    rows = store.read_chunk(role, c).to_pylist()
                    if left is not None:
                        rows = rows[:left]
                        left -= len(rows)
                    if part.is_file():
                        bar.update(task, advance=len(rows))
                        continue
                    out_rows: list[dict[str, Any]] = []
                    for b in range(0, len(rows), batch_size):
                        out_rows += _label_rows(judge, rows[b : b + batch_size], sep, k, config.seed, validation, test)
                        bar.update(task, advance=len(rows[b : b + batch_size]))
                    _write_parquet(pa.Table.from_pylist(out_rows, schema=SCHEMA), part)
    finally:
        judge.close()
    table = read_labels(root)
    for s in table["split"].to_pylist():
        counts[s] += 1
    labels = table["label"].to_pylist()
    summary = {
        "identity": identity,
        "complete": True,
        "points": table.num_rows,
        "splits": counts,
        "label_mean": sum(labels) / len(labels) if labels else None,
        "seconds": round(time.perf_counter() - start, 3),
        "work": dict(judge.stats),
    }
    atomic_write_text(info_file, json.dumps(summary, indent=2) + "\n")
    return summary


def _label_rows(
    judge: Any, rows: list[dict[str, Any]], sep: str | None, k: int, seed: int, validation: float, test: float
) -> list[dict[str, Any]]:
    """The label rows of some store rows (one generate call for all of them)."""
    requests, owners = [], []
    for r in rows:
        if not r.get("example"):
            raise VcrdError(
                f"rollout {r['role']} prompt {r['prompt_index']}: the store keeps no example (reference answer) "
                "for it; regenerate the rollouts with this vcrd"
            )
        example = Example.from_json(r["example"])
        item = judge.evaluator.example_item(example, int(r["prompt_index"]))
        response = list(r["response_token_ids"])
        positions = range(len(response))
        if sep is not None and response:
            ends = judge.step_ends(response)
            positions = sorted(set(ends))
        for j in positions:
            requests.append((list(r["prompt_token_ids"]), response[: j + 1], item))
            owners.append((r, example, j))
    successes = judge.successes(requests)
    out = []
    for (r, example, j), s in zip(owners, successes, strict=True):
        out.append(
            {
                "prompt_index": int(r["prompt_index"]),
                "sample_index": int(r["sample_index"]),
                "role": r["role"],
                "position": j,
                "problem": example.prompt,
                "prompt_token_ids": list(r["prompt_token_ids"]),
                "response_token_ids": list(r["response_token_ids"]),
                "successes": float(s),
                "samples": k,
                "label": float(s) / k,
                "value": (float(s) + 1.0) / (k + 2.0),
                "split": split_of(int(r["prompt_index"]), seed, validation, test),
                "example": r["example"],
            }
        )
    return out
