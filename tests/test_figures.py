"""detcon figures (make figures): every exported ablation's report, from results/ alone.

The fixture ``tests/fixtures/results_study/`` is a tiny study run for real and exported
(``scripts/make_results_fixture.py``): ``ablations/`` with one exported ablation and one never
run, ``results/`` as ``detcon export`` wrote it. No run directory, checkpoint or lock exists.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_results import _listing

from detcon import cli
from detcon.export import POINT_FILES, results_table
from detcon.grid import expand, load_ablation
from detcon.report import build_figures, default_jobs
from detcon.results import scan_ablation

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "results_study"
REGENERATE = "run `PYTHONPATH=. python scripts/make_results_fixture.py` to regenerate it"
FIGURES = [
    "tiny.csv",
    "tiny.pdf",
    "tiny.png",
    "tiny_curves.png",
    "tiny_status.csv",
    "tiny_summary.csv",
]


@pytest.fixture()
def study(tmp_path, monkeypatch) -> Path:
    """A copy of the fixture study, as the current directory (a checkout's root)."""
    expected = {p.run_id for p in expand(load_ablation(FIXTURE / "ablations" / "tiny.yaml"), "cpu")}
    exported = {p.name for p in (FIXTURE / "results" / "tiny").iterdir() if p.is_dir()}
    if exported != expected:  # a config default changed, so did every run id
        pytest.fail(f"the fixture's run ids are not the ablation's any more; {REGENERATE}")
    root = tmp_path / "study"
    shutil.copytree(FIXTURE, root)
    monkeypatch.chdir(root)
    return root


def _add_changed_ablation(study: Path) -> None:
    """A second ablation whose exported folder holds none of its points (its config changed)."""
    (study / "ablations" / "changed.yaml").write_text(
        (study / "ablations" / "tiny.yaml")
        .read_text()
        .replace("name: tiny", "name: changed")
        .replace("train.max_steps: 2", "train.max_steps: 3")
    )
    shutil.copytree(study / "results" / "tiny", study / "results" / "changed")


def test_the_fixture_is_a_small_export():
    files = [p for p in FIXTURE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 300_000
    points = [p for p in (FIXTURE / "results" / "tiny").iterdir()]
    assert len(points) == 4
    for point in points:
        assert {p.name for p in point.iterdir()} <= set(POINT_FILES)
        assert (point / "summary.json").is_file()
    # the committed table is the one the export writes from the committed folders
    path = FIXTURE / "ablations" / "tiny.yaml"
    scan = scan_ablation(path, profile="cpu", runs_dir=FIXTURE / "results")
    table = results_table(scan, expand(load_ablation(path), "cpu"))
    committed = pd.read_csv(FIXTURE / "results" / "tiny.csv")
    pd.testing.assert_frame_equal(committed, pd.read_csv(io.StringIO(table.to_csv(index=False))))


def test_figures_come_from_the_results_tree_alone(study, capsys):
    before = _listing(study / "results")
    # the defaults: ablations/, results/, figures/; one ablation: no worker process
    assert cli.main(["figures"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^1 reports from results in \d+\.\d s", out, re.M), out
    assert "unexported" not in out  # no results/unexported/: skipped

    figures = study / "figures"
    assert sorted(p.name for p in figures.iterdir()) == FIGURES
    assert (figures / "tiny.png").read_bytes()[:4] == b"\x89PNG"
    status = pd.read_csv(figures / "tiny_status.csv")
    assert len(status) == 4 and set(status["state"]) == {"done"}
    # the figure's table holds the exported numbers
    tidy = pd.read_csv(figures / "tiny.csv")
    exported = pd.read_csv(study / "results" / "tiny.csv")
    keys = ["run_id", "backbone", "task", "metric"]
    merged = exported.merge(tidy, on=keys, suffixes=("", "_report"))
    assert len(merged) == len(exported) == len(tidy)
    assert (merged["value"] == merged["value_report"]).all()
    assert {"random", "supervised"} <= set(tidy["backbone"])

    # the index page is the only file added to results/; its links resolve
    assert _listing(study / "results") == sorted([*before, "tiny/index.html"])
    index = study / "results" / "tiny" / "index.html"
    links = re.findall(r'(?:href|src)="([^"]+)"', index.read_text())
    assert "../../figures/tiny.png" in links
    assert all((index.parent / link).is_file() for link in links), links
    assert not [p for p in study.rglob("*") if p.suffix == ".pt" or p.name == ".lock"]


def test_an_export_of_another_config_is_named_after_the_others_are_drawn(study, capsys):
    _add_changed_ablation(study)
    code = cli.main(["figures"])
    captured = capsys.readouterr()
    assert code == 2 and (study / "figures" / "tiny.png").is_file()
    assert "changed FAILED" in captured.out
    err = captured.err
    assert err.startswith("detcon figures: error: no exported point of changed is a point of")
    assert err.count("\n") == 1


def test_figures_where_the_os_has_no_affinity_mask_nor_fork(study, monkeypatch, capsys):
    """macOS: no os.sched_getaffinity, and the workers are spawned (fork is unsafe there)."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undetermined"
    assert default_jobs() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert default_jobs() == 2
    monkeypatch.setattr("detcon.report.POOL_START_METHOD", "spawn")
    _add_changed_ablation(study)
    assert cli.main(["figures"]) == 2  # the changed ablation has no point: drawn, then named
    out = capsys.readouterr().out
    assert "2 exported ablations in results, 2 at a time" in out, out
    assert "changed FAILED" in out
    assert (study / "figures" / "tiny.png").read_bytes()[:4] == b"\x89PNG"


def test_no_exported_ablation_is_a_clear_error(tmp_path, capsys):
    shutil.copytree(FIXTURE / "ablations", tmp_path / "ablations")
    args = ["--ablations-dir", str(tmp_path / "ablations"), "--results-dir", str(tmp_path / "r")]
    assert cli.main(["figures", *args]) == 2
    assert "no exported results: none of the 2 ablations" in capsys.readouterr().err
    assert cli.main(["figures", *args, "--jobs", "0"]) == 2
    assert "--jobs 0: expected the number of processes" in capsys.readouterr().err


@pytest.mark.slow
def test_the_report_notebook_per_ablation(study):
    """``--notebooks``: notebooks/report.ipynb executed per ablation (papermill, seconds)."""
    _add_changed_ablation(study)
    lines: list[str] = []
    with pytest.raises(FileNotFoundError, match="no exported point of changed is a point"):
        build_figures(notebooks=True, echo=lines.append)
    assert any(line.startswith("[1/2] changed FAILED: no run of ablation") for line in lines)
    assert any(line.startswith("[2/2] tiny done") for line in lines)
    assert not (study / "results" / "changed" / "report.ipynb").exists()
    folder = study / "results" / "tiny"
    assert (folder / "report.ipynb").is_file() and (folder / "report.html").is_file()
    assert "4 points: 4 done" in (folder / "report.html").read_text()
    assert sorted(p.name for p in (study / "figures").iterdir()) == FIGURES
    assert not list(folder.glob(".*"))  # the executed notebook was renamed into place
