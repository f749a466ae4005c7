"""Result tables -> the claim-by-claim table of RESULTS.md (``detcon claims``; docs/design.md §2.5).

Input: one tidy table per ablation, ``results/<ablation>.csv``, one row per run x backbone x
task x metric with the columns :data:`BASE_COLUMNS` plus one per grid parameter, named by its
dotted config key (``method``, ``masks.source``, ``augment.crop_size``, ...): the tidy table of
:func:`detcon.results.scan_ablation` without ``state``, plus ``config_digest`` and
``git_commit``. ``backbone`` is ``pretrained`` or a reference (``random``: the floor,
``supervised``: the ceiling).

Each claim of the paper (Hénaff et al., ICCV 2021, arXiv 2103.10957) is a :class:`ClaimSpec`
in :data:`CLAIMS`: data naming the ablation, the points compared (:class:`Difference`,
:class:`Ordered`, :class:`RankCorrelation`, :class:`Efficiency`), the downstream (task, metric)
and the :class:`Criterion` the paper's statement implies. Every measurement is a function of the
compared points' means over seeds; its 95% CI is a percentile bootstrap over seeds
(:func:`bootstrap`: seeds resampled jointly across the points when they share their seeds,
which pairs them, else per point; a fixed RNG seed, so RESULTS.md is deterministic). With the
three seeds of our ablation files the CI is crude: for a paired difference it is the range of
the three per-seed differences (a resample repeating one seed has probability 1/27 > 2.5%), whose
coverage under normal noise is 1 - 2 (1/2)^3 = 75%, not 95%.

The verdict rule (:data:`VERDICT_RULE`, applied to every row by :func:`verdict`):
``reproduced`` when the whole CI satisfies the test (lies on the paper's side of its
threshold), ``not reproduced`` when no value of it does, ``inconclusive`` otherwise (or when
some point has fewer than two seeds), and ``not run`` when the ablation's table is missing or
lacks the points. "Little or no loss" claims are tested against a tolerance,
:data:`TOLERANCE` (0.01 mIoU): the CI must exclude a loss larger than it.

Pure functions: :func:`read_results_table` / :func:`load_tables` read and check the tables,
:func:`evaluate_claims` measures every claim, :func:`render_claims_markdown` writes the block
of RESULTS.md and :func:`replace_block` puts it between :data:`BEGIN` and :data:`END`.
:func:`write_results` is what ``detcon claims`` calls.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "BASE_COLUMNS",
    "NOT_GRID_COLUMNS",
    "BEGIN",
    "CLAIMS",
    "END",
    "HEADER",
    "TOLERANCE",
    "VERDICTS",
    "VERDICT_RULE",
    "ClaimResult",
    "ClaimSpec",
    "Difference",
    "Efficiency",
    "Nth",
    "Ordered",
    "RankCorrelation",
    "Criterion",
    "bootstrap",
    "evaluate_claims",
    "load_tables",
    "mask_quality_rows",
    "read_results_table",
    "register_cli",
    "render_claims_markdown",
    "replace_block",
    "spearman",
    "verdict",
    "write_results",
]

# Columns every results table has besides its grid parameters.
BASE_COLUMNS = (
    "ablation",
    "run_id",
    "seed",
    "config_digest",
    "git_commit",
    "backbone",
    "task",
    "metric",
    "value",
)
# Columns of a results table that are not grid parameters: BASE_COLUMNS, the export's git_dirty,
# and the state of a `detcon report` tidy table.
NOT_GRID_COLUMNS = frozenset((*BASE_COLUMNS, "git_dirty", "state"))
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not run")
# "Little or no loss" / "no gain": the CI must exclude a change larger than this (metric units).
TOLERANCE = 0.01
CI_LEVEL = 0.95
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
BEGIN = "<!-- claims:begin -->"
END = "<!-- claims:end -->"
COMMAND = "detcon claims --results results --out RESULTS.md"
MASK_QUALITY_KEY = "mean_best_iou"
FIGURE_NAME = "claims_mask_quality.png"
# `detcon claims`'s mask-quality table when none is named (left out when it does not exist)
_MASK_QUALITY = Path("figures/mask_quality.csv")

VERDICT_RULE = (
    "Each row tests one statistic against the threshold the paper's statement implies "
    f'(column *test*; a "little or no loss" is a loss smaller than {TOLERANCE} mIoU). '
    "**reproduced**: the whole 95% CI passes the test; **not reproduced**: no value of the CI "
    "passes it; **inconclusive**: the CI straddles the threshold, or a point has fewer than "
    "2 seeds, or (pretraining efficiency) the baseline's longest schedule does not beat random "
    "initialisation, so reaching it shows nothing; **not run**: the ablation's table is "
    "missing or lacks the points. CIs are "
    f"percentile bootstraps over seeds ({BOOTSTRAP_SAMPLES} resamples, RNG seed "
    f"{BOOTSTRAP_SEED}; seeds resampled jointly across the compared points when they share "
    "them, i.e. paired). With 3 seeds they are crude: for a paired difference the interval is "
    "the range of the 3 per-seed differences (a resample repeating one seed has probability "
    "1/27, over 2.5%), so *reproduced* means every seed lies on the paper's side, and such an "
    "interval holds the true value about 75% of the time under normal noise, not 95%."
)

HEADER = """\
# Results

A reproduction of DetCon (Hénaff et al., *Efficient Visual Pretraining with Contrastive
Detection*, ICCV 2021) and its ablations in one harness (docs/design.md). The table below
holds each claim of the paper that our ablations test, what we measured and a verdict.

