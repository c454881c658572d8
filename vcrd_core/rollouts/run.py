"""``vcrd rollouts``: generate the teacher's and the student's rollouts of a run's prompts into its store.

Order: the config is validated, ``--shard`` parsed, the generator created and checked (vLLM installed?),
the run-time checks run (:func:`vcrd_core.runs.preflight.preflight`: paths, the shared tokenizer), the
prompts read and the store opened (refused when made differently) — all before any model is loaded.
Then, per role, the chunks of this shard that the store lacks are generated, each written atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from rich.console import Console

from vcrd_core import __version__
from vcrd_core.config.models import RunConfig
from vcrd_core.data.prompts import PromptSet, load_prompts, source_sha256
from vcrd_core.errors import ConfigError, VcrdError
from vcrd_core.plugins.kinds import GENERATORS
from vcrd_core.plugins.registry import create
from vcrd_core.rollouts.generator import Generator, GeneratorContext, Sampling, derive_seed
from vcrd_core.rollouts.store import Layout, RolloutStore, model_fingerprint, parse_shard, tokenizer_fingerprint
from vcrd_core.runs.atomic import atomic_write_text
from vcrd_core.runs.console import progress
from vcrd_core.runs.preflight import preflight


def store_dir(config: RunConfig) -> Path:
    """The run's rollout store: ``rollouts.store``, default ``<output.dir>/rollouts``."""
    return Path(config.rollouts.store) if config.rollouts.store else Path(config.output.dir) / "rollouts"


def roles(config: RunConfig) -> tuple[str, ...]:
    out = tuple(r for r in ("teacher", "student") if getattr(config.rollouts, r))
    if not out:
        raise ConfigError("rollouts", "neither teacher nor student rollouts are enabled")
    return out


def sampling_of(config: RunConfig) -> Sampling:
    r = config.rollouts
    return Sampling(
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        n=r.samples_per_prompt,
        seed=config.seed,
        stop=tuple(r.stop),
    )


def create_generator(config: RunConfig) -> Generator:
    spec = config.rollouts.generator_spec()
    generator = create(GENERATORS, spec.name, spec.params, path="rollouts.generator")
    return generator  # type: ignore[return-value]


def identity(config: RunConfig, prompts: PromptSet, tokenizer_path: str, generator: Generator) -> dict[str, Any]:
    """What a store's rollouts depend on; a store with a different identity is refused."""
    d = config.data
    return {
        "models": {
            role: {"fingerprint": model_fingerprint(getattr(config.models, role).path)} for role in roles(config)
        },
        "dtypes": {role: getattr(config.models, role).dtype for role in roles(config)},
        "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer_path)},
        "generator": {"name": generator.name, "params": generator.params.model_dump(mode="json")},
        "sampling": sampling_of(config).as_dict(),
        "prompts": {
            "sha256": source_sha256(d.train),
            "prompt_field": d.prompt_field,
            "template": d.template,
            "num_prompts": d.num_prompts,
            "max_prompt_length": d.max_prompt_length,
            "overlong": d.overlong,
        },
    }


@dataclass
class RoleStats:
    """Throughput of this invocation for one role."""

    generated_tokens: int = 0
    seconds: float = 0.0
    chunks: int = 0


@dataclass
class RolloutResult:
    store: RolloutStore
    summary: dict[str, Any]
    stats: dict[str, RoleStats] = field(default_factory=dict)


def summarize(store: RolloutStore, prompts: PromptSet, stats: dict[str, RoleStats]) -> dict[str, Any]:
    """Prompts, samples, mean/max response lengths, share truncated per role (the whole store as it is
    now) and this invocation's tokens/s."""
    table = store.read()
    per_role: dict[str, Any] = {}
    for role in store.layout().roles:
        rows = table.filter(pc.equal(table["role"], role))
        lengths = np.array([len(x) for x in rows["response_token_ids"].to_pylist()], dtype=np.int64)
        reasons = rows["finish_reason"].to_pylist()
        s = stats.get(role, RoleStats())
        per_role[role] = {
            "prompts": len(set(rows["prompt_index"].to_pylist())),
            "samples": rows.num_rows,
            "mean_length": float(lengths.mean()) if lengths.size else 0.0,
            "max_length": int(lengths.max()) if lengths.size else 0,
            "truncated_share": (reasons.count("length") / len(reasons)) if reasons else 0.0,
            "generated_tokens": s.generated_tokens,
            "generation_seconds": round(s.seconds, 3),
            "tokens_per_second": (s.generated_tokens / s.seconds) if s.seconds > 0 else None,
            "chunks_generated": s.chunks,
        }
    return {
        "store": str(store.root),
        "prompts": len(prompts.prompts),
        "prompts_read": prompts.rows,
        "prompts_dropped_overlong": len(prompts.dropped),
        "complete": not store.missing(),
        "roles": per_role,
    }


