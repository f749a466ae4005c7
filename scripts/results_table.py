"""Mean ± std over seeds of each configuration of a committed results table, against the floor.

Usage: python scripts/results_table.py results/<ablation>.csv [PARAM ...]

One Markdown row per configuration (the grid parameters PARAM, default: every grid column of the
table) and one for each reference backbone (``random``: the floor, ``supervised``: the ceiling),
with segmentation mIoU, depth δ1, linear top-1 and detection AP^bb (those the table has); for the
pretrained rows also the gain over the floor of the same seeds and the share of the
floor-to-ceiling gap it closes (segmentation). RESULTS.md and docs/cpu-miniature.md quote it.
"""

from __future__ import annotations

import sys

import pandas as pd

METRICS = (
    ("segmentation", "miou", "seg mIoU"),
    ("depth", "delta1", "depth δ1"),
    ("linear", "top1", "linear top-1"),
    ("detection", "ap_bb", "det AP^bb"),
)
NOT_PARAMS = {
    "ablation",
    "run_id",
    "seed",
    "config_digest",
    "git_commit",
    "git_dirty",
    "backbone",
    "task",
    "metric",
    "value",
}


def _cell(values: pd.Series) -> str:
    if values.empty:
        return "–"
    if values.nunique() == 1:  # one value (a reference is the same for every run's seed)
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def table(tidy: pd.DataFrame, params: list[str]) -> str:
    metrics = [m for m in METRICS if ((tidy.task == m[0]) & (tidy.metric == m[1])).any()]
    per_seed = (
        tidy[tidy.task.isin([m[0] for m in metrics])]
        .pivot_table(
            index=["backbone", *params, "seed"], columns=["task", "metric"], values="value"
        )
        .reset_index()
        .sort_index(axis=1)
    )
    refs = per_seed[per_seed.backbone != "pretrained"].groupby(["backbone", "seed"]).first()
    head = ["configuration", *[m[2] for m in metrics], "Δ seg vs floor", "share of gap", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for backbone in ("random", "supervised"):
        if backbone in refs.index.get_level_values(0):
            sub = refs.loc[backbone]
            cells = [_cell(sub[(t, m)].dropna()) for t, m, _ in metrics]
            name = "random init (floor)" if backbone == "random" else "supervised (ceiling)"
            seeds = ",".join(str(s) for s in sub.index)
            lines.append(f"| {name} | " + " | ".join(cells) + f" | – | – | {seeds} |")
    pretrained = per_seed[per_seed.backbone == "pretrained"]
    for key, sub in pretrained.groupby(params, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        cells = [_cell(sub[(t, m)].dropna()) for t, m, _ in metrics]
        gain = gap = "–"
        seg = ("segmentation", "miou")
        if "random" in refs.index.get_level_values(0) and seg in sub:
            floor = refs.loc["random"][seg]
            deltas = sub.set_index("seed")[seg] - floor.reindex(sub["seed"]).to_numpy()
            gain = _cell(deltas.dropna())
            if "supervised" in refs.index.get_level_values(0):
                ceiling = refs.loc["supervised"][seg].mean()
                gap = f"{deltas.mean() / (ceiling - floor.mean()):+.0%}"
        seeds = ",".join(str(s) for s in sorted(sub["seed"]))
        label = ", ".join(str(k) for k in key)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {gain} | {gap} | {seeds} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    tidy = pd.read_csv(argv[0])
    params = argv[1:] or [c for c in tidy.columns if c not in NOT_PARAMS]
    print(table(tidy, params))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
