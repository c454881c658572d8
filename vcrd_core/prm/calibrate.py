"""``vcrd prm calibrate``: how well judges' scores match held-out Monte-Carlo labels (Brier, ECE, reliability).

Every judge is asked the question the labels answer: the score of a labelled rollout token ``a`` at its prefix
``c``. The labelled rollouts are put into one student-prefix request whose decision points are the labelled
positions and whose proposals are the rollout tokens themselves, so a judge's ``r_s`` there is ``r(c, a)`` for the
token judges (``oracle``, ``prm_value_head``, ``mc_value``). ``teacher_likelihood`` scores the student's greedy
token; here its greedy token is set to ``a``, so its ``r_s`` is the teacher's probability ``p(a | c)`` (a
likelihood, which ranks tokens but was never meant to be a calibrated value; the report shows by how much).

The report (``calibration.json``, ``calibration.md``, ``reliability.png`` in the output directory) has, per judge,
the Brier score, the binned ECE (equal-width bins on [0, 1], ``bins`` stated), the Brier score of the constant
predictor (the labels' mean) and the skill ``1 - Brier / Brier_constant``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from vcrd_core.config.models import RunConfig
from vcrd_core.data.examples import Example
from vcrd_core.decision_points import DecisionPoints, Stream
from vcrd_core.errors import VcrdError
from vcrd_core.judging.calibration import DEFAULT_BINS, calibration_summary, plot_reliability
from vcrd_core.judging.judge import JudgeContext, JudgeRequest, Need, checked_scores
from vcrd_core.plugins.registry import create
from vcrd_core.prm.labels import read_labels
from vcrd_core.rollouts.sequences import RolloutSequence, StreamBatch
from vcrd_core.runs.atomic import atomic_write_text
from vcrd_core.runs.models import load_causal_lm, pad_token_id
from vcrd_core.runs.preflight import preflight

REPORT_FILE = "calibration.json"
TABLE_FILE = "calibration.md"
PLOT_FILE = "reliability.png"


def labelled_batches(table: Any, pad_id: int, batch_size: int) -> list[tuple[StreamBatch, torch.Tensor, list[float]]]:
    """The labelled rollouts as ``(batch, decision-point mask, labels in point order)``, ``batch_size`` a batch."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in table.to_pylist():
        groups[(row["role"], row["prompt_index"], row["sample_index"])].append(row)
    keys = sorted(groups)
    out = []
    for start in range(0, len(keys), batch_size):
        part = [sorted(groups[k], key=lambda r: r["position"]) for k in keys[start : start + batch_size]]
        seqs = [
            RolloutSequence(
                list(rows[0]["prompt_token_ids"]),
                list(rows[0]["response_token_ids"][: rows[-1]["position"] + 1]),
                example=Example.from_json(rows[0]["example"]),
            )
            for rows in part
        ]
        batch = StreamBatch.of(seqs, pad_id)
        mask = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
        labels = []
        for b, rows in enumerate(part):
            n_prompt = len(rows[0]["prompt_token_ids"])
            for r in rows:  # row-major order = the order of DecisionPoints
                mask[b, n_prompt + r["position"]] = True
                labels.append(float(r["label"]))
        out.append((batch, mask, labels))
    return out


def judge_predictions(
    judge: Any, batches: list[tuple[StreamBatch, torch.Tensor, list[float]]], teacher: Any, device: torch.device
) -> list[float]:
    """``r(c, a)`` of ``judge`` at every labelled point (see the module docstring)."""
    out: list[float] = []
    for batch, mask, _ in batches:
        batch = batch.to(device)
        points = DecisionPoints.from_mask(mask.to(device), batch.attention_mask, where=f"judge '{judge.name}'")
        teacher_logits = None
        if Need.TEACHER_LOGITS in judge.needs:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        request = JudgeRequest(
            stream=Stream.STUDENT_PREFIX,
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            points=points,
            proposals=batch.input_ids,
            student_greedy=batch.input_ids,
            teacher_logits=teacher_logits,
            prompt_lengths=batch.prompt_lengths,
            examples=batch.examples,
        )
        scores = checked_scores(judge, request)
        out += points.gather(scores.r_s).float().cpu().tolist()
    return out


def calibrate(
    config: RunConfig,
    labels: str | Path,
    judges: dict[str, dict[str, Any]],
    out: str | Path,
    *,
    split: str = "test",
    bins: int = DEFAULT_BINS,
    batch_size: int = 16,
) -> dict[str, Any]:
    """The calibration report of ``judges`` (label -> ``{name, params}``) on ``split`` of ``labels``, into ``out``."""
    if not judges:
        raise VcrdError("name at least one judge to calibrate (--judge LABEL=SPEC)")
    for what, value in (("--bins", bins), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise VcrdError(f"{what} must be an integer >= 1, got {value!r}")  # before any judge runs
    table = read_labels(labels, split)
    built = {}
    for label, spec in judges.items():
        if not isinstance(spec, dict) or "name" not in spec:
            raise VcrdError(f"--judge {label}: expected a judge spec {{name: ..., params: {{...}}}}, got {spec!r}")
        built[label] = create("judges", spec["name"], spec.get("params") or {}, path=f"--judge {label}")
    found = preflight(config, output_dir=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    context = JudgeContext.for_run(config, tokenizer=found.tokenizer, device=device, vocab_size=found.vocab_size)
    for judge in built.values():
        judge.check(context)
    teacher = None
    if any(Need.TEACHER_LOGITS in j.needs for j in built.values()):
        teacher = load_causal_lm(config.models.teacher, "models.teacher.path").to(device).eval()
    batches = labelled_batches(table, pad_token_id(found.tokenizer), batch_size)
    targets = [y for _, _, ys in batches for y in ys]
    curves, report = {}, {"labels": str(labels), "split": split, "bins": bins, "points": len(targets), "judges": {}}
    for label, judge in built.items():
        judge.load(context)
        predictions = judge_predictions(judge, batches, teacher, device)
        if hasattr(judge, "close"):
            judge.close()
        curves[label] = (predictions, targets)
        report["judges"][label] = {"spec": judges[label], **calibration_summary(predictions, targets, bins)}
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    plot_reliability(curves, root / PLOT_FILE, bins=bins, title=f"Reliability on {len(targets)} held-out labels")
    atomic_write_text(root / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    atomic_write_text(root / TABLE_FILE, markdown_table(report))
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """The report's judges as a Markdown table (the README's)."""
    lines = [
        f"Calibration on {report['points']} held-out Monte-Carlo labels ({report['split']} split, "
        f"ECE with {report['bins']} equal-width bins)",
        "",
        "| judge | Brier | Brier (constant) | skill | ECE | mean r | mean label |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in report["judges"].items():
        skill = "-" if s["brier_skill"] is None else f"{s['brier_skill']:.3f}"
        lines.append(
            f"| {label} | {s['brier']:.4f} | {s['brier_constant']:.4f} | {skill} | {s['ece']:.4f} | "
            f"{s['mean_prediction']:.3f} | {s['mean_label']:.3f} |"
        )
    return "\n".join(lines) + "\n"
