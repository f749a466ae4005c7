"""Summarise a scripts/miniature.sh runs directory as a Markdown table (docs/cpu-miniature.md).

Usage: python scripts/miniature_table.py RUNS_DIR [NAME ...]
One row per experiment name: mean ± std over its seeds of segmentation mIoU, depth delta1 and
linear top-1 (the backbone's eval.json, or eval_random.json / eval_supervised.json for the floor
and the ceiling), the seeds, pretraining steps and the mean wall time of a point.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

METRICS = (("segmentation", "miou"), ("depth", "delta1"), ("linear", "top1"))


def _reference(name: str) -> str | None:
    """``random`` / ``supervised`` for the floor and ceiling rows (``random_cls4`` ...)."""
    head = name.split("_", 1)[0]
    return head if head in ("random", "supervised") else None


def _eval_file(run: Path, name: str) -> Path:
    ref = _reference(name)
    return run / (f"eval_{ref}.json" if ref else "eval.json")


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="miniature_table.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", type=Path, help="a scripts/miniature.sh runs directory")
    parser.add_argument("names", nargs="*", metavar="NAME", help="experiment names, in order")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        parser.error(f"no runs directory {args.runs} (expected a scripts/miniature.sh folder)")
    runs, names = args.runs, args.names
    groups: dict[str, list[Path]] = defaultdict(list)
    for run in sorted(p for p in runs.iterdir() if p.is_dir()):
        m = re.fullmatch(r"(.+)-s(\d+)", run.name)
        if m and _eval_file(run, m.group(1)).is_file():
            groups[m.group(1)].append(run)
    missing = [n for n in names if n not in groups]
    if missing:
        print(
            f"miniature_table.py: no finished runs named {', '.join(missing)} in {runs} "
            f"(it has: {', '.join(sorted(groups)) or 'none'})",
            file=sys.stderr,
        )
    order = names or sorted(groups)
    print("| run | seg mIoU | depth δ1 | linear top-1 | seeds | steps | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for name in order:
        if name not in groups:
            continue
        evals = [json.loads(_eval_file(r, name).read_text()) for r in groups[name]]
        cols = [_fmt([e[t][k] for e in evals]) for t, k in METRICS]
        seeds = ",".join(r.name.rsplit("-s", 1)[1] for r in groups[name])
        steps = ""
        summary = groups[name][0] / "train_summary.json"
        if summary.is_file() and not _reference(name):
            steps = str(json.loads(summary.read_text()).get("steps", ""))
        walls = [float((r / "wall").read_text()) for r in groups[name] if (r / "wall").is_file()]
        wall = f"{statistics.mean(walls):.0f}" if walls else ""
        print(f"| {name} | {' | '.join(cols)} | {seeds} | {steps} | {wall} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
