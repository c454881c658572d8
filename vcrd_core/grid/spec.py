"""A grid file and its cells: a base run config, axes, zipped axes and seeds; every cell validated up front.

A grid file (YAML)::

    base: distill.yaml              # the run config every cell starts from (relative to this file)
    set: {rollouts.store: runs/r}   # overrides every cell shares (dotted path -> value)
    axes:                           # a product: every value of each axis with every value of the others
      objective.teacher_prefix.lambda: [0.5, 1.0]
    zip:                            # groups of axes that vary together (equal lengths), one label per entry
      - labels: [VCRD, constant]
        weighting: [{name: ratio}, {name: constant}]
        judge: [{name: oracle}, null]
    seeds: [0, 1, 2]                # each combination once per seed (the run's `seed`)
    stages: [score, train, eval]    # built-in: rollouts, score, train, eval; or "module:function"
    output: runs/my-grid            # relative to the working directory
    primary: accuracy               # the metric of the chart and of the baseline difference
    columns: [accuracy, valid]      # the metrics results.md and the printed table show (results.csv has all)
    minimize: []                    # metrics where lower is better (bold = best) besides *loss and *seconds
    maximize: []                    # metrics named *loss or *seconds where higher is better nonetheless
    baseline: constant              # label of the combination paired per seed against every other
    submitit: {timeout_min: 60}     # executor parameters for --executor submitit

A value may be a whole ``{name, params}`` component block: it replaces the block at that path whole, exactly as
``--set`` does. The key ``recipe`` (in ``axes`` or a ``zip`` group) takes recipe files instead (relative to the grid
file, e.g. ``examples/recipes/kd.yaml``): each is a partial config deep-merged over the base as ``extends`` would
merge it, before ``set`` and the other axes; unlabelled, a recipe is labelled by its file name.

A cell is one combination of the axes and one seed; its config is the base, then ``set``, then
its axis values, then ``seed`` and ``output.dir`` (``<output>/cells/<cell>/run``), validated in both phases
(:func:`vcrd_core.config.loader.validate`) before any cell runs. An invalid cell refuses the whole grid, naming
the cell and the error.

Stages run in order in each cell: ``rollouts`` (``vcrd rollouts``), ``score`` (offline scoring into the cell's
own copy of ``rollouts.store``, since each rule writes its own weights), ``train`` (``vcrd train``, merged
under LoRA), ``eval`` (``vcrd eval`` of the trained student), or ``module:function`` called as
``function(config, cell_dir) -> metrics`` (a dict of numbers, nested dicts flattened with ``/``).

Metric names are checked before any cell runs: ``primary``, ``columns``, ``minimize`` and ``maximize`` must
name metrics the stages produce (:func:`stage_metrics`; one line listing them, with a did-you-mean), and
``baseline`` a combination's label. The built-in stages produce ``score/<stream>/attenuation`` (``parity``,
``amplification``) per enabled stream, ``train/final_loss`` and ``train/seconds``, and per evaluator of
``evaluation.evaluators`` ``<label>/<dataset>/<metric>`` and ``<label>/average`` (``math/math500/pass@1``,
``math/average``). A ``module:function`` stage declares its names with :func:`produces` (or a
``grid_metrics`` attribute: a list of names, or a function of the cell's config returning one); an
undeclared stage's names are checked against the first cell it finishes. Lower is better for metrics named
``...loss`` or ``...seconds`` and those under ``minimize``; higher for every other.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vcrd_core.config.loader import apply_set, layer, load_raw, resolved_dict, validate
from vcrd_core.config.models import RunConfig
from vcrd_core.errors import ConfigError, VcrdError
from vcrd_core.evaluation.run import make_evaluators, metric_names
from vcrd_core.plugins.validation import first_error

#: Stages built into ``vcrd grid`` (any other stage is ``module:function``).
BUILTIN_STAGES = ("rollouts", "score", "train", "eval")
#: What the ``score`` stage reports per enabled stream (``score/<stream>/<share>``).
SCORE_SHARES = ("attenuation", "parity", "amplification")
#: What the ``train`` stage reports.
TRAIN_METRICS = ("train/final_loss", "train/seconds")
#: Name endings of metrics where lower is better unless ``maximize`` lists them.
LOWER_IS_BETTER = ("loss", "seconds")

F = TypeVar("F", bound=Callable[..., Any])


class GridFile(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    base: str = Field(description="The run config every cell starts from (relative to the grid file).")
    set: dict[str, Any] = Field(default_factory=dict, description="Overrides every cell shares.")
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="dotted path -> values (a product).")
    zip: list[dict[str, list[Any]]] = Field(default_factory=list, description="Groups of axes varying together.")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    stages: list[str] = Field(default_factory=lambda: ["train"], min_length=1)
    output: str = "runs/grid"
    primary: str | None = None
    columns: list[str] = Field(default_factory=list, description="Metrics in results.md and the table (all: [])")
    minimize: list[str] = Field(default_factory=list, description="Lower is better (besides *loss, *seconds).")
    maximize: list[str] = Field(default_factory=list, description="Higher is better though named *loss/*seconds.")
    baseline: str | None = None
    submitit: dict[str, Any] = Field(default_factory=dict)

    @field_validator("axes")
    @classmethod
    def _non_empty_axes(cls, axes: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, values in axes.items():
            if not values:
                raise ValueError(f"axis '{path}' has no value")
        return axes

    @field_validator("zip")
    @classmethod
    def _equal_lengths(cls, groups: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        for i, group in enumerate(groups):
            lengths = {k: len(v) for k, v in group.items()}
            if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
                raise ValueError(f"zip group {i}: its lists must be non-empty and of one length, got {lengths}")
        return groups


@dataclass
class Cell:
    """One run of the grid: a combination (``labels``, one per axis) and a seed."""

    index: int
    id: str
    labels: dict[str, str]
    seed: int
    overrides: list[str]
    dir: Path
    config: RunConfig | None = None
    fingerprint: str | None = None  # of the resolved config and the stages: a finished cell made otherwise is stale

    @property
    def label(self) -> str:
        """The combination without the seed (what results group by)."""
        return ", ".join(self.labels.values()) or "base"


METRICS = "metrics.json"


def finished_record(cell: Cell) -> dict[str, Any] | None:
    """The cell's ``metrics.json`` if this very cell made it: one made from another config or other stages (the
    grid file or its base changed since) is stale, and the cell runs again."""
    try:
        record = json.loads((cell.dir / METRICS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if cell.fingerprint is None or record.get("fingerprint") == cell.fingerprint else None


def is_done(cell: Cell) -> bool:
    return finished_record(cell) is not None


@dataclass
class Grid:
    file: Path
    spec: GridFile
    cells: list[Cell] = field(default_factory=list)
    #: The metrics the stages declare (filled in by :func:`validate_cells`), and the stages that declare none.
    metrics: set[str] = field(default_factory=set)
    undeclared: list[str] = field(default_factory=list)

    @property
    def output(self) -> Path:
        return Path(self.spec.output)

    @property
    def axis_names(self) -> list[str]:
        return list(self.cells[0].labels) if self.cells else []


def value_label(value: Any) -> str:
    """A short label of an axis value: ``ratio``, ``clamp(inner=ratio, max=1)``, ``0.5``."""
    if isinstance(value, dict) and "name" in value:
        params = value.get("params") or {}
        if not params:
            return str(value["name"])
        inner = ", ".join(f"{k}={value_label(v)}" for k, v in params.items())
        return f"{value['name']}({inner})"
    if isinstance(value, dict):
        return ", ".join(f"{k}={value_label(v)}" for k, v in value.items())
    return "null" if value is None else str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:60] or "cell"


#: The axis key whose values are recipe files (partial configs merged over the base) instead of values.
RECIPE = "recipe"


def _assignment(path: str, value: Any) -> str:
    return f"{path}={json.dumps(value)}"  # JSON is YAML: a whole component block stays one value


def _label(path: str, value: Any) -> str:
    return Path(str(value)).stem if path == RECIPE else value_label(value)


def _combinations(spec: GridFile) -> list[tuple[dict[str, str], list[str]]]:
    """Every combination of the axes: ``(labels, assignments)``."""
    dims: list[list[tuple[dict[str, str], list[str]]]] = []
    for path, values in spec.axes.items():
        dims.append([({path: _label(path, v)}, [_assignment(path, v)]) for v in values])
    for i, group in enumerate(spec.zip):
        labels = group.get("labels")
        paths = [p for p in group if p != "labels"]
        n = len(next(iter(group.values())))
        entries = []
        for j in range(n):
            label = str(labels[j]) if labels else ", ".join(_label(p, group[p][j]) for p in paths)
            entries.append(({f"zip{i}": label}, [_assignment(p, group[p][j]) for p in paths]))
        dims.append(entries)
    combos = []
    for parts in itertools.product(*dims) if dims else [()]:
        labels: dict[str, str] = {}
        assignments: list[str] = []
        for lab, assign in parts:
            labels |= lab
            assignments += assign
        combos.append((labels, assignments))
    return combos


def load_grid(path: str | Path) -> Grid:
    """Read a grid file and expand its cells (not yet validated: :func:`validate_cells`)."""
    file = Path(path)
    if not file.is_file():
        raise VcrdError(f"grid file '{file}' does not exist")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise VcrdError(f"{file}: not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        spec = GridFile.model_validate(data if data is not None else {})
    except ValidationError as exc:
        where, message = first_error(exc, GridFile)
        raise VcrdError(f"{file}: {where}: {message}" if where else f"{file}: {message}") from None
    base = Path(spec.base)
    spec.base = str(base if base.is_absolute() else file.parent / base)
    for values in [spec.axes.get(RECIPE)] + [g.get(RECIPE) for g in spec.zip]:
        for i, recipe in enumerate(values or []):
            if not isinstance(recipe, str):
                raise VcrdError(f"{file}: {RECIPE}: expected recipe file paths, got {recipe!r}")
            path = Path(recipe) if Path(recipe).is_absolute() else file.parent / recipe
            if not path.is_file():
                raise VcrdError(f"{file}: {RECIPE}: '{recipe}' does not exist (looked for {path})")
            values[i] = str(path)
    grid = Grid(file=file, spec=spec)
    combos = _combinations(spec)
    width = len(str(len(combos) * len(spec.seeds)))
    seen: set[str] = set()
    for labels, assignments in combos:
        for seed in spec.seeds:
            index = len(grid.cells)
            name = f"{index:0{width}d}-{_slug(', '.join(labels.values()) or 'base')}-s{seed}"
            if name in seen:
                raise VcrdError(f"{file}: two cells are named '{name}'")
            seen.add(name)
            cell_dir = grid.output / "cells" / name
            overrides = [_assignment(k, v) for k, v in spec.set.items()] + assignments
            overrides += [f"seed={seed}", _assignment("output.dir", str(cell_dir / "run"))]
            grid.cells.append(Cell(index, name, labels, seed, overrides, cell_dir))
    return grid


def resolve_stage(name: str) -> Callable[..., Any] | str:
    """A built-in stage's name, or the function ``module:function`` names (imported now, so that a typo is
    refused before any cell runs)."""
    if name in BUILTIN_STAGES:
        return name
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise VcrdError(f"grid stage '{name}': expected one of {', '.join(BUILTIN_STAGES)} or 'module:function'")
    try:
        func = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise VcrdError(f"grid stage '{name}': cannot import it ({exc})") from None
    if not callable(func):
        raise VcrdError(f"grid stage '{name}' is not callable")
    return func


def produces(*names: str) -> Callable[[F], F]:
    """Declare the metrics a ``module:function`` grid stage returns (names flattened with ``/``), so that
    ``vcrd grid --validate`` checks the grid's ``primary``, ``columns``, ``minimize`` and ``maximize``::

        @produces("accuracy", "valid", "n")
        def grid_stage(config: RunConfig, cell_dir: Path) -> dict[str, float]: ...
    """

    def declare(func: F) -> F:
        func.grid_metrics = tuple(names)  # type: ignore[attr-defined]
        return func

    return declare


def stage_metrics(name: str, config: RunConfig) -> set[str] | None:
    """The metric names stage ``name`` produces for a cell of ``config``; None for a ``module:function`` stage
    that declares none (:func:`produces`)."""
    stage = resolve_stage(name)
    if stage == "rollouts":
        return set()
    if stage == "score":
        return {f"score/{stream}/{share}" for stream in config.streams() for share in SCORE_SHARES}
    if stage == "train":
        return set(TRAIN_METRICS)
    if stage == "eval":
        if not config.evaluation.evaluators:
            raise ConfigError("evaluation.evaluators", "empty: the grid's eval stage needs at least one evaluator")
        return set(metric_names(make_evaluators(config)))
    declared = getattr(stage, "grid_metrics", None)
    if declared is None:
        return None
    names = declared(config) if callable(declared) else declared
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise VcrdError(f"grid stage '{name}': grid_metrics must be a list of metric names, got {names!r}")
    return set(names)


def lower_is_better(metric: str, minimize: list[str], maximize: list[str]) -> bool:
    """Whether the best value of ``metric`` is its lowest: listed under ``minimize``, or named ``...loss`` /
    ``...seconds`` and not listed under ``maximize``."""
    return metric in minimize or (metric not in maximize and metric.endswith(LOWER_IS_BETTER))


def _unknown(grid: Grid, what: str, name: str, known: set[str], source: str) -> VcrdError:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listed = ", ".join(sorted(known)) or "no metric"
    return VcrdError(f"{grid.file}: {what}: '{name}' is not a metric {source}.{hint} They produce: {listed}")


def check_metrics(grid: Grid, produced: set[str] | None = None) -> None:
    """Refuse (one line) a ``primary``, ``columns``, ``minimize`` or ``maximize`` entry that is no metric the
    stages produce, and a ``baseline`` that is no combination. While a stage declares no names (it may
    produce any), the names are checked against ``produced``, what a finished cell reported, once one has."""
    spec = grid.spec
    stages = ", ".join(spec.stages)
    known = grid.metrics | (produced or set())
    source = f"of the stages [{stages}]"
    if produced is not None:
        source = f"a finished cell reported (stages [{stages}])"
    # a stage that declares no names may produce any: its grid is checked once a cell has run
    if produced is not None or not grid.undeclared:
        wanted = [("primary", [spec.primary] if spec.primary else [])]
        wanted += [("columns", spec.columns), ("minimize", spec.minimize), ("maximize", spec.maximize)]
        for what, names in wanted:
            for name in names:
                if name not in known:
                    raise _unknown(grid, what, name, known, source)
    both = sorted(set(spec.minimize) & set(spec.maximize))
    if both:
        raise VcrdError(f"{grid.file}: '{both[0]}' is under both minimize and maximize")
    labels = list(dict.fromkeys(c.label for c in grid.cells))
    if spec.baseline is not None and spec.baseline not in labels:
        close = difflib.get_close_matches(spec.baseline, labels, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise VcrdError(
            f"{grid.file}: baseline: '{spec.baseline}' is not a combination of the grid.{hint} "
            f"Combinations: {', '.join(labels)}"
        )


def validate_cells(grid: Grid) -> Grid:
    """Validate every cell's config (both phases), every stage and the metric names the grid refers to
    (:func:`check_metrics`); the first error refuses the grid."""
    for stage in grid.spec.stages:
        resolve_stage(stage)
    grid.metrics, grid.undeclared = set(), []
    for cell in grid.cells:
        try:
            raw = load_raw(grid.spec.base)
            recipes = [a for a in cell.overrides if a.startswith(f"{RECIPE}=")]
            for assignment in recipes:  # recipes first: partial configs over the base, as `extends` merges them
                source = raw.source
                raw = layer(raw, load_raw(json.loads(assignment.split("=", 1)[1])))
                raw.source = source
            for assignment in cell.overrides:
                if assignment not in recipes:
                    apply_set(raw, assignment)
            cell.config = validate(raw)
            made = {"config": resolved_dict(cell.config), "stages": grid.spec.stages}
            cell.fingerprint = hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()
            for stage in grid.spec.stages:
                names = stage_metrics(stage, cell.config)
                if names is None:
                    grid.undeclared += [stage] if stage not in grid.undeclared else []
                else:
                    grid.metrics |= names
        except VcrdError as exc:
            raise VcrdError(f"grid cell {cell.id} ({cell.label}, seed {cell.seed}): {exc}") from None
    check_metrics(grid)
    return grid
