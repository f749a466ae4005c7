"""scripts/miniature_table.py: the table of docs/cpu-miniature.md, from a miniature.sh folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _run(runs: Path, name: str, seed: int, miou: float, wall: float) -> None:
    run = runs / f"{name}-s{seed}"
    run.mkdir(parents=True)
    metrics = {"segmentation": {"miou": miou}, "depth": {"delta1": 0.5}, "linear": {"top1": 0.2}}
    eval_file = "eval_random.json" if name.startswith("random") else "eval.json"
    (run / eval_file).write_text(json.dumps(metrics))
    (run / "train_summary.json").write_text(json.dumps({"steps": 768}))
    (run / "wall").write_text(str(wall))


def test_one_row_per_name_over_its_seeds(tmp_path, capsys, script):
    _run(tmp_path, "lr8", 0, 0.30, 300)
    _run(tmp_path, "lr8", 1, 0.32, 340)
    _run(tmp_path, "random", 0, 0.10, 60)
    assert script("miniature_table").main([str(tmp_path)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[2] == "| lr8 | 0.310 ± 0.014 | 0.500 ± 0.000 | 0.200 ± 0.000 | 0,1 | 768 | 320 |"
    assert rows[3] == "| random | 0.100 | 0.500 | 0.200 | 0 |  | 60 |"


def test_floor_adds_each_runs_gain_over_the_floor_of_its_seed(tmp_path, capsys, script):
    _run(tmp_path, "lr8", 0, 0.30, 300)
    _run(tmp_path, "lr8", 1, 0.34, 340)
    _run(tmp_path, "random", 0, 0.10, 60)
    _run(tmp_path, "random", 1, 0.20, 60)
    assert (
        script("miniature_table").main([str(tmp_path), "random", "lr8", "--floor", "random"]) == 0
    )
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("| run | seg mIoU | depth δ1 | linear top-1 | Δ seg | Δ δ1 |")
    assert (
        rows[2]
        == "| random | 0.150 ± 0.071 | 0.500 ± 0.000 | 0.200 ± 0.000 | – | – | 0,1 |  | 60 |"
    )
    # paired: +0.20 and +0.14, not the difference of the means alone
    assert rows[3] == (
        "| lr8 | 0.320 ± 0.028 | 0.500 ± 0.000 | 0.200 ± 0.000 | +0.170 ± 0.042 | +0.000 ± 0.000 "
        "| 0,1 | 768 | 320 |"
    )


def test_a_floor_without_the_seed_is_named(tmp_path, capsys, script):
    _run(tmp_path, "lr8", 1, 0.34, 340)
    _run(tmp_path, "random", 0, 0.10, 60)
    with pytest.raises(SystemExit, match="lr8: no random run of seed 1"):
        script("miniature_table").main([str(tmp_path), "--floor", "random"])
    with pytest.raises(SystemExit):
        script("miniature_table").main([str(tmp_path), "--floor", "floor"])
    assert "--floor floor: no finished runs" in capsys.readouterr().err


def test_bad_input_is_named(tmp_path, capsys, script):
    module = script("miniature_table")
    with pytest.raises(SystemExit) as exit_:
        module.main([str(tmp_path / "nope")])
    assert exit_.value.code == 2
    assert "no runs directory" in capsys.readouterr().err
    _run(tmp_path, "lr8", 0, 0.30, 300)
    assert module.main([str(tmp_path), "lr16"]) == 0
    assert "no finished runs named lr16" in capsys.readouterr().err


def test_seg_reads_another_entry_and_leaves_out_names_without_it(tmp_path, capsys, script):
    _run(tmp_path, "lr8", 0, 0.30, 300)
    _run(tmp_path, "random", 0, 0.10, 60)
    _run(tmp_path, "fcn_only", 0, 0.25, 60)
    for name, miou in (("lr8", 0.16), ("random", 0.11)):
        path = tmp_path / f"{name}-s0" / ("eval_random.json" if name == "random" else "eval.json")
        metrics = json.loads(path.read_text())
        path.write_text(json.dumps({**metrics, "segmentation_linear": {"miou": miou}}))
    module = script("miniature_table")
    argv = [str(tmp_path), "--seg", "segmentation_linear", "--floor", "random"]
    assert module.main(argv) == 0
    out = capsys.readouterr()
    assert "no segmentation_linear entry: left out fcn_only" in out.err
    rows = out.out.splitlines()
    assert len(rows) == 4  # header, rule, lr8, random
    assert rows[2].startswith("| lr8 | 0.160 | 0.500 | 0.200 | +0.050 | +0.000 |")
    # a run probed for segmentation only (a ceiling): its other columns are blank
    ceiling = tmp_path / "supervised-s0"
    ceiling.mkdir()
    (ceiling / "eval_supervised.json").write_text('{"segmentation_linear": {"miou": 0.3}}')
    assert module.main(argv) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row == "| supervised | 0.300 |  |  | +0.190 |  | 0 |  |  |"
