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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from rich.console import Console

from vcrd_core.config.models import TORCH_DTYPES, RunConfig
from vcrd_core.decision_points import DecisionPoints, Stream
from vcrd_core.errors import ConfigError, VcrdError
from vcrd_core.judging.analysis import HISTOGRAM_FILE, plot_validity_histogram, validity_stats
from vcrd_core.judging.judge import Judge, JudgeContext
from vcrd_core.judging.scoring import ScoredBatch, score_batch
from vcrd_core.losses.weighting import WeightingRule
from vcrd_core.plugins.kinds import JUDGES, WEIGHTING
from vcrd_core.plugins.registry import create
from vcrd_core.rollouts.generator import derive_seed
from vcrd_core.rollouts.run import _progress, store_dir
from vcrd_core.rollouts.sequences import RolloutSequence, pad_sequences
from vcrd_core.rollouts.store import SCHEMA, RolloutStore, model_fingerprint
from vcrd_core.runs.atomic import atomic_write_text
from vcrd_core.runs.preflight import preflight
from vcrd_core.runs.provenance import first_difference

#: |w - 1| at most this is parity in the summary's attenuation / parity / amplification shares.
PARITY_TOL = 0.05


@dataclass
class StreamSetup:
    role: str
    stream: Stream
    judge: Judge | None
    rule: WeightingRule
    proposal: str


def setups(config: RunConfig) -> dict[str, StreamSetup]:
    """Per role of the store whose stream is enabled: its judge, weighting rule and proposal mode."""
    out: dict[str, StreamSetup] = {}
    streams = config.streams()
    for stream in Stream:
        role = stream.role
        s = streams.get(stream.value)
        if s is None:
            continue
        judge_spec = s.judge or config.judge
        rule_spec = s.weighting or config.weighting
        jpath = f"objective.{stream.value}.judge" if s.judge else "judge"
        wpath = f"objective.{stream.value}.weighting" if s.weighting else "weighting"
        judge = create(JUDGES, judge_spec.name, judge_spec.params, path=jpath) if judge_spec else None
        rule = create(WEIGHTING, rule_spec.name, rule_spec.params, path=wpath)
        proposal = config.proposals.student if stream is Stream.TEACHER_PREFIX else config.proposals.teacher
        out[role] = StreamSetup(role, stream, judge, rule, proposal)  # type: ignore[arg-type]
    return out


def scoring_identity(config: RunConfig, found: dict[str, StreamSetup]) -> dict[str, Any]:
    """What scores depend on: both models (the other model proposes on each prefix), seed, proposals and
    sampling, and each scored stream's judge and rule. A store scored with another identity is rescored or
    refused, never mixed."""
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
        "streams": {
            role: {
                "judge": None
                if s.judge is None
                else {"name": s.judge.name, "params": s.judge.params.model_dump(mode="json")},
                "weighting": {"name": s.rule.name, "params": s.rule.params.model_dump(mode="json")},
                "proposal": s.proposal,
            }
            for role, s in found.items()
        },
    }


def _load_model(path: str, dtype: str, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype != "auto":
        kwargs["dtype"] = TORCH_DTYPES[dtype]
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device).eval()


def check_scored_with(config: RunConfig, store: RolloutStore, roles: list[str]) -> None:
    """Refuse (one line, before any model is loaded) offline training on scores that another setup made:
    other models, seed, proposals, sampling, judge or weighting rule than ``config`` names for ``roles``."""
    scored = store.manifest().get("scoring")
    wanted = json.loads(json.dumps(scoring_identity(config, {r: s for r, s in setups(config).items() if r in roles})))
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


