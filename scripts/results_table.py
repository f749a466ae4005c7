"""Mean ± std over seeds of each configuration of a committed results table, against the floor.

Usage: python scripts/results_table.py results/<ablation>.csv [PARAM ...]

One Markdown row per configuration (the grid parameters PARAM, default: every grid column of the
table) and one for each reference backbone (``random``: the floor, ``supervised``: the ceiling;
one value, or the mean and range when the points' references differ, e.g. computed on two CPUs),
with segmentation mIoU, depth δ1, linear top-1 and detection AP^bb (those the table has); for the
pretrained rows also the gain over the floor each point was evaluated with and the share of
the floor-to-ceiling gap it closes (segmentation). RESULTS.md and docs/cpu-miniature.md quote it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from detcon.claims import NOT_GRID_COLUMNS, read_results_table

METRICS = (
    ("segmentation", "miou", "seg mIoU"),
    ("depth", "delta1", "depth δ1"),
    ("linear", "top1", "linear top-1"),
    ("detection", "ap_bb", "det AP^bb"),
)
REFERENCES = {"random": "random init (floor)", "supervised": "supervised (ceiling)"}


def _cell(values: pd.Series) -> str:
    if values.empty:
        return "–"
    if values.nunique() == 1:  # one value (a reference is the same for every run's seed)
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def _reference_cell(values: pd.Series) -> str:
    """A reference over the table's points: one value, or (points whose references were
    computed on different machines, whose float results differ) the mean and the range."""
    if values.empty:
        return "–"
    low, high = f"{values.min():.3f}", f"{values.max():.3f}"
    if low == high:
        return low
    return f"{values.mean():.3f} ({low}–{high})"


def _order(rows: pd.DataFrame, params: list[str]):
    """Sort key of a (configuration, rows) group: numeric parameters by value (schedule
    lengths, view sizes), the others in the table's order of appearance."""
    first = {p: {v: i for i, v in enumerate(rows[p].drop_duplicates())} for p in params}
    numeric = {p: pd.api.types.is_numeric_dtype(rows[p]) for p in params}

    def key(group):
        values = group[0] if isinstance(group[0], tuple) else (group[0],)
        return tuple(v if numeric[p] else first[p][v] for p, v in zip(params, values))

    return key


def table(tidy: pd.DataFrame, params: list[str]) -> str:
    metrics = [m for m in METRICS if ((tidy.task == m[0]) & (tidy.metric == m[1])).any()]
    per_run = (
        tidy[tidy.task.isin([m[0] for m in metrics])]
        .pivot_table(
            index=["backbone", "run_id", *params, "seed"],
            columns=["task", "metric"],
            values="value",
        )
        .reset_index()
        .sort_index(axis=1)
    )
    refs = {b: per_run[per_run.backbone == b].set_index("run_id") for b in REFERENCES}
    head = ["configuration", *[m[2] for m in metrics], "Δ seg vs floor", "share of gap", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for backbone, name in REFERENCES.items():
        sub = refs[backbone]
        if len(sub):
            cells = [_reference_cell(sub[(t, m)].dropna()) for t, m, _ in metrics]
            seeds = ",".join(str(s) for s in sorted(sub["seed"].unique()))
            lines.append(f"| {name} | " + " | ".join(cells) + f" | – | – | {seeds} |")
    pretrained = per_run[per_run.backbone == "pretrained"]
    seg = ("segmentation", "miou")
    for key, sub in sorted(pretrained.groupby(params, sort=False), key=_order(pretrained, params)):
        key = key if isinstance(key, tuple) else (key,)
        cells = [_cell(sub[(t, m)].dropna()) for t, m, _ in metrics]
        gain = gap = "–"
        floor = refs["random"]
        if len(floor) and seg in sub:
            # each point against the floor it was evaluated with (its own run's references)
            own = floor[seg].reindex(sub["run_id"]).to_numpy()
            deltas = (sub.set_index("seed")[seg] - own).dropna()
            gain = _cell(deltas)
            ceiling = refs["supervised"]
            if len(ceiling) and len(deltas):
                span = ceiling[seg].reindex(sub["run_id"]) - floor[seg].reindex(sub["run_id"])
                gap = f"{deltas.mean() / span.mean():+.0%}"
        seeds = ",".join(str(s) for s in sorted(sub["seed"]))
        label = ", ".join(str(k) for k in key)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {gain} | {gap} | {seeds} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="results_table.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("csv", type=Path, help="a committed tidy table, results/<ablation>.csv")
    parser.add_argument("params", nargs="*", metavar="PARAM", help="grid columns to group by")
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        parser.error(f"no results table {args.csv} (expected results/<ablation>.csv)")
    try:
        read_results_table(args.csv)  # its columns and values checked, the file named
    except ValueError as exc:
        parser.error(str(exc))
    tidy = pd.read_csv(args.csv)
    grid = [c for c in tidy.columns if c not in NOT_GRID_COLUMNS]
    unknown = [p for p in args.params if p not in grid]
    if unknown:
        parser.error(
            f"{args.csv} has no grid column {', '.join(map(repr, unknown))}; "
            f"its grid columns: {', '.join(grid) or 'none'}"
        )
    print(table(tidy, args.params or grid))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