**Scale.** The numbers come from the `cpu` profile (each point's `config.json` under `results/`): a
miniature on synthetic scenes (64 px, narrow ResNet, short schedules, frozen-encoder probes;
docs/cpu-miniature.md). It asks whether the paper's effects show at small scale; it does not
reproduce the paper's numbers, and an effect missing here may still hold at the paper's scale.

Regenerate: `make figures` (it runs `detcon claims`, which rewrites only the block between the
markers below from `results/<ablation>.csv`).

"""

_MINUS = "−"  # U+2212, as in print
_METRIC_NAMES = {
    "miou": "mIoU",
    "pixel_acc": "pixel acc.",
    "delta1": "δ1",
    "rmse": "RMSE",
    "ap_bb": "AP^bb",
    "ap_mk": "AP^mk",
    "top1": "top-1",
}


# --------------------------------------------------------------------------- claim specs


@dataclass(frozen=True)
class Nth:
    """A grid level named by its rank: the ``index``-th smallest of the ``of`` values a
    parameter takes in the table (``Nth(-1, of=3)``: the largest of three). Ranks keep a spec
    valid at every profile: the cpu profile runs 224/384/512 px as 64/112/144 px and 128
    negative groups as 8 (``values:`` of the ablation files). A table with another number of
    levels leaves the point unresolved (``not run``), never silently compared with itself."""

    index: int
    of: int


Cell = Mapping[str, Any]  # grid parameter -> value or Nth: one point of an ablation (all seeds)
# Maps the compared points' means, (points, B), to the statistic, (B,). Each measure below says
# which points it compares (``cells``) and gives its statistic for them (``statistic``).
Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Criterion:
    """What the paper's statement implies for a statistic: ``statistic <op> threshold``."""

    op: str  # one of >, >=, <, <=
    threshold: float

    def passes(self, x: float | np.ndarray) -> Any:
        return {
            ">": np.greater,
            ">=": np.greater_equal,
            "<": np.less,
            "<=": np.less_equal,
        }[self.op](x, self.threshold)

    def __str__(self) -> str:
        op = {">=": "≥", "<=": "≤"}.get(self.op, self.op)
        return f"{op} {self.threshold:g}".replace("-", _MINUS)


@dataclass(frozen=True)
class Difference:
    """``mean(first) − mean(second)``, or with ``minus``, the difference of differences
    ``(first − second) − (minus[0] − minus[1])`` (an effect under one condition against the
    same effect under another). In the metric's units."""

    first: Cell
    second: Cell
    minus: tuple[Cell, Cell] | None = None
    in_metric_units = True
    kind = "Δ"

    def cells(self, rows: pd.DataFrame, quality: pd.DataFrame | None) -> list[dict[str, str]]:
        both = (self.first, self.second, *(self.minus or ()))
        return [_resolve(c, rows) for c in both]

    def parameters(self) -> set[str]:
        return {k for c in (self.first, self.second, *(self.minus or ())) for k in c}

    def statistic(self, cells: Any, quality: Any) -> Statistic:
        if self.minus:
            return lambda m: (m[0] - m[1]) - (m[2] - m[3])
        return lambda m: m[0] - m[1]

    def describe(self, labels: Sequence[str], metric: str) -> str:
        a, b, *rest = labels
        text = f"{a} {_MINUS} {b}"
        if rest:
            text = f"({text}) {_MINUS} ({rest[0]} {_MINUS} {rest[1]})"
        return f"Δ{metric} = {text}"


@dataclass(frozen=True)
class Ordered:
    """The smallest gap between neighbours of ``levels`` of ``key`` (best first) at ``fixed``:
    positive exactly when the means are in the stated order. In the metric's units."""

    key: str
    levels: tuple[str, ...]
    fixed: Cell = field(default_factory=dict)
    in_metric_units = True
    kind = "smallest gap"

    def cells(self, rows: pd.DataFrame, quality: pd.DataFrame | None) -> list[dict[str, str]]:
        return [_resolve({**self.fixed, self.key: level}, rows) for level in self.levels]

    def parameters(self) -> set[str]:
        return {self.key, *self.fixed}

    def statistic(self, cells: Any, quality: Any) -> Statistic:
        return lambda m: np.min(m[:-1] - m[1:], axis=0)

    def describe(self, labels: Sequence[str], metric: str) -> str:
        order = " > ".join(_norm(v) for v in self.levels)
        return f"smallest gap in {metric}: {order}"


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's ρ between the mask quality of each value of ``key`` (``mean_best_iou`` of
    ``figures/mask_quality.csv``) and its mean downstream metric at ``fixed``; every source of
    the table that has a quality counts (at least 3)."""

    key: str = "masks.source"
    fixed: Cell = field(default_factory=dict)
    in_metric_units = False
    kind = "Spearman ρ"

    def _sources(self, rows: pd.DataFrame, quality: pd.DataFrame | None) -> list[str]:
        if quality is None:
            raise _NotRun(
                "no mask-quality table (figures/mask_quality.csv: `detcon masks quality`)"
            )
        known = {_norm(s) for s in quality["source"]}
        sub = rows[_matches(rows, _resolve(self.fixed, rows))]
        sources = [s for s in _levels(sub[self.key]) if s in known]
        if len(sources) < 3:
            raise _NotRun(f"fewer than 3 mask sources with a quality ({', '.join(sources)})")
        return sources

    def cells(self, rows: pd.DataFrame, quality: pd.DataFrame | None) -> list[dict[str, str]]:
        fixed = _resolve(self.fixed, rows)
        return [{**fixed, self.key: s} for s in self._sources(rows, quality)]

    def parameters(self) -> set[str]:
        return {self.key, *self.fixed}

    def statistic(self, cells: Sequence[Mapping[str, str]], quality: pd.DataFrame) -> Statistic:
        by_source = {
            _norm(s): float(q) for s, q in zip(quality["source"], quality[MASK_QUALITY_KEY])
        }
        x = np.array([by_source[c[self.key]] for c in cells])
        return lambda m: spearman(x, m)

    def describe(self, labels: Sequence[str], metric: str) -> str:
        return f"Spearman ρ(mask quality, {metric}) over {len(labels)} sources"


@dataclass(frozen=True)
class Efficiency:
    """Pretraining needed by ``method`` to match ``baseline``'s longest schedule, as a fraction
    of that schedule: the smallest length (value of ``key``) at which ``method``'s mean reaches
    ``baseline``'s mean at the longest length, divided by that length; ``inf`` when it never
    does within the grid. Lengths are the values of ``key`` (``optim.epochs``) the table holds."""

    method: str
    baseline: str
    key: str = "optim.epochs"
    method_key: str = "method"
    in_metric_units = False
    kind = "pretraining ratio"

    def _lengths(self, rows: pd.DataFrame) -> list[str]:
        sub = rows[rows[self.method_key] == _norm(self.method)]
        lengths = _levels(sub[self.key])
        if not lengths:
            raise _NotRun(f"no {self.method} point")
        return lengths

    def cells(self, rows: pd.DataFrame, quality: pd.DataFrame | None) -> list[dict[str, str]]:
        lengths = self._lengths(rows)
        base_lengths = _levels(rows.loc[rows[self.method_key] == _norm(self.baseline), self.key])
        longest = max([*lengths, *base_lengths], key=float)
        # a length the baseline ran and the method did not would move the ratio to the next
        # length the method has, silently: the grid is incomplete, the claim not run
        missing = [x for x in base_lengths if x not in lengths]
        if missing:
            raise _NotRun(f"no {self.method} result at {self.key} {', '.join(missing)}")
        lengths = [x for x in lengths if float(x) <= float(longest)]
        m, b = self.method_key, _norm(self.baseline)
        return [{m: _norm(self.method), self.key: x} for x in lengths] + [{m: b, self.key: longest}]

    def parameters(self) -> set[str]:
        return {self.key, self.method_key}

    def statistic(self, cells: Sequence[Mapping[str, str]], quality: Any) -> Statistic:
        lengths = np.array([float(c[self.key]) for c in cells])
        return lambda m: _efficiency(lengths, m)

    def describe(self, labels: Sequence[str], metric: str) -> str:
        return (
            f"{self.key} for {self.method} to reach {self.baseline}'s {metric} at its longest "
            "schedule, ÷ that schedule"
        )


@dataclass(frozen=True)
class ClaimSpec:
    """One claim of the paper and how an ablation tests it.

    Attributes:
        key: the row's label in RESULTS.md (``1a``).
        statement: the claim in words; ``where``: where the paper makes it (our reading).
        ablation: the results table (``results/<ablation>.csv``).
        measure: the statistic (:class:`Difference`, :class:`Ordered`,
            :class:`RankCorrelation`, :class:`Efficiency`).
        test: what the statement implies for the statistic.
        tasks: downstream (task kind, metric) pairs: one row per task of that kind in the
            table (``segmentation`` matches ``segmentation`` and ``segmentation_voc``).
        needed: what else it would take, shown when the verdict is not ``reproduced``.
    """

    key: str
    statement: str
    where: str
    ablation: str
    measure: Difference | Ordered | RankCorrelation | Efficiency
    test: Criterion
    tasks: tuple[tuple[str, str], ...] = (("segmentation", "miou"),)
    needed: str = ""

    def parameters(self) -> set[str]:
        """The grid-parameter columns the spec reads."""
        return self.measure.parameters()


_DENSE = (("segmentation", "miou"), ("depth", "delta1"), ("detection", "ap_bb"))
_PAIRS = (("detcon_b", "byol", "DetCon-B", "BYOL"), ("detcon_s", "simclr", "DetCon-S", "SimCLR"))
_METHODS = (("detcon_b", "DetCon-B"), ("detcon_s", "DetCon-S"))
_BETTER_FIRST = ("ground_truth", "mcg", "fh", "grid")
_SOURCE_NAMES = {"ground_truth": "ground truth", "mcg": "MCG", "fh": "FH", "grid": "grid"}
_SCALE = (
    "the paper's scale (ImageNet/COCO, ResNet-50, long schedules, fine-tuned transfer) or a "
    "larger cpu recipe"
)
_SEGMENTATIONS = "paper §5 'using better segmentations'"

CLAIMS: tuple[ClaimSpec, ...] = (
    # 1. Dense transfer at equal pretraining (paper Table 1: both DetCon variants above their
    # image-level counterparts on COCO, VOC, Cityscapes and NYU-Depth).
    *(
        ClaimSpec(
            key=f"1{letter}",
            statement=f"{name} transfers better than {base_name} to dense tasks at equal "
            "pretraining",
            where="paper Table 1",
            ablation="baselines",
            measure=Difference({"method": method}, {"method": base}),
            test=Criterion(">", 0.0),
            tasks=_DENSE,
            needed=_SCALE,
        )
        for letter, (method, base, name, base_name) in zip("ab", _PAIRS)
    ),
    # 2. Pretraining efficiency (abstract: "up to 10x less pretraining"; Fig. 1 / §4: DetCon-S
    # at 200 epochs beats SimCLR at 1000, DetCon-B's gains of 2-10x over BYOL).
    *(
        ClaimSpec(
            key=f"2{letter}",
            statement=f"{name} reaches {base_name}'s longest-schedule segmentation with at most "
            "1/5 of its pretraining; paper: 5-10x less",
            where="paper abstract, Fig. 1",
            ablation="sample_efficiency",
            measure=Efficiency(method, base),
            test=Criterion("<=", 0.2),
            needed="a schedule grid that reaches the baseline's plateau, with steps of 2x or "
            "finer below 1/5; " + _SCALE,
        )
        for letter, (method, base, name, base_name) in zip("ab", _PAIRS)
    ),
    # 3. Mask quality (paper Fig. 4 and the mask-quality analysis of §5).
    *(
        ClaimSpec(
            key=f"3{letter}",
            statement=f"{name}: better masks transfer better, ground truth > MCG > FH > grid",
            where="paper Fig. 4",
            ablation="mask_type",
            measure=Ordered("masks.source", _BETTER_FIRST, {"method": method}),
            test=Criterion(">", 0.0),
            needed="mask sources whose quality gaps show at this scale; more seeds",
        )
        for letter, (method, name) in zip("ab", _METHODS)
    ),
    *(
        ClaimSpec(
            key=f"3{letter}",
            statement=f"{name}: transfer correlates with mask quality (best overlap of the "
            "masks with ground-truth objects)",
            where="paper §5, mask quality analysis",
            ablation="mask_type",
            measure=RankCorrelation("masks.source", {"method": method}),
            test=Criterion(">", 0.0),
            needed="more mask sources (4 give a coarse ρ) and more seeds",
        )
        for letter, (method, name) in zip("cd", _METHODS)
    ),
    # 4. Resolution: 384 px helps every mask source, 512 px helps only ground truth.
    *(
        ClaimSpec(
            key=f"4{letter}",
            statement=f"DetCon-B, {_SOURCE_NAMES[source]} masks: larger views (384 vs 224 px) help",
            where=f"{_SEGMENTATIONS}, resolution",
            ablation="resolution",
            measure=Difference(
                {"masks.source": source, "augment.crop_size": Nth(1, of=3)},
                {"masks.source": source, "augment.crop_size": Nth(0, of=3)},
            ),
            test=Criterion(">", 0.0),
            needed=_SCALE,
        )
        for letter, source in zip("abc", ("ground_truth", "mcg", "fh"))
    ),
    *(
        ClaimSpec(
            key=f"4{letter}",
            statement=f"DetCon-B, {_SOURCE_NAMES[source]} masks: the largest views (512 vs "
            f"384 px) {'help' if source == 'ground_truth' else 'do not help'}",
            where=f"{_SEGMENTATIONS}, resolution",
            ablation="resolution",
            measure=Difference(
                {"masks.source": source, "augment.crop_size": Nth(2, of=3)},
                {"masks.source": source, "augment.crop_size": Nth(1, of=3)},
            ),
            test=Criterion(">", 0.0) if source == "ground_truth" else Criterion("<", TOLERANCE),
            needed=_SCALE,
        )
        for letter, source in zip("def", ("ground_truth", "mcg", "fh"))
    ),
    # 5. Negatives ÷128: little loss with ground truth (DetCon-S even gains), more with FH.
    ClaimSpec(
        key="5a",
        statement="DetCon-B, ground-truth masks: 128x fewer negatives lose little",
        where=f"{_SEGMENTATIONS}, table (a)",
        ablation="negatives",
        measure=Difference(
            {
                "method": "detcon_b",
                "masks.source": "ground_truth",
                "loss.negative_groups": Nth(1, of=2),
            },
            {"method": "detcon_b", "masks.source": "ground_truth", "loss.negative_groups": 1},
        ),
        test=Criterion(">", -TOLERANCE),
        needed=_SCALE + " (the cpu batch of 32 splits only 8 ways)",
    ),
    ClaimSpec(
        key="5b",
        statement="DetCon-S, ground-truth masks: 128x fewer negatives even help",
        where=f"{_SEGMENTATIONS}, table (a)",
        ablation="negatives",
        measure=Difference(
            {
                "method": "detcon_s",
                "masks.source": "ground_truth",
                "loss.negative_groups": Nth(1, of=2),
            },
            {"method": "detcon_s", "masks.source": "ground_truth", "loss.negative_groups": 1},
        ),
        test=Criterion(">", 0.0),
        needed=_SCALE + " (the cpu batch of 32 splits only 8 ways)",
    ),
    *(
        ClaimSpec(
            key=f"5{letter}",
            statement=f"{name}: 128x fewer negatives cost more with FH masks than with ground "
            "truth",
            where=f"{_SEGMENTATIONS}, table (a)",
            ablation="negatives",
            measure=Difference(
                {"method": method, "masks.source": "fh", "loss.negative_groups": Nth(1, of=2)},
                {"method": method, "masks.source": "fh", "loss.negative_groups": 1},
                minus=(
                    {
                        "method": method,
                        "masks.source": "ground_truth",
                        "loss.negative_groups": Nth(1, of=2),
                    },
                    {"method": method, "masks.source": "ground_truth", "loss.negative_groups": 1},
                ),
            ),
            test=Criterion("<", 0.0),
            needed=_SCALE + " (the cpu batch of 32 splits only 8 ways)",
        )
        for letter, (method, name) in zip("cd", _METHODS)
    ),
    # 6. Single-view positives: harmless with clean masks, harmful with poor ones.
    ClaimSpec(
        key="6a",
        statement="DetCon-B, ground-truth masks: positives from a single view lose little",
        where=f"{_SEGMENTATIONS}, table (b)",
        ablation="single_view",
        measure=Difference(
            {"masks.source": "ground_truth", "augment.single_view": True},
            {"masks.source": "ground_truth", "augment.single_view": False},
        ),
        test=Criterion(">", -TOLERANCE),
        needed=_SCALE,
    ),
    *(
        ClaimSpec(
            key=f"6{letter}",
            statement=f"DetCon-B, {_SOURCE_NAMES[source]} masks: positives from a single view hurt",
            where=f"{_SEGMENTATIONS}, table (b)",
            ablation="single_view",
            measure=Difference(
                {"masks.source": source, "augment.single_view": True},
                {"masks.source": source, "augment.single_view": False},
            ),
            test=Criterion("<", 0.0),
            needed=_SCALE,
        )
        for letter, source in zip("bc", ("fh", "grid"))
    ),
)


# --------------------------------------------------------------------------- reading tables


class _NotRun(Exception):
    """The table lacks what a claim compares; the message says what."""


def _norm(value: Any) -> str:
    """A grid value as comparable text: ``True``/``true`` -> ``true``, ``1``/``1.0`` -> ``1``
    (CSV readers and YAML spell them differently); anything else as written."""
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return text.lower()
    try:
        x = float(text)
    except ValueError:
        return text
    return str(int(x)) if x.is_integer() else repr(x)


def _levels(values: pd.Series) -> list[str]:
    """Distinct values, numerically sorted when all are numbers."""
    distinct = list(dict.fromkeys(values))
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return sorted(distinct)


def _check_table(table: pd.DataFrame, where: str, params: Iterable[str]) -> pd.DataFrame:
    """The table with its columns checked, grid values as :func:`_norm` text, ``value`` as
    float, ``seed`` as int, and (if a ``state`` column is there) only ``done`` rows.

    Raises:
        ValueError: naming ``where`` and the missing columns, or the first bad value.
    """
    missing = [c for c in (*BASE_COLUMNS, *sorted(params)) if c not in table.columns]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {', '.join(missing)}; a results table has the columns "
            f"{', '.join(BASE_COLUMNS)} and one per grid parameter (e.g. method, masks.source), "
            "the tidy table of `detcon report` without state"
        )
    out = table.copy()
    if "state" in out.columns:
        out = out[out["state"].astype(str) == "done"]
    value = pd.to_numeric(out["value"], errors="coerce")
    seed = pd.to_numeric(out["seed"], errors="coerce")
    checks = (
        ("value", value.isna(), "a number"),
        ("seed", seed.isna() | (seed.fillna(0) % 1 != 0), "an integer"),
    )
    for col, bad, what in checks:
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            row = out.index[i]  # the row of the file (data rows from 1), or of the table given
            row = row + 1 if isinstance(row, (int, np.integer)) else row
            raise ValueError(f"{where}: row {row} has {col}={out[col].iloc[i]!r}, expected {what}")
    out["value"] = value.astype(float)
    out["seed"] = seed.astype(int)
    for col in out.columns:
        if col not in NOT_GRID_COLUMNS:  # grid parameters
            out[col] = out[col].map(_norm)
    for col in ("backbone", "task", "metric"):
        out[col] = out[col].astype(str)
    return out


def read_results_table(path: str | Path, params: Iterable[str] = ()) -> pd.DataFrame:
    """One ``results/<ablation>.csv`` (module docstring), checked.

    Args:
        path: the file; its name must match its ``ablation`` column.
        params: grid-parameter columns it must have (the claims on it read them).
    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, a missing column, a non-numeric value or seed, or rows of
            another ablation; the message names the file.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    except pd.errors.ParserError as exc:
        raise ValueError(f"{path}: not a readable CSV table ({exc})") from exc
    table = _check_table(table, str(path), params)
    other = sorted(set(table["ablation"]) - {path.stem})
    if other:
        raise ValueError(
            f"{path}: holds rows of ablation(s) {', '.join(other)}, not of {path.stem!r} as its "
            "name says: results/<ablation>.csv holds only that ablation's rows (a copy of one, "
            f"e.g. from `git show`, keeps its name: {other[0]}.csv in a folder of its own)"
        )
    return table