def generate_rollouts(
    config: RunConfig,
    *,
    shard: str | None = None,
    overwrite: bool = False,
    console: Console | None = None,
) -> RolloutResult:
    """Fill this shard's part of the run's rollout store (see the module docstring)."""
    console = console or Console(stderr=True)
    shard_i, num_shards = parse_shard(shard)
    run_roles = roles(config)
    generator = create_generator(config)
    generator.check()
    # The rollout stage writes no run markers (its store has its own identity check): the output
    # directory check of a training run does not apply here.
    found = preflight(config, output_dir=False)
    tokenizer_path = config.models.tokenizer or config.models.student.path
    try:
        prompts = load_prompts(config.data.train, config.data, found.tokenizer)
    except ConfigError:
        raise
    except VcrdError as exc:
        raise ConfigError("data.train", str(exc)) from None
    if prompts.dropped:
        console.print(
            f"dropped {len(prompts.dropped)} of {prompts.rows} prompts over data.max_prompt_length "
            f"({config.data.max_prompt_length} tokens)"
        )
    store = RolloutStore(store_dir(config))
    layout = Layout(len(prompts.prompts), config.rollouts.chunk_size, run_roles)
    store.open(
        identity(config, prompts, tokenizer_path, generator),
        layout,
        overwrite=overwrite,
        paths={
            "teacher": str(Path(config.models.teacher.path).resolve()),
            "student": str(Path(config.models.student.path).resolve()),
            "tokenizer": str(Path(tokenizer_path).resolve()),
            "prompts": str(Path(config.data.train).resolve()),
        },
        prompt_indices=[p.index for p in prompts.prompts],
        dropped_prompt_indices=prompts.dropped,
        seed=config.seed,
    )
    sampling = sampling_of(config)
    stats: dict[str, RoleStats] = {}
    mine = layout.chunks_of_shard(shard_i, num_shards)
    for role in run_roles:
        todo = [c for c in mine if c not in store.done(role)]
        stats[role] = RoleStats()
        if not todo:
            continue
        spec = getattr(config.models, role)
        generator.load(
            GeneratorContext(
                model_path=spec.path,
                tokenizer=found.tokenizer,
                tokenizer_path=tokenizer_path,
                vocab_size=found.vocab_size,
                dtype=spec.dtype,
                role=role,
                extra={"seed": config.seed},
            )
        )
        total = sum(len(layout.span(c)) for c in todo)
        try:
            with progress(console) as bar:
                task = bar.add_task(f"{role} rollouts", total=total, rate="")
                for chunk in todo:
                    span = layout.span(chunk)
                    batch = [prompts.prompts[k] for k in span]
                    seeded = Sampling(**{**sampling.__dict__, "seed": derive_seed(config.seed, role, chunk)})
                    start = time.perf_counter()
                    samples = generator.generate([p.token_ids for p in batch], seeded)
                    stats[role].seconds += time.perf_counter() - start
                    rows = []
                    for prompt, outs in zip(batch, samples, strict=True):
                        if len(outs) != sampling.n:
                            raise VcrdError(
                                f"generator '{generator.name}' returned {len(outs)} samples for a prompt, "
                                f"expected {sampling.n}"
                            )
                        for j, s in enumerate(outs):
                            stats[role].generated_tokens += len(s.token_ids)
                            rows.append(
                                {
                                    "prompt_index": prompt.index,
                                    "sample_index": j,
                                    "role": role,
                                    "prompt_token_ids": prompt.token_ids,
                                    "response_token_ids": s.token_ids,
                                    "text": s.text,
                                    "finish_reason": s.finish_reason,
                                    "example": prompt.example().to_json(),
                                }
                            )
                    store.write_chunk(role, chunk, rows)
                    stats[role].chunks += 1
                    rate = stats[role].generated_tokens / max(stats[role].seconds, 1e-9)
                    bar.update(task, advance=len(batch), rate=f"{rate:,.0f} tok/s")
        finally:
            generator.close()
    summary = summarize(store, prompts, stats)
    summary |= {"shard": f"{shard_i}/{num_shards}", "generator": generator.name, "vcrd": __version__}
    name = "summary.json" if num_shards == 1 else f"summary-shard-{shard_i}-of-{num_shards}.json"
    atomic_write_text(store.root / name, json.dumps(summary, indent=2) + "\n")
    return RolloutResult(store=store, summary=summary, stats=stats)


def print_summary(summary: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"rollouts in {summary['store']}")
    for col in ("role", "prompts", "samples", "mean len", "max len", "truncated", "tokens/s"):
        table.add_column(col, justify="right" if col != "role" else "left")
    for role, r in summary["roles"].items():
        tps = r["tokens_per_second"]
        table.add_row(
            role,
            str(r["prompts"]),
            str(r["samples"]),
            f"{r['mean_length']:.1f}",
            str(r["max_length"]),
            f"{100 * r['truncated_share']:.1f}%",
            f"{tps:,.0f}" if tps else "-",
        )
    console.print(table)
    dropped = summary["prompts_dropped_overlong"]
    state = "complete" if summary["complete"] else "incomplete (other shards still to run)"
    console.print(f"{summary['prompts']} prompts ({dropped} dropped as overlong); store {state}")
