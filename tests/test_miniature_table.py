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


def test_bad_input_is_named(tmp_path, capsys, script):
    module = script("miniature_table")
    with pytest.raises(SystemExit) as exit_:
        module.main([str(tmp_path / "nope")])
    assert exit_.value.code == 2
    assert "no runs directory" in capsys.readouterr().err
    _run(tmp_path, "lr8", 0, 0.30, 300)
    assert module.main([str(tmp_path), "lr16"]) == 0
    assert "no finished runs named lr16" in capsys.readouterr().err