def load_tables(
    results_dir: str | Path, specs: Sequence[ClaimSpec] = CLAIMS
) -> dict[str, pd.DataFrame]:
    """``{ablation: table}`` for every ablation the specs use whose CSV exists in
    ``results_dir`` (a missing one is left out: its claims are ``not run``)."""
    needed: dict[str, set[str]] = {}
    for spec in specs:
        needed.setdefault(spec.ablation, set()).update(spec.parameters())
    return {
        name: read_results_table(path, params)
        for name, params in needed.items()
        if (path := Path(results_dir) / f"{name}.csv").is_file()
    }


# --------------------------------------------------------------------------- statistics


def _resolve(cell: Cell, rows: pd.DataFrame) -> dict[str, str]:
    """A cell's filters as text values, :class:`Nth` ranks looked up in ``rows``."""
    out = {}
    for key, value in cell.items():
        if isinstance(value, Nth):
            levels = _levels(rows[key])
            if len(levels) != value.of:
                raise _NotRun(
                    f"{key} takes {len(levels)} value(s) ({', '.join(levels)}), expected {value.of}"
                )
            value = levels[value.index]
        out[key] = _norm(value)
    return out


def _matches(rows: pd.DataFrame, cell: Mapping[str, str]) -> pd.Series:
    mask = pd.Series(True, index=rows.index)
    for key, value in cell.items():
        mask &= rows[key] == value
    return mask


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of ``x`` (n,) with each column of ``y`` (n, B): Pearson's r of their
    ranks (ties get their mean rank); NaN where either is constant."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=float)
    y = y[:, None] if y.ndim == 1 else y
    rx = rankdata(x)[:, None] - (len(x) + 1) / 2
    ry = rankdata(y, axis=0)
    ry = ry - ry.mean(axis=0)
    denom = np.sqrt((rx**2).sum(0) * (ry**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rx * ry).sum(0) / np.where(denom > 0, denom, 1), np.nan)


