"""A grid's results from its finished cells: ``results.csv`` (one row per cell), ``results.md`` (mean ± std
over seeds per combination, the best per column in bold: the lowest for ``...loss``, ``...seconds`` and
``minimize``, else the highest; the paired per-seed difference to the baseline), ``results.png`` (the
primary metric's mean with its spread and every seed; never empty axes) and the same table printed with rich.
Every file is written atomically: a reader sees the previous complete file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vcrd_core.grid.spec import Grid, finished_record, lower_is_better
from vcrd_core.runs.atomic import atomic_path, atomic_writer

CSV_FILE, MD_FILE, PNG_FILE = "results.csv", "results.md", "results.png"


def finished(grid: Grid) -> list[dict[str, Any]]:
    """The records (``metrics.json``) of the finished cells, in cell order."""
    return [r for r in (finished_record(cell) for cell in grid.cells) if r is not None]


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


@dataclass
class Summary:
    """Per combination (label, in cell order): per metric the values over seeds."""

    labels: list[str]
    metrics: list[str]
    values: dict[str, dict[str, dict[int, float]]]  # label -> metric -> seed -> value
    primary: str | None
    baseline: str | None
    minimize: list[str]
    maximize: list[str] = field(default_factory=list)
    #: Why results.png was not written (set by :func:`write_results`), printed under the table.
    chart_note: str | None = None

    def stat(self, label: str, metric: str) -> tuple[float, float, int] | None:
        vals = list(self.values[label].get(metric, {}).values())
        return (*_mean_std(vals), len(vals)) if vals else None

    def paired(self, label: str) -> tuple[float, float, int] | None:
        """Mean ± std over seeds of (this combination − the baseline) in the primary metric, same seed."""
        if not self.primary or not self.baseline or self.baseline not in self.values:
            return None
        mine, base = self.values[label].get(self.primary, {}), self.values[self.baseline].get(self.primary, {})
        diffs = [mine[s] - base[s] for s in mine if s in base]
        return (*_mean_std(diffs), len(diffs)) if diffs else None

    def best(self, metric: str) -> float | None:
        means = [s[0] for s in (self.stat(label, metric) for label in self.labels) if s is not None]
        if not means:
            return None
        return min(means) if lower_is_better(metric, self.minimize, self.maximize) else max(means)


def summarize(grid: Grid, records: list[dict[str, Any]] | None = None) -> Summary:
    records = finished(grid) if records is None else records
    labels: list[str] = []
    metrics: list[str] = []
    values: dict[str, dict[str, dict[int, float]]] = {}
    for r in records:
        if r["label"] not in values:
            labels.append(r["label"])
            values[r["label"]] = {}
        for name, v in r["metrics"].items():
            if name not in metrics:
                metrics.append(name)
            values[r["label"]].setdefault(name, {})[int(r["seed"])] = float(v)
    primary = grid.spec.primary or (metrics[0] if metrics else None)
    if grid.spec.columns:
        metrics = [m for m in grid.spec.columns if m in metrics]
    spec = grid.spec
    return Summary(labels, metrics, values, primary, spec.baseline, list(spec.minimize), list(spec.maximize))


def _fmt(stat: tuple[float, float, int] | None, signed: bool = False) -> str:
    if stat is None:
        return "—"
    mean, std, n = stat
    sign = "+" if signed else ""
    return f"{mean:{sign}.4g} ± {std:.2g}" if n > 1 else f"{mean:{sign}.4g}"


def table_rows(summary: Summary) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Header, cells (text) and which cells are the best of their column."""
    header = ["combination", "seeds", *summary.metrics]
    diff_col = summary.primary is not None and summary.baseline in summary.values
    if diff_col:
        header.append(f"Δ {summary.primary} vs {summary.baseline} (paired)")
    rows, bold = [], []
    for label in summary.labels:
        stats = [summary.stat(label, m) for m in summary.metrics]
        seeds = max((s[2] for s in stats if s is not None), default=0)
        row = [label, str(seeds), *(_fmt(s) for s in stats)]
        flags = [False, False]
        for m, s in zip(summary.metrics, stats, strict=True):
            flags.append(s is not None and summary.best(m) == s[0] and len(summary.labels) > 1)
        if diff_col:
            row.append("baseline" if label == summary.baseline else _fmt(summary.paired(label), signed=True))
            flags.append(False)
        rows.append(row)
        bold.append(flags)
    return header, rows, bold


