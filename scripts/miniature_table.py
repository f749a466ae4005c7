"""Summarise a scripts/miniature.sh runs directory as a Markdown table (docs/cpu-miniature.md).

Usage: python scripts/miniature_table.py RUNS_DIR [NAME ...]
One row per experiment name: mean ± std over its seeds of segmentation mIoU, depth delta1 and
linear top-1 (the backbone's eval.json, or eval_random.json / eval_supervised.json for the floor
and the ceiling), the seeds, pretraining steps and the mean wall time of a point.

With --floor NAME (e.g. random) two more columns: each run's gain over that run of the same seed,
on segmentation mIoU and depth delta1, mean ± std over the seeds (a paired difference).
With --seg ENTRY the segmentation column reads another entry of the eval files, e.g.
``segmentation_linear`` or ``segmentation_finetune`` (written by scripts/seg_probe.py); names
without it are left out.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from detcon.runs import default_out_name


def _metrics(seg: str) -> tuple[tuple[str, str], ...]:
    """(entry, metric) of the table's three columns; the first two get --floor gains."""
    return ((seg, "miou"), ("depth", "delta1"), ("linear", "top1"))


def _reference(name: str) -> str | None:
    """``random`` / ``supervised`` for the floor and ceiling rows (``random_cls4`` ...)."""
    head = name.split("_", 1)[0]
    return head if head in ("random", "supervised") else None


def _eval_file(run: Path, name: str) -> Path:
    """``detcon evaluate``'s file for this run's backbone."""
    return run / default_out_name(_reference(name) or "pretrained")


def _seed(run: Path) -> str:
    return run.name.rsplit("-s", 1)[1]


def _gain(name, runs, evals, floor, floor_name, task, key) -> str:
    """``name``'s gain over the floor run of the same seed, mean ± std; "–" for the floor."""
    if name == floor_name:
        return "–"
    if not all(task in e for e in evals) or not all(task in f for f in floor.values()):
        return ""
    missing = [_seed(r) for r in runs if _seed(r) not in floor]
    if missing:
        sys.exit(f"miniature_table.py: {name}: no {floor_name} run of seed {', '.join(missing)}")
    gains = [e[task][key] - floor[_seed(r)][task][key] for r, e in zip(runs, evals)]
    return _fmt(gains, signed=True)


def _fmt(values: list[float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    if len(values) == 1:
        return f"{values[0]:{sign}.3f}"
    return f"{statistics.mean(values):{sign}.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="miniature_table.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", type=Path, help="a scripts/miniature.sh runs directory")
    parser.add_argument("names", nargs="*", metavar="NAME", help="experiment names, in order")
    parser.add_argument(
        "--floor", metavar="NAME", help="add each run's gain over this name's run of its seed"
    )
    parser.add_argument(
        "--seg",
        default="segmentation",
        metavar="ENTRY",
        help="eval-file entry of the segmentation column (default: segmentation, the FCN probe)",
    )
    args = parser.parse_intermixed_args(argv)
    metrics = _metrics(args.seg)
    if not args.runs.is_dir():
        parser.error(f"no runs directory {args.runs} (expected a scripts/miniature.sh folder)")
    runs, names = args.runs, args.names
    groups: dict[str, list[Path]] = defaultdict(list)
    for run in sorted(p for p in runs.iterdir() if p.is_dir()):
        m = re.fullmatch(r"(.+)-s(\d+)", run.name)
        if m and _eval_file(run, m.group(1)).is_file():
            groups[m.group(1)].append(run)
    lacking = sorted(
        n
        for n, rs in groups.items()
        if any(args.seg not in json.loads(_eval_file(r, n).read_text()) for r in rs)
    )
    if lacking:
        print(
            f"miniature_table.py: no {args.seg} entry: left out {', '.join(lacking)}",
            file=sys.stderr,
        )
        groups = {n: rs for n, rs in groups.items() if n not in lacking}
    missing = [n for n in names if n not in groups]
    if missing:
        print(
            f"miniature_table.py: no finished runs named {', '.join(missing)} in {runs} "
            f"(it has: {', '.join(sorted(groups)) or 'none'})",
            file=sys.stderr,
        )
    floor: dict[str, dict] = {}
    if args.floor:
        if args.floor not in groups:
            parser.error(
                f"--floor {args.floor}: no finished runs of that name (with {args.seg}) in {runs}"
            )
        floor = {
            _seed(r): json.loads(_eval_file(r, args.floor).read_text()) for r in groups[args.floor]
        }
    if not groups:
        parser.error(f"{runs}: no finished runs (NAME-sSEED folders with an eval file)")
    order = names or sorted(groups)
    gain_head = " Δ seg | Δ δ1 |" if floor else ""
    print(f"| run | seg mIoU | depth δ1 | linear top-1 |{gain_head} seeds | steps | wall (s) |")
    print("|---|---|---|---|" + "---|---|" * bool(floor) + "---|---|---|")
    for name in order:
        if name not in groups:
            continue
        evals = [json.loads(_eval_file(r, name).read_text()) for r in groups[name]]
        # a column the eval files do not all hold (e.g. a ceiling probed for segmentation only)
        # is left blank
        cols = [
            _fmt([e[t][k] for e in evals]) if all(t in e for e in evals) else "" for t, k in metrics
        ]
        if floor:
            cols += [
                _gain(name, groups[name], evals, floor, args.floor, t, k) for t, k in metrics[:2]
            ]
        seeds = ",".join(_seed(r) for r in groups[name])
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
