"""scripts/seed_order.py: pairwise seed differences across the study's configurations."""

from __future__ import annotations

import pandas as pd
import pytest


def _table(path, ablation, values):
    """``values``: {source: (seed0, seed1, seed2)} of segmentation mIoU, plus a floor row."""
    rows = []
    for source, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            base = {"ablation": ablation, "run_id": f"{source}-s{seed}", "seed": seed}
            base |= {"config_digest": "d", "git_commit": "c", "masks.source": source}
            rows.append({**base, "backbone": "pretrained", "task": "segmentation"} | {
                "metric": "miou", "value": value})  # fmt: skip
            rows.append({**base, "backbone": "random", "task": "segmentation"} | {
                "metric": "miou", "value": 0.0})  # fmt: skip
    pd.DataFrame(rows).to_csv(path / f"{ablation}.csv", index=False)
    return path / f"{ablation}.csv"


def test_each_pair_of_seeds_over_distinct_configurations(tmp_path, script, capsys):
    a = _table(tmp_path, "a", {"fh": (0.30, 0.20, 0.40), "grid": (0.30, 0.25, 0.15)})
    b = _table(tmp_path, "b", {"fh": (0.30, 0.20, 0.40), "mcg": (0.5, 0.0, 0.5)})  # fh again
    assert script("seed_order").main([str(a), str(b), "--exclude", "mcg"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 configurations at seeds 0, 1 and 2 (segmentation.miou)")
    assert "| 0 − 1 | +0.0750 | +0.0750 | 2 of 2 |" in out
    assert "| 0 − 2 | +0.0250 | +0.0250 | 1 of 2 |" in out
    assert "| 1 − 2 | -0.0500 | -0.0500 | 1 of 2 |" in out


def test_a_missing_table_or_no_complete_configuration_is_refused(tmp_path, script, capsys):
    with pytest.raises(SystemExit):
        script("seed_order").main([str(tmp_path / "nope.csv")])
    assert "no results table" in capsys.readouterr().err
    a = _table(tmp_path, "a", {"fh": (0.3, 0.2, 0.4)})
    with pytest.raises(SystemExit):
        script("seed_order").main([str(a), "--exclude", "fh"])
    assert "no configuration holds segmentation.miou at seeds 0, 1 and 2" in capsys.readouterr().err


def test_each_exclude_leaves_out_its_configurations(tmp_path, script, capsys):
    a = _table(tmp_path, "a", {"fh": (0.3, 0.2, 0.4), "grid": (0.3, 0.25, 0.15), "mcg": (1, 0, 1)})
    assert script("seed_order").main([str(a), "--exclude", "mcg", "--exclude", "grid"]) == 0
    assert capsys.readouterr().out.startswith("1 configurations at seeds 0, 1 and 2")
