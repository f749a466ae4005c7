"""Whether one pretraining seed does better than another across the study (docs/design.md §6).

Usage: python scripts/seed_order.py results/*.csv [--exclude TEXT ...] [--task T --metric M]

Every configuration that the committed tables hold at seeds 0, 1 and 2 (pretrained encoders;
by default segmentation mIoU; a configuration in several tables counted once) gives one
difference per pair of seeds. One Markdown row per pair: the mean and median difference and in
how many configurations the first seed is higher. ``--exclude mcg`` leaves out configurations
whose grid values contain that text (e.g. a source whose one seed fails for reasons of its own).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from itertools import combinations
from pathlib import Path

import pandas as pd

from detcon.claims import NOT_GRID_COLUMNS, read_results_table

SEEDS = (0, 1, 2)


def by_seed(tables: list[pd.DataFrame], task: str, metric: str, exclude: list[str]) -> pd.DataFrame:
    """One row per distinct configuration measured at every seed of SEEDS, one column per seed."""
    frames = []
    for table in tables:
        rows = table[
            (table["backbone"] == "pretrained")
            & (table["task"] == task)
            & (table["metric"] == metric)
        ]
        params = sorted(c for c in rows.columns if c not in NOT_GRID_COLUMNS)
        label = rows[params].astype(str).agg(" | ".join, axis=1) if params else "base"
        frames.append(rows.assign(config=label))  # read_results_table made value a float
    rows = pd.concat(frames, ignore_index=True)
    if exclude:  # a configuration is left out when any of the texts is in its grid values
        rows = rows[~rows["config"].map(lambda config: any(t in config for t in exclude))]
    wide = rows.pivot_table(index="config", columns="seed", values="value", aggfunc="first")
    wide = wide.reindex(columns=list(SEEDS)).dropna()
    # the same configuration exported by several ablations holds the same three values
    return wide.drop_duplicates()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+", type=Path, metavar="RESULTS_CSV")
    parser.add_argument("--task", default="segmentation")
    parser.add_argument("--metric", default="miou")
    parser.add_argument("--exclude", action="append", default=[], metavar="TEXT")
    args = parser.parse_args(argv)
    tables = []
    for path in args.tables:
        if not path.is_file():
            parser.error(f"no results table {path} (expected results/<ablation>.csv)")
        try:
            tables.append(read_results_table(path))
        except ValueError as exc:
            parser.error(str(exc))
    wide = by_seed(tables, args.task, args.metric, args.exclude)
    if wide.empty:
        parser.error(f"no configuration holds {args.task}.{args.metric} at seeds 0, 1 and 2")
    print(f"{len(wide)} configurations at seeds 0, 1 and 2 ({args.task}.{args.metric})\n")
    print("| seeds | mean difference | median | first seed higher |\n|---|---|---|---|")
    for a, b in combinations(SEEDS, 2):
        diff = (wide[a] - wide[b]).tolist()
        higher = sum(d > 0 for d in diff)
        print(
            f"| {a} − {b} | {statistics.mean(diff):+.4f} | {statistics.median(diff):+.4f} "
            f"| {higher} of {len(diff)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