def write_csv(grid: Grid, records: list[dict[str, Any]]) -> Path:
    metrics: list[str] = []
    for r in records:
        metrics += [m for m in r["metrics"] if m not in metrics]
    axes = grid.axis_names
    path = grid.output / CSV_FILE
    with atomic_writer(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["cell", "label", *axes, "seed", "seconds", *metrics])
        for r in records:
            writer.writerow(
                [r["cell"], r["label"], *(r["labels"].get(a, "") for a in axes), r["seed"], r["seconds"]]
                + [r["metrics"].get(m, "") for m in metrics]
            )
    return path


def markdown(summary: Summary) -> str:
    header, rows, bold = table_rows(summary)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row, flags in zip(rows, bold, strict=True):
        lines.append("| " + " | ".join(f"**{c}**" if b else c for c, b in zip(row, flags, strict=True)) + " |")
    return "\n".join(lines) + "\n"


def chart_refusal(summary: Summary) -> str | None:
    """Why the chart of ``summary`` would be empty (no finished cell, no primary metric, no value of it);
    None when it has something to show."""
    if not summary.labels:
        return "no finished cell yet"
    if summary.primary is None:
        return "the finished cells report no metric"
    if all(summary.stat(lab, summary.primary) is None for lab in summary.labels):
        return f"no finished cell reports the primary metric '{summary.primary}'"
    return None


def write_chart(summary: Summary, path: Path) -> Path | None:
    """Bar chart of the primary metric: mean over seeds, error bar ± std, one dot per seed. Never empty axes:
    when :func:`chart_refusal` gives a reason, nothing is written, an older chart is removed (it would show
    other results) and the reason is ``summary.chart_note``."""
    summary.chart_note = chart_refusal(summary)
    if summary.chart_note is not None:
        path.unlink(missing_ok=True)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert summary.primary is not None
    labels = [lab for lab in summary.labels if summary.stat(lab, summary.primary) is not None]
    stats = [s for s in (summary.stat(lab, summary.primary) for lab in labels) if s is not None]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.2))
    xs = range(len(labels))
    ax.bar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=4, color="#8fb3d9", edgecolor="#2a5d8f")
    for x, lab in zip(xs, labels, strict=True):
        seeds = list(summary.values[lab][summary.primary].values())
        ax.scatter([x] * len(seeds), seeds, color="#1b1b1b", s=10, zorder=3)
    ax.set_xticks(list(xs), labels, rotation=30, ha="right")
    ax.set_ylabel(f"{summary.primary}\n(mean ± std; dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return path


def write_results(grid: Grid) -> Summary:
    """Rewrite ``results.csv``, ``results.md`` and ``results.png`` from the finished cells."""
    grid.output.mkdir(parents=True, exist_ok=True)
    records = finished(grid)
    write_csv(grid, records)
    summary = summarize(grid, records)
    with atomic_writer(grid.output / MD_FILE) as handle:
        done = f"{len(records)} of {len(grid.cells)} cells finished"
        handle.write(f"# {grid.file.stem}\n\n{done}; mean ± std over seeds; best per column in bold.\n\n")
        handle.write(markdown(summary))
    write_chart(summary, grid.output / PNG_FILE)
    return summary


def print_table(summary: Summary, console: Any, title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    header, rows, bold = table_rows(summary)
    table = Table(title=escape(title), title_justify="left")
    for i, name in enumerate(header):
        table.add_column(escape(name), justify="left" if i == 0 else "right")
    for row, flags in zip(rows, bold, strict=True):
        table.add_row(*(f"[bold]{escape(c)}[/bold]" if b else escape(c) for c, b in zip(row, flags, strict=True)))
    console.print(table)
    if summary.chart_note is not None:
        console.print(f"results.png not written: {escape(summary.chart_note)}")
