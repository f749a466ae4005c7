"""scripts/results_table.py: the Markdown tables RESULTS.md quotes, from a results CSV."""

from __future__ import annotations

import pandas as pd
import pytest


def _rows(run_id, seed, mask, seg, floor, ceiling):
    base = {"ablation": "a", "run_id": run_id, "seed": seed, "config_digest": "d0"}
    base |= {"git_commit": "c0", "masks.source": mask}
    return [
        {**base, "backbone": "pretrained", "task": "segmentation", "metric": "miou", "value": seg},
        {**base, "backbone": "random", "task": "segmentation", "metric": "miou", "value": floor},
        {
            **base,
            "backbone": "supervised",
            "task": "segmentation",
            "metric": "miou",
            "value": ceiling,
        },
    ]


def test_each_point_is_measured_against_its_own_references(script):
    """Points whose references were computed on two machines (float results differ): the
    reference rows give the mean and the range, and each point's gain is over its own floor."""
    tidy = pd.DataFrame(
        _rows("fh-s0", 0, "fh", 0.30, 0.10, 0.50)
        + _rows("fh-s1", 1, "fh", 0.32, 0.10, 0.50)
        + _rows("gt-s0", 0, "gt", 0.30, 0.12, 0.48)
        + _rows("gt-s1", 1, "gt", 0.34, 0.12, 0.48)
    )
    lines = script("results_table").table(tidy, ["masks.source"]).splitlines()
    assert lines[2] == "| random init (floor) | 0.110 (0.100–0.120) | – | – | 0,1 |"
    assert lines[3] == "| supervised (ceiling) | 0.490 (0.480–0.500) | – | – | 0,1 |"
    assert lines[4] == "| fh | 0.310 ± 0.014 | 0.210 ± 0.014 | +52% | 0,1 |"
    assert lines[5] == "| gt | 0.320 ± 0.028 | 0.200 ± 0.028 | +56% | 0,1 |"


def test_one_reference_for_every_point_is_one_value(script):
    tidy = pd.DataFrame(
        _rows("fh-s0", 0, "fh", 0.3, 0.1, 0.5) + _rows("fh-s1", 1, "fh", 0.3, 0.1, 0.5)
    )
    lines = script("results_table").table(tidy, ["masks.source"]).splitlines()
    assert lines[2] == "| random init (floor) | 0.100 | – | – | 0,1 |"
    assert lines[4] == "| fh | 0.300 | 0.200 | +50% | 0,1 |"  # equal values: one


def test_a_missing_table_or_an_unknown_column_is_a_clear_error(tmp_path, capsys, script):
    module = script("results_table")
    with pytest.raises(SystemExit) as exit_:
        module.main([str(tmp_path / "nope.csv")])
    assert exit_.value.code == 2
    assert "no results table" in capsys.readouterr().err
    csv = tmp_path / "a.csv"
    pd.DataFrame(_rows("fh-s0", 0, "fh", 0.3, 0.1, 0.5)).to_csv(csv, index=False)
    with pytest.raises(SystemExit):
        module.main([str(csv), "masks.sorce"])
    err = capsys.readouterr().err
    assert "no grid column 'masks.sorce'" in err and "its grid columns: masks.source" in err
    assert module.main([str(csv), "masks.source"]) == 0
    assert "| fh | 0.300 |" in capsys.readouterr().out


def test_a_table_without_a_results_tables_columns_is_a_clear_error(tmp_path, capsys, script):
    module = script("results_table")
    csv = tmp_path / "a.csv"
    pd.DataFrame(_rows("fh-s0", 0, "fh", 0.3, 0.1, 0.5)).drop(columns="task").to_csv(
        csv, index=False
    )
    with pytest.raises(SystemExit):
        module.main([str(csv)])
    assert f"{csv}: missing column(s) task" in capsys.readouterr().err
    csv.write_text("")
    with pytest.raises(SystemExit):
        module.main([str(csv)])
    assert f"{csv}: missing column(s)" in capsys.readouterr().err