def _efficiency(lengths: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Cells = the method at ``lengths[:-1]`` then the baseline at ``lengths[-1]`` (its
    longest); the smallest length whose mean reaches the baseline's, ÷ the longest (inf if
    none)."""
    reached = means[:-1] >= means[-1]
    first = np.argmax(reached, axis=0)
    return np.where(reached.any(axis=0), lengths[:-1][first] / lengths[-1], np.inf)


def bootstrap(
    cells: Sequence[pd.Series],
    statistic: Statistic,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CI_LEVEL,
) -> tuple[float, tuple[float, float] | None, bool]:
    """A statistic of the cells' means, and its percentile-bootstrap CI over seeds.

    Args:
        cells: per compared point, its values indexed by seed.
        statistic: maps the means (cells, B) to (B,).
        samples, seed: bootstrap resamples and the RNG seed (fixed: deterministic output).
        level: CI coverage.
    Returns:
        ``(estimate, ci, paired)``: ``ci`` is None when a cell has fewer than 2 seeds;
        ``paired`` is True when all cells hold the same seeds, which are then resampled
        jointly (one draw of seeds for every cell); otherwise each cell's seeds are resampled
        on their own.
    """
    values = [c.to_numpy(dtype=float) for c in cells]
    estimate = float(statistic(np.array([v.mean() for v in values])[:, None])[0])
    seed_sets = [tuple(c.index) for c in cells]
    paired = all(s == seed_sets[0] for s in seed_sets)
    if min(len(v) for v in values) < 2:
        return estimate, None, paired
    rng = np.random.default_rng(seed)
    if paired:
        n = len(values[0])
        idx = rng.integers(0, n, size=(samples, n))
        means = np.stack([v[idx].mean(axis=1) for v in values])
    else:
        means = np.stack(
            [v[rng.integers(0, len(v), size=(samples, len(v)))].mean(axis=1) for v in values]
        )
    stats = statistic(means)
    stats = stats[~np.isnan(stats)]
    if len(stats) == 0:
        return estimate, None, paired
    tail = (1 - level) / 2
    lo, hi = np.quantile(stats, [tail, 1 - tail], method="inverted_cdf")
    return estimate, (float(lo), float(hi)), paired


def verdict(test: Criterion, ci: tuple[float, float] | None) -> str:
    """The verdict rule (:data:`VERDICT_RULE`) for a computed CI; None (too few seeds) is
    ``inconclusive``. (``not run`` is decided before: there is no CI to judge.)"""
    if ci is None:
        return "inconclusive"
    lo_ok, hi_ok = bool(test.passes(ci[0])), bool(test.passes(ci[1]))
    if lo_ok and hi_ok:
        return "reproduced"
    if not lo_ok and not hi_ok:
        return "not reproduced"
    return "inconclusive"


# --------------------------------------------------------------------------- evaluating claims


@dataclass(frozen=True)
class ClaimResult:
    """One row of the claims table: a spec measured on one task.

    ``estimate`` / ``ci`` are None when ``verdict`` is ``not run`` (``reason`` says why);
    ``seeds`` the seeds per point; ``paired`` whether the points share them; ``test_text`` the
    statistic and threshold; ``floor`` / ``ceiling`` the references' means on that task, when
    the table has them; ``detail`` what the estimate means in grid terms (``2 of 16``)."""

    spec: ClaimSpec
    task: str
    metric: str
    verdict: str
    test_text: str
    estimate: float | None = None
    ci: tuple[float, float] | None = None
    seeds: tuple[int, int] = (0, 0)
    paired: bool = False
    floor: float | None = None
    ceiling: float | None = None
    reason: str = ""
    detail: str = ""

    @property
    def share(self) -> float | None:
        """The effect as a fraction of the floor -> ceiling range (metric-unit measures)."""
        if (
            self.estimate is None
            or not self.spec.measure.in_metric_units
            or self.floor is None
            or self.ceiling is None
            or self.ceiling == self.floor
        ):
            return None
        return self.estimate / (self.ceiling - self.floor)


def _tasks(table: pd.DataFrame, kind: str, metric: str) -> list[str]:
    rows = table[(table["backbone"] == "pretrained") & (table["metric"] == metric)]
    return [t for t in _levels(rows["task"]) if t == kind or t.startswith(kind + "_")]


def _reference(table: pd.DataFrame, backbone: str, task: str, metric: str) -> float | None:
    rows = table[(table["backbone"] == backbone) & (table["task"] == task)]
    rows = rows[rows["metric"] == metric]
    return float(rows.groupby("seed")["value"].mean().mean()) if len(rows) else None


def _varying(cells: Sequence[Mapping[str, str]]) -> list[str]:
    """The keys whose values differ between the cells (all keys if none do)."""
    return [k for k in cells[0] if len({c.get(k) for c in cells}) > 1] or list(cells[0])


def _labels(cells: Sequence[Mapping[str, str]]) -> list[str]:
    """Each cell as its values of :func:`_varying` keys (``fh/112``)."""
    keys = _varying(cells)
    return ["/".join(c[k] for k in keys) for c in cells]


def _point(cell: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in cell.items())


def _measure(
    spec: ClaimSpec,
    table: pd.DataFrame,
    task: str,
    metric: str,
    quality: Any,
    floor: float | None = None,
) -> dict:
    rows = table[
        (table["backbone"] == "pretrained") & (table["task"] == task) & (table["metric"] == metric)
    ]
    m = spec.measure
    cells = m.cells(rows, quality)
    name = _METRIC_NAMES.get(metric, metric)
    test_text = f"{m.describe(_labels(cells), name)} {spec.test}"
    if isinstance(m, Difference):
        test_text += f" ({'/'.join(_varying(cells))})"
    per_seed = [rows[_matches(rows, c)].groupby("seed")["value"].mean() for c in cells]
    missing = [_point(c) for c, s in zip(cells, per_seed) if s.empty]
    if missing:
        raise _NotRun(f"no {task} {metric} rows for {'; '.join(missing)}")
    estimate, ci, paired = bootstrap(per_seed, m.statistic(cells, quality))
    sizes = [len(s) for s in per_seed]
    found = {
        "test_text": test_text,
        "estimate": estimate,
        "ci": ci,
        "paired": paired,
        "seeds": (min(sizes), max(sizes)),
        "verdict": verdict(spec.test, ci),
        "detail": "",
    }
    if isinstance(m, Efficiency):
        longest = cells[-1][m.key]
        reached = "not reached" if math.isinf(estimate) else f"{estimate * float(longest):g}"
        found["detail"] = f"{reached} of {longest}"
        target = float(per_seed[-1].mean())  # the baseline at its longest schedule
        if floor is not None and target <= floor:  # reaching it shows nothing
            found["verdict"] = "inconclusive"
            found["reason"] = (
                f"{m.baseline}'s longest schedule ({target:.3f}) does not beat random "
                f"initialisation ({floor:.3f}): the random encoder reaches that target too"
            )
    return found


def evaluate_claims(
    tables: Mapping[str, pd.DataFrame | None],
    mask_quality: pd.DataFrame | None,
    specs: Sequence[ClaimSpec] = CLAIMS,
) -> list[ClaimResult]:
    """Measure every claim: one :class:`ClaimResult` per spec and task found (a task kind with
    no rows in a present table gives one ``not run`` row).

    Args:
        tables: ``{ablation: results table}``; a missing or None entry makes its claims
            ``not run``.
        mask_quality: ``figures/mask_quality.csv`` (:func:`detcon.results.load_mask_quality`),
            or None.
        specs: the claims (default :data:`CLAIMS`).
    Raises:
        ValueError: a table lacks a column a spec reads (naming the ablation and column).
    """
    results: list[ClaimResult] = []
    checked: dict[str, pd.DataFrame] = {}
    for spec in specs:
        raw = tables.get(spec.ablation)
        if raw is None:
            for kind, metric in spec.tasks:
                reason = f"no results table for ablation {spec.ablation}"
                results.append(ClaimResult(spec, kind, metric, "not run", "", reason=reason))
            continue
        table = checked.get(spec.ablation)
        if table is None:
            params = {p for s in specs if s.ablation == spec.ablation for p in s.parameters()}
            table = checked[spec.ablation] = _check_table(raw, f"ablation {spec.ablation}", params)
        for kind, metric in spec.tasks:
            tasks = _tasks(table, kind, metric) or [kind]
            for task in tasks:
                refs = {b: _reference(table, b, task, metric) for b in ("random", "supervised")}
                common = {"floor": refs["random"], "ceiling": refs["supervised"]}
                try:
                    found = _measure(spec, table, task, metric, mask_quality, refs["random"])
                except _NotRun as exc:
                    results.append(
                        ClaimResult(spec, task, metric, "not run", "", reason=str(exc), **common)
                    )
                    continue
                results.append(ClaimResult(spec, task, metric, **found, **common))
    return results


# --------------------------------------------------------------------------- rendering


def _signed(x: float, digits: int = 3) -> str:
    return f"{x:+.{digits}f}".replace("-", _MINUS)


def _number(x: float, spec: ClaimSpec) -> str:
    if isinstance(spec.measure, Efficiency):
        return "not reached" if math.isinf(x) else f"{x:.3g}"
    if isinstance(spec.measure, RankCorrelation):
        return _signed(x, 2)
    return _signed(x, 3)


def _seeds_text(r: ClaimResult) -> str:
    lo, hi = r.seeds
    n = (f"{lo} seed" + "s" * (lo != 1)) if lo == hi else f"{lo}–{hi} seeds"
    return f"{n}, paired" if r.paired and lo > 1 else n


def _measured(r: ClaimResult) -> str:
    if r.estimate is None:
        return "—"
    unit = "" if not r.spec.measure.in_metric_units else " " + _METRIC_NAMES.get(r.metric, r.metric)
    ci = (
        f" [{_number(r.ci[0], r.spec)}, {_number(r.ci[1], r.spec)}]"
        if r.ci is not None
        else " (no CI)"
    )
    detail = f"{r.detail}; " if r.detail else ""
    return f"{_number(r.estimate, r.spec)}{ci}{unit} ({detail}{r.task}; {_seeds_text(r)})"


def _context(r: ClaimResult) -> str:
    if not r.spec.measure.in_metric_units:
        return "—"
    refs = []
    if r.floor is not None:
        refs.append(f"floor {r.floor:.3f}")
    if r.ceiling is not None:
        refs.append(f"ceiling {r.ceiling:.3f}")
    share = r.share
    if share is not None:
        return f"{share * 100:+.0f}% of floor→ceiling ({r.floor:.3f}→{r.ceiling:.3f})".replace(
            "-", _MINUS
        )
    return ", ".join(refs) or "—"


def _seeds_for(r: ClaimResult) -> int | None:
    """Seeds per point for the CI to clear the threshold if the effect is as measured: the CI's
    half-width shrinks as 1/sqrt(seeds). None when the estimate is not on the paper's side."""
    if r.ci is None or r.estimate is None or not r.spec.test.passes(r.estimate):
        return None
    half = (r.ci[1] - r.ci[0]) / 2
    gap = abs(r.estimate - r.spec.test.threshold)
    if not (math.isfinite(half) and gap > 1e-9 * max(1.0, abs(r.spec.test.threshold))):
        return None  # on the threshold (4.8 of 24 epochs is 1/5 up to rounding): no seed count
    return max(r.seeds[0] + 1, math.ceil(r.seeds[0] * (half / gap) ** 2))


