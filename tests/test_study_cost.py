"""scripts/study_cost.py: what the committed study cost, from the exported points' files."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest


def _point(results: Path, name: str, span_s: int, wall_s: float, **status) -> None:
    point = results / name
    point.mkdir(parents=True)
    started = dt.datetime(2026, 12, 2, 10, tzinfo=dt.UTC)
    updated = started + dt.timedelta(seconds=span_s)
    fields = {
        "state": "done",
        "started": started.isoformat(),
        "updated": updated.isoformat(),
        **status,
    }
    (point / "status.json").write_text(json.dumps(fields))
    (point / "train_summary.json").write_text(json.dumps({"wall_s": wall_s}))


def test_trained_points_cost_their_span_and_taken_over_ones_nothing(tmp_path, capsys, script):
    _point(tmp_path, "a/p-s0", 600, 360.0)
    _point(tmp_path, "a/p-s1", 1200, 720.0)
    _point(tmp_path, "b/p-s0", 3000, 1800.0, reused_from="a/p-s0")
    _point(tmp_path, "b/q-s0", 1800, 1080.0, state="running")  # not finished: not counted
    rows = script("study_cost").cost(tmp_path)
    assert [(r["ablation"], r["trained"], r["reused"]) for r in rows] == [("a", 2, 0), ("b", 0, 1)]
    assert rows[0]["wall_h"] == pytest.approx(0.5)
    assert rows[0]["pretrain_h"] == pytest.approx(0.3)
    assert rows[0]["median_s"] == 900
    assert script("study_cost").main([str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| `a` | 2 | 0 | 0.50 | 0.30 | 900 | 0 | 0.50 |"
    assert out[3] == "| `b` | 0 | 1 | 0.00 | 0.00 | – | 0 | 0.00 |"
    assert out[4] == "| all | 2 | 1 | 0.50 | 0.30 | – | 0 | 0.50 |"


def test_an_interrupted_point_counts_at_the_median_in_the_last_column(tmp_path, script):
    for seed, span in enumerate([600, 700, 1200]):  # the longest ran through: 2x the median
        _point(tmp_path, f"a/p-s{seed}", span, 300.0)
    _point(tmp_path, "a/p-s3", 4 * 3600, 300.0)  # stopped at a session's end, resumed hours later
    (row,) = script("study_cost").cost(tmp_path)
    assert row["median_s"] == 950
    assert row["interrupted"] == 1
    assert row["wall_h"] == pytest.approx((600 + 700 + 1200 + 4 * 3600) / 3600)
    assert row["uninterrupted_h"] == pytest.approx((600 + 700 + 1200 + 950) / 3600)


def test_a_point_resumed_from_a_checkpoint_counts_as_interrupted(tmp_path, script):
    # Stopped minutes after it started and resumed soon after: its span stays under 3x the median,
    # but it includes the pause; the training summary says it resumed.
    for seed, span in enumerate([600, 700, 800]):
        _point(tmp_path, f"a/p-s{seed}", span, 300.0)
    _point(tmp_path, "a/p-s3", 1500, 80.0)
    summary = tmp_path / "a/p-s3/train_summary.json"
    summary.write_text(json.dumps({"wall_s": 80.0, "resumed_from": 660}))
    (row,) = script("study_cost").cost(tmp_path)
    assert row["median_s"] == 750
    assert row["interrupted"] == 1
    assert row["uninterrupted_h"] == pytest.approx((600 + 700 + 800 + 750) / 3600)


def test_a_folder_without_points_is_a_clear_error(tmp_path, capsys, script):
    with pytest.raises(SystemExit):
        script("study_cost").main([str(tmp_path / "nope")])
    assert "no results folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script("study_cost").main([str(tmp_path)])
    assert "holds no exported points" in capsys.readouterr().err


def test_speed_is_the_trained_points_throughput_and_its_aggregate(tmp_path, capsys, script):
    def trained(name: str, images_per_s: float, wall_s: float) -> None:
        _point(tmp_path, name, 600, wall_s)
        summary = {"wall_s": wall_s, "images_per_s": images_per_s}
        (tmp_path / name / "train_summary.json").write_text(json.dumps(summary))

    trained("a/p-s0", 100.0, 100.0)  # 10,000 images
    trained("a/p-s1", 50.0, 200.0)  # 10,000 images
    _point(tmp_path, "b/p-s0", 600, 100.0, reused_from="a/p-s0")  # taken over: no row
    assert script("study_cost").main([str(tmp_path), "--speed"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == [
        "| ablation | points | images/s (range) | median | aggregate |",
        "|---|---|---|---|---|",
        "| `a` | 2 | 50-100 | 75 | 67 |",  # 20,000 images in 300 s
    ]


def test_only_the_points_of_the_ablations_table_count(tmp_path, script):
    # A recipe change moved the run ids: the export wrote the new points and their table and
    # left the old folder (other ablations' index pages may link its notebooks).
    _point(tmp_path, "a/p-s0-old", 600, 360.0)
    _point(tmp_path, "a/p-s0-new", 300, 200.0)
    header = "ablation,run_id,seed,config_digest,git_commit,backbone,task,metric,value\n"
    row = "a,p-s0-new,0,d,c,pretrained,segmentation,{},0.3\n"
    (tmp_path / "a.csv").write_text(header + row.format("miou") + row.format("pixel_acc"))
    (row,) = script("study_cost").cost(tmp_path)
    assert row["trained"] == 1 and row["wall_h"] == pytest.approx(300 / 3600)
    (tmp_path / "a.csv").unlink()  # no table: every folder counts, as before
    (row,) = script("study_cost").cost(tmp_path)
    assert row["trained"] == 2