def score_rows(
    rows: list[dict[str, Any]],
    setup: StreamSetup,
    teacher: Any,
    student: Any,
    *,
    config: RunConfig,
    vocab_size: int,
    pad_id: int,
    seed: int,
    device: torch.device,
) -> tuple[ScoredBatch, dict[str, list[Any]]]:
    """Score one batch of store rows of one role; returns the batch and the score columns per row."""
    batch = pad_sequences([RolloutSequence(r["prompt_token_ids"], r["response_token_ids"]) for r in rows], pad_id)
    ids, attn = batch["input_ids"], batch["attention_mask"]
    points = DecisionPoints.from_masks(attn, batch["response_mask"])
    ids, attn, points = ids.to(device), attn.to(device), points.to(device)
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=attn).logits.float()
        s_logits = student(input_ids=ids, attention_mask=attn).logits.float()
    gen = torch.Generator(device=device).manual_seed(seed)
    scored = score_batch(
        setup.stream,
        ids,
        attn,
        points,
        t_logits,
        s_logits,
        setup.judge,
        setup.rule,
        proposal=setup.proposal,  # type: ignore[arg-type]
        temperature=config.rollouts.temperature,
        top_p=config.rollouts.top_p,
        vocab_size=vocab_size,
        prompt_lengths=batch["prompt_lengths"].to(device),
        generator=gen,
    )
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
        "attenuation": float((weights < 1 - PARITY_TOL).mean()),
        "parity": float((np.abs(weights - 1) <= PARITY_TOL).mean()),
        "amplification": float((weights > 1 + PARITY_TOL).mean()),
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
    console = console or Console(stderr=True)
    store = RolloutStore(store_dir(config))
    manifest = store.manifest()
    store.check_complete()
    for role in store.layout().roles:
        path = getattr(config.models, role).path
        if model_fingerprint(path) != manifest["identity"]["models"][role]["fingerprint"]:
            raise VcrdError(
                f"models.{role}.path: '{path}' is not the model the store's {role} rollouts were generated with"
            )
    found_setups = {r: s for r, s in setups(config).items() if r in store.layout().roles}
    if not found_setups:
        raise VcrdError("no enabled stream has rollouts in the store: nothing to score")
    found = preflight(config.model_copy(update={"output": config.output.model_copy(update={"overwrite": True})}))
    wanted = scoring_identity(config, found_setups)
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
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    context = JudgeContext(tokenizer=tok, device=device, vocab_size=found.vocab_size)
    for s in found_setups.values():
        if s.judge is not None:
            s.judge.load(context)
    teacher = _load_model(config.models.teacher.path, config.models.teacher.dtype, device)
    student = _load_model(config.models.student.path, config.models.student.dtype, device)
    if batch_size is None:
        width = max(int(teacher.config.vocab_size), int(student.config.vocab_size))
        batch_size = auto_batch_size(width, config.data.max_length)
    layout = store.layout()
    start = time.perf_counter()
    for role, setup in found_setups.items():
        todo = []
        for c in range(layout.num_chunks):
            table = store.read_chunk(role, c)
            if rescore_all or table["weights"].null_count > 0:
                todo.append(c)
        with _progress(console) as bar:
            task = bar.add_task(f"scoring {role} rollouts", total=sum(len(layout.span(c)) for c in todo), rate="")
            for c in todo:
                table = store.read_chunk(role, c)
                rows = table.to_pylist()
                for b in range(0, len(rows), batch_size):
                    part = rows[b : b + batch_size]
                    _, cols = score_rows(
                        part,
                        setup,
                        teacher,
                        student,
                        config=config,
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
    for role, setup in found_setups.items():
        rows = table.filter(pc.equal(table["role"], role))
        weights = np.array([w for ws in rows["weights"].to_pylist() if ws for w in ws], dtype=np.float64)
        summary["streams"][setup.stream.value] = _shares(weights) | {"rule": setup.rule.name}
    records = store.score_records()
    if records:  # the Fig. 1 view of what was just scored, beside the store (as `vcrd analyze STORE` writes it)
        stats = validity_stats(records)
        summary["validity"] = stats.to_dict()
        plot_validity_histogram(records, store.root / HISTOGRAM_FILE, title=f"Local validity — {store.root.name}")
        summary["histogram"] = HISTOGRAM_FILE
    atomic_write_text(store.root / "score-summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