def _needed(r: ClaimResult, results_dir: str) -> str:
    if r.verdict == "reproduced":
        return "—"
    if r.verdict == "not run":
        return (
            f"{r.reason}: run `detcon run ablations/{r.spec.ablation}.yaml` and export its "
            f"tidy table to {results_dir}/{r.spec.ablation}.csv"
        )
    if r.reason:  # a verdict the measure itself limits (Efficiency below the floor)
        first = r.reason
    elif r.ci is None:
        first = "at least 2 seeds per point for a CI"
    elif r.verdict == "not reproduced":
        first = "the CI excludes the paper's claim at this scale"
    elif r.estimate is None or not r.spec.test.passes(r.estimate):
        first = (
            "the estimate is on the other side of the threshold: more seeds would likely not help"
        )
    elif isinstance(r.spec.measure, Efficiency):
        # a ratio of lengths on the grid: its CI jumps between grid values as seeds change, it
        # does not narrow as 1/sqrt(seeds)
        first = (
            "the estimate meets the threshold, its CI does not: more seeds and lengths between "
            "the grid's near the threshold"
        )
    elif (n := _seeds_for(r)) is not None:
        first = f"about {n} seeds per point (now {r.seeds[0]}) if the effect is as measured"
    else:
        first = "the estimate sits on the threshold: more seeds cannot be sized from it"
    return f"{first}; {r.spec.needed}" if r.spec.needed else first


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _inputs(
    tables: Mapping[str, pd.DataFrame | None], specs: Sequence[ClaimSpec], results_dir: str
) -> list[str]:
    lines = []
    for name in dict.fromkeys(s.ablation for s in specs):
        table = tables.get(name)
        if table is None:
            lines.append(f"- `{results_dir}/{name}.csv`: missing (its claims: not run)")
            continue
        runs = table.loc[table["backbone"] == "pretrained", "run_id"].nunique()
        seeds = ", ".join(str(s) for s in sorted(set(table["seed"].astype(int))))
        commits = sorted({str(c)[:10] for c in table["git_commit"]})
        lines.append(
            f"- `{results_dir}/{name}.csv`: {runs} runs, seeds {seeds or '—'}, "
            f"commit(s) {', '.join(commits) or '—'}"
        )
    return lines


