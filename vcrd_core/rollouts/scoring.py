"""``vcrd score``: offline proposals, judge scores and weights for every decision point of the store.

For each rollout of the store (teacher rollouts: the teacher-prefix stream; student rollouts: the
student-prefix stream) the teacher and the (initial) student are run on ``prompt + response``, and
:func:`vcrd_core.judging.scoring.score_batch` — the very function the trainer calls per batch in online
mode — gives the other model's proposal at each prefix, the judge's ``r_s``/``r_t``, ``same_token`` and
the stream's weights. They are written into the store's score columns, chunk by chunk, atomically; a rerun
skips chunks already scored with the same scoring setup (judge, rule, proposals, seed). Proposals are
seeded per batch (:func:`derive_seed`), so scoring again gives the same values.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from rich.console import Console

from vcrd_core.config.models import RunConfig
from vcrd_core.data.examples import Example
from vcrd_core.errors import ConfigError, VcrdError
from vcrd_core.judging.analysis import HISTOGRAM_FILE, plot_validity_histogram, validity_stats
from vcrd_core.judging.judge import JudgeContext
from vcrd_core.judging.scoring import ScoredBatch, score_batch
from vcrd_core.plan import RunPlan, StreamPlan
from vcrd_core.regimes import regime_masks
from vcrd_core.rollouts.generator import derive_seed
from vcrd_core.rollouts.run import store_dir
from vcrd_core.rollouts.sequences import RolloutSequence, StreamBatch
from vcrd_core.rollouts.store import SCHEMA, RolloutStore, model_fingerprint
from vcrd_core.runs.atomic import atomic_write_text
from vcrd_core.runs.console import console as make_console
from vcrd_core.runs.console import progress
from vcrd_core.runs.models import load_causal_lm, pad_token_id
from vcrd_core.runs.preflight import preflight
from vcrd_core.runs.provenance import first_difference


def scoring_identity(config: RunConfig, streams: Mapping[str, StreamPlan]) -> dict[str, Any]:
    """What scores depend on: both models (the other model proposes on each prefix), seed, proposals and
    sampling, and each scored stream's judge, rule and proposal policy (``streams``: the plan's streams by rollout
    role). A store scored with another identity is rescored or refused, never mixed."""
    models = {
        role: {"fingerprint": model_fingerprint(spec.path), "dtype": spec.dtype}
        for role, spec in (("teacher", config.models.teacher), ("student", config.models.student))
    }
    return {
        "models": models,
        "seed": config.seed,
        "proposals": config.proposals.model_dump(mode="json"),
        "temperature": config.rollouts.temperature,
        "top_p": config.rollouts.top_p,
        "streams": {role: s.identity() for role, s in streams.items()},
    }


def check_scored_with(plan: RunPlan, store: RolloutStore, roles: list[str]) -> None:
    """Refuse (one line, before any model is loaded) offline training on scores that another setup made:
    other models, seed, proposals, sampling, judge or weighting rule than the plan names for ``roles``."""
    scored = store.manifest().get("scoring")
    wanted = json.loads(json.dumps(scoring_identity(plan.config, plan.by_role(roles))))
    if scored is None:
        raise ConfigError("scoring.mode", f"rollout store '{store.root}' has no scores; run `vcrd score CONFIG` first")
    scored = {**scored, "streams": {r: scored.get("streams", {}).get(r) for r in roles}}
    difference = first_difference(scored, wanted, "scoring")
    if difference:
        raise ConfigError(
            "scoring.mode",
            f"offline mode: the rollout store '{store.root}' was scored with another setup ({difference}); "
            "run `vcrd score CONFIG --overwrite` with this config, or train online",
        )


def _per_row(values: torch.Tensor | None, rows: list[dict[str, Any]], cast: Any) -> list[Any]:
    if values is None:
        return [None] * len(rows)
    out = []
    cpu = values.detach().cpu()
    for i, r in enumerate(rows):
        start = len(r["prompt_token_ids"])
        out.append([cast(v) for v in cpu[i, start : start + len(r["response_token_ids"])].tolist()])
    return out


def score_stream_batch(
    stream: StreamPlan,
    batch: StreamBatch,
    teacher_logits: torch.Tensor | None,
    student_logits: torch.Tensor | None,
    *,
    vocab_size: int | None,
    generator: torch.Generator | None,
) -> ScoredBatch:
    """:func:`~vcrd_core.judging.scoring.score_batch` on one stream's batch with that stream's plan (judge, rule,
    proposal policy and sampling): what ``vcrd score``, the static cache and online training all call."""
    return score_batch(
        stream.stream,
        batch.input_ids,
        batch.attention_mask,
        batch.points,
        teacher_logits,
        student_logits,
        stream.judge,
        stream.rule,
        proposal=stream.proposal,
        temperature=stream.temperature,
        top_p=stream.top_p,
        vocab_size=vocab_size,
        prompt_lengths=batch.prompt_lengths,
        generator=generator,
        examples=batch.examples,
    )


def score_store_batch(
    rows: list[dict[str, Any]],
    stream: StreamPlan,
    teacher: Any,
    student: Any,
    *,
    vocab_size: int,
    pad_id: int,
    seed: int,
    device: torch.device,
) -> tuple[ScoredBatch, dict[str, list[Any]]]:
    """Score one batch of store rows of one role (``stream``: its stream's plan); returns the batch and the score
    columns per row."""
    seqs = [
        RolloutSequence(
            r["prompt_token_ids"],
            r["response_token_ids"],
            example=Example.from_json(r["example"]) if r.get("example") else None,
        )
        for r in rows
    ]
    batch = StreamBatch.of(seqs, pad_id).to(device)
    ids, attn = batch.input_ids, batch.attention_mask
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=attn).logits.float()
        s_logits = student(input_ids=ids, attention_mask=attn).logits.float()
    gen = torch.Generator(device=device).manual_seed(seed)
    scored = score_stream_batch(stream, batch, t_logits, s_logits, vocab_size=vocab_size, generator=gen)
    columns = {
        "proposals": _per_row(scored.proposals, rows, int),
        "same_token": _per_row(scored.same_token, rows, bool),
        "r_s": _per_row(scored.r_s, rows, float),
        "r_t": _per_row(scored.r_t, rows, float),
        "weights": _per_row(scored.weights, rows, float),
    }
    return scored, columns


def _shares(weights: np.ndarray) -> dict[str, Any]:
    if weights.size == 0:
        return {"decision_points": 0}
    q = np.quantile(weights, [0.01, 0.5, 0.99])
    return {
        "decision_points": int(weights.size),
        **{regime: float(mask.mean()) for regime, mask in regime_masks(weights).items()},
        "weight_quantiles": {"p01": float(q[0]), "p50": float(q[1]), "p99": float(q[2])},
        "weight_max": float(weights.max()),
    }


#: Float32 logits elements per model in one scoring batch when the batch size is automatic (512 MiB).
AUTO_BATCH_ELEMENTS = 2**27


def auto_batch_size(vocab: int, length: int, most: int = 256) -> int:
    """Rollouts per scoring batch such that one model's ``[batch, length, vocab]`` float32 logits stay within
    :data:`AUTO_BATCH_ELEMENTS` (at least 1, at most ``most``): 256 for a toy vocabulary, 1 for Qwen2.5 at 1,024."""
    return max(1, min(most, AUTO_BATCH_ELEMENTS // max(1, vocab * length)))


def score_store(
    config: RunConfig, *, batch_size: int | None = 8, overwrite: bool = False, console: Console | None = None
) -> dict[str, Any]:
    """Fill the score columns of the run's store (see the module docstring); returns the summary.

    ``batch_size``: rollouts per forward pass; None: :func:`auto_batch_size` of the models' logits width and
    ``data.max_length``. The proposals' seeds are derived per batch, so they depend on it."""
    console = console or make_console(stderr=True)
    store = RolloutStore(store_dir(config))
    manifest = store.manifest()
    store.check_complete()
    for role in store.layout().roles:
        path = getattr(config.models, role).path
        if model_fingerprint(path) != manifest["identity"]["models"][role]["fingerprint"]:
            raise VcrdError(
                f"models.{role}.path: '{path}' is not the model the store's {role} rollouts were generated with"
            )
    plan = RunPlan.of(config)
    streams = plan.by_role(store.layout().roles)
    if not streams:
        raise VcrdError("no enabled stream has rollouts in the store: nothing to score")
    found = preflight(config, output_dir=False)
    wanted = scoring_identity(config, streams)
    previous = manifest.get("scoring")
    if previous is not None and previous != json.loads(json.dumps(wanted)) and not overwrite:
        raise VcrdError(
            f"rollout store '{store.root}' was scored with another judge, rule, proposals or seed; "
            "pass --overwrite to score it again"
        )
    rescore_all = overwrite or previous != json.loads(json.dumps(wanted))
    manifest["scoring"] = wanted
    atomic_write_text(store.manifest_path, json.dumps(manifest, indent=2) + "\n")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = found.tokenizer
    pad_id = pad_token_id(tok)
    plan.load_judges(JudgeContext.for_run(config, tokenizer=tok, device=device, vocab_size=found.vocab_size))
    teacher = load_causal_lm(config.models.teacher, "models.teacher.path").to(device).eval()
    student = load_causal_lm(config.models.student, "models.student.path").to(device).eval()
    if batch_size is None:
        width = max(int(teacher.config.vocab_size), int(student.config.vocab_size))
        batch_size = auto_batch_size(width, config.data.max_length)
    layout = store.layout()
    start = time.perf_counter()
    for role, stream in streams.items():
        todo = []
        for c in range(layout.num_chunks):
            table = store.read_chunk(role, c)
            if rescore_all or table["weights"].null_count > 0:
                todo.append(c)
        with progress(console, "rollouts") as bar:
            task = bar.add_task(f"scoring {role} rollouts", total=sum(len(layout.span(c)) for c in todo), rate="")
            for c in todo:
                table = store.read_chunk(role, c)
                rows = table.to_pylist()
                for b in range(0, len(rows), batch_size):
                    part = rows[b : b + batch_size]
                    _, cols = score_store_batch(
                        part,
                        stream,
                        teacher,
                        student,
                        vocab_size=found.vocab_size,
                        pad_id=pad_id,
                        seed=derive_seed(config.seed, "score", role, c, b),
                        device=device,
                    )
                    for k, row in enumerate(part):
                        for name, values in cols.items():
                            row[name] = values[k]
                store.write_chunk(role, c, pa.Table.from_pylist(rows, schema=SCHEMA))
                bar.update(task, advance=len(layout.span(c)), rate="")
    seconds = time.perf_counter() - start
    table = store.read()
    summary: dict[str, Any] = {"store": str(store.root), "seconds": round(seconds, 3), "streams": {}}
    for role, stream in streams.items():
        rows = table.filter(pc.equal(table["role"], role))
        weights = np.array([w for ws in rows["weights"].to_pylist() if ws for w in ws], dtype=np.float64)
        summary["streams"][stream.name] = _shares(weights) | {"rule": stream.rule.name}
    records = store.score_records()
    if records:  # the Fig. 1 view of what was just scored, beside the store (as `vcrd analyze STORE` writes it)
        stats = validity_stats(records)
        summary["validity"] = stats.to_dict()
        plot_validity_histogram(records, store.root / HISTOGRAM_FILE, title=f"Local validity — {store.root.name}")
        summary["histogram"] = HISTOGRAM_FILE
    atomic_write_text(store.root / "score-summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