def render_claims_markdown(
    tables: Mapping[str, pd.DataFrame | None],
    mask_quality: pd.DataFrame | None,
    *,
    specs: Sequence[ClaimSpec] = CLAIMS,
    results_dir: str = "results",
    figure: str | None = None,
    command: str = COMMAND,
    results: Sequence[ClaimResult] | None = None,
) -> str:
    """The claims block of RESULTS.md (between :data:`BEGIN` and :data:`END`, markers included).

    Args:
        tables: ``{ablation: results table}`` (:func:`load_tables`); missing ablations are
            rendered as ``not run``.
        mask_quality: the mask-quality table, or None.
        specs: the claims.
        results_dir: how the text names the results folder.
        figure: a relative link to the mask-quality scatter figure, or None.
        command: the command that regenerates the block.
        results: :func:`evaluate_claims` of the same arguments, if already computed.
    Returns:
        Markdown: the command, a table (claim, test, measurement, verdict, share of the
        floor -> ceiling range, what would be needed), the verdict rule and the inputs read.
        Deterministic: no timestamps.
    """
    if results is None:
        results = evaluate_claims(tables, mask_quality, specs)
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    head = (
        "| # | paper's claim (where, our reading) | test | measured: estimate [95% CI] | verdict "
        "| share of floor→ceiling | what would be needed |"
    )
    lines = [
        BEGIN,
        "<!-- generated by `detcon claims`: edits inside this block are overwritten -->",
        "## Claims",
        "",
        f"Regenerate with `{command}`"
        + (" (`make figures` runs it)" if command == COMMAND else "")
        + ". Verdicts: "
        + ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        + ".",
        "",
        head,
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        metric = _METRIC_NAMES.get(r.metric, r.metric)
        cells = [
            f"{r.spec.key} ({r.task} {metric})" if len(r.spec.tasks) > 1 else r.spec.key,
            f"{r.spec.statement} ({r.spec.where})",
            r.test_text or f"{r.spec.measure.kind} {r.spec.test}",
            _measured(r),
            f"**{r.verdict}**",
            _context(r),
            _needed(r, results_dir),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", f"**Verdict rule.** {VERDICT_RULE}", "", "**Inputs.**", ""]
    lines += _inputs(tables, specs, results_dir)
    if mask_quality is None:
        lines.append(
            "- mask quality: missing (`detcon masks quality` writes figures/mask_quality.csv)"
        )
    else:
        q = ", ".join(
            f"{s} {v:.3f}" for s, v in zip(mask_quality["source"], mask_quality[MASK_QUALITY_KEY])
        )
        lines.append(f"- mask quality ({MASK_QUALITY_KEY}): {q}")
    if figure:
        lines += ["", f"![segmentation against mask quality, mask_type ablation]({figure})"]
    lines.append(END)
    return "\n".join(lines) + "\n"


def replace_block(document: str | None, block: str, *, where: str = "RESULTS.md") -> str:
    """``document`` with the text from :data:`BEGIN` to :data:`END` replaced by ``block``
    (which holds the markers); everything else kept byte for byte. A document without the
    markers gets the block appended; None (no file yet) becomes :data:`HEADER` + block.

    Raises:
        ValueError: a marker appears without the other, more than once, or out of order.
    """
    if document is None:
        return HEADER + block
    begins, ends = document.count(BEGIN), document.count(END)
    if begins == ends == 0:
        return document + ("" if document.endswith("\n") or not document else "\n") + "\n" + block
    start, stop = document.find(BEGIN), document.find(END)
    if begins != 1 or ends != 1 or stop < start:
        raise ValueError(
            f"{where}: expected one {BEGIN} followed by one {END}, found {begins} and {ends}"
            + (" in the wrong order" if begins == ends == 1 else "")
            + "; fix the markers by hand"
        )
    stop += len(END)
    if document[stop : stop + 1] == "\n":
        stop += 1  # the block ends with its own newline
    return document[:start] + block + document[stop:]


# --------------------------------------------------------------------------- figure and files


def mask_quality_rows(table: pd.DataFrame, quality: pd.DataFrame) -> pd.DataFrame:
    """The mask_type table's pretrained downstream rows joined with the quality per source:
    the data of :func:`detcon.plotting.mask_quality_figure` (``source``, ``mean_best_iou``,
    ``task``, ``metric``, ``value``, ``method``)."""
    table = _check_table(table, "ablation mask_type", {"masks.source", "method"})
    rows = table[(table["backbone"] == "pretrained") & (table["task"] != "pretrain")]
    q = quality.assign(source=quality["source"].map(_norm))[["source", MASK_QUALITY_KEY]]
    return rows.assign(source=rows["masks.source"]).merge(q, on="source", how="inner")


def write_results(
    results_dir: str | Path = "results",
    out: str | Path = "RESULTS.md",
    *,
    mask_quality: str | Path = "figures/mask_quality.csv",
    figures_dir: str | Path | None = "figures",
) -> tuple[Path, list[ClaimResult]]:
    """Rewrite the claims block of ``out`` (created with a header if absent) from the tables in
    ``results_dir``; with ``figures_dir``, also draw ``<figures_dir>/claims_mask_quality.png``
    from the mask_type table. Every file written atomically.

    Returns:
        ``(out, results)``.
    Raises:
        ValueError: a malformed table, mask-quality file or marker pair (naming the file).
        NotADirectoryError: ``results_dir`` is a file.
        FileNotFoundError: ``results_dir`` does not exist (a mistyped folder would have turned
            every verdict into "not run"; an empty folder is taken as no results yet).
    """
    from detcon.atomic import atomic_write, write_text
    from detcon.results import REFERENCES, load_mask_quality

    results_dir, out = Path(results_dir), Path(out)
    if results_dir.exists() and not results_dir.is_dir():
        raise NotADirectoryError(f"--results {str(results_dir)!r} is a file, expected a folder")
    if not results_dir.exists():
        raise FileNotFoundError(
            f"--results {str(results_dir)!r} does not exist: expected the folder of "
            "<ablation>.csv tables `detcon export` writes (an empty folder for none yet)"
        )
    tables = load_tables(results_dir)
    quality = load_mask_quality(mask_quality)
    figure = None
    if figures_dir is not None and quality is not None and "mask_type" in tables:
        rows = mask_quality_rows(tables["mask_type"], quality)
        rows = rows[rows["metric"] == "miou"]
        if rows["source"].nunique() >= 2:
            from detcon.plotting import mask_quality_figure

            table = tables["mask_type"]
            refs = table[table["backbone"].isin(REFERENCES)]
            refs = refs[(refs["task"] == "segmentation") & (refs["metric"] == "miou")]
            fig = mask_quality_figure(
                rows,
                hue="method",
                references=refs if len(refs) else None,
                title="mask_type: mIoU against mask quality",
                panel_inches=3.6,
            )
            path = Path(figures_dir) / FIGURE_NAME
            atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=150))
            figure = Path(os.path.relpath(path.resolve(), out.resolve().parent)).as_posix()
    results = evaluate_claims(tables, quality)
    # the command that makes this block again: the defaults give COMMAND, RESULTS.md's own line
    words = ["detcon", "claims", "--results", results_dir.as_posix(), "--out", out.as_posix()]
    if Path(mask_quality) != _MASK_QUALITY:
        words += ["--mask-quality", Path(mask_quality).as_posix()]
    if figures_dir is None:
        words.append("--no-figure")
    elif Path(figures_dir) != Path("figures"):
        words += ["--figures-dir", Path(figures_dir).as_posix()]
    command = shlex.join(words)
    block = render_claims_markdown(
        tables,
        quality,
        results_dir=results_dir.as_posix(),
        figure=figure,
        command=command,
        results=results,
    )
    document = out.read_text() if out.is_file() else None
    write_text(out, replace_block(document, block, where=str(out)))
    return out, results


def _cmd_claims(args: argparse.Namespace) -> int:
    if args.mask_quality != _MASK_QUALITY and not args.mask_quality.is_file():
        raise FileNotFoundError(
            f"--mask-quality {str(args.mask_quality)!r} does not exist: expected the table of "
            "`detcon masks quality` (without the option: figures/mask_quality.csv, if any)"
        )
    out, results = write_results(
        args.results,
        args.out,
        mask_quality=args.mask_quality,
        figures_dir=None if args.no_figure else args.figures_dir,
    )
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    print(
        f"wrote the claims block of {out}: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    )
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detcon claims`` (called by :mod:`detcon.cli`)."""
    from detcon.cli import path_arg

    p = subparsers.add_parser(
        "claims",
        help="rewrite the claims table of RESULTS.md from results/<ablation>.csv",
        description="Measure each of the paper's claims on the committed results tables and "
        f"rewrite the block between {BEGIN} and {END} of RESULTS.md (created with a short "
        "header if absent; the rest of the file is kept). Missing ablations are 'not run'.",
    )
    p.add_argument(
        "--results",
        type=path_arg,
        default=Path("results"),
        help="folder of <ablation>.csv tables (default: results)",
    )
    p.add_argument(
        "--out",
        type=path_arg,
        default=Path("RESULTS.md"),
        help="the file to update (default: RESULTS.md)",
    )
    p.add_argument(
        "--mask-quality",
        type=path_arg,
        default=_MASK_QUALITY,
        help="mask-quality table of `detcon masks quality` (default: figures/mask_quality.csv)",
    )
    p.add_argument(
        "--figures-dir",
        type=path_arg,
        default=Path("figures"),
        help=f"where the mask-quality scatter ({FIGURE_NAME}) goes (default: figures)",
    )
    p.add_argument("--no-figure", action="store_true", help="do not draw the scatter figure")
    p.set_defaults(func=_cmd_claims)
