"""detcon export: finished points -> a small results tree that the reporter reads alone."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_results import _listing, make_fake_runs

from detcon import cli, export
from detcon.export import (
    POINT_FILES,
    copy_point,
    export_ablation,
    remove_leftovers,
    thin_metrics,
)
from detcon.grid import expand, load_ablation
from detcon.report import build_report
from detcon.results import scan_ablation

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def fake(tmp_path):
    """make_fake_runs (4 done, 3 failed, 1 missing) plus what a real point also holds: weights,
    a checkpoint, the lock, a mask cache, the git state in env.json."""
    path, runs, ids = make_fake_runs(tmp_path)
    for rid in ids.values():
        run = runs / "fake" / rid
        if run.is_dir():
            (run / "checkpoint.pt").write_bytes(b"\0" * 1000)
            (run / "backbone.pt").write_bytes(b"\0" * 100)
            (run / ".lock").write_text("host 1\n")
            (run / "masks").mkdir()
            (run / "masks" / "shard-0.npz").write_bytes(b"\0" * 10)
            (run / "env.json").write_text(json.dumps({"git": {"sha": SHA, "dirty": False}}))
            (run / "config.json").write_text("{}")
    return path, runs, ids


def _export(path, runs, to, **kwargs):
    lines, warnings = [], []
    result = export_ablation(
        path, runs_dir=runs, to=to, echo=lines.append, warn=warnings.append, **kwargs
    )
    return result, "\n".join(lines), "\n".join(warnings)


def test_export_copies_the_small_files_of_done_points_only(fake, tmp_path):
    path, runs, ids = fake
    to = tmp_path / "results"
    result, out, err = _export(path, runs, to)
    done = [ids[k] for k in (("detcon_s", "grid", 0), ("detcon_b", "grid", 0))]  # seed 0
    done += [ids[k] for k in (("detcon_s", "grid", 1), ("detcon_b", "grid", 1))]
    assert sorted(result.exported) == sorted(done)
    assert sorted(p.name for p in (to / "fake").iterdir()) == sorted(done)
    for rid in done:
        names = sorted(p.name for p in (to / "fake" / rid).iterdir())
        seed0 = "-s0-" in rid
        small = [n for n in POINT_FILES if (runs / "fake" / rid / n).exists()]
        # the notebooks (not their HTML) of seed 0
        assert names == sorted(small + (["evaluate.ipynb", "pretrain.ipynb"] if seed0 else []))
        for name in ["summary.json", "eval.json"] + (["pretrain.ipynb"] if seed0 else []):
            copied = (to / "fake" / rid / name).read_bytes()
            assert copied == (runs / "fake" / rid / name).read_bytes()
        metrics = (runs / "fake" / rid / "metrics.jsonl").read_text()
        assert (to / "fake" / rid / "metrics.jsonl").read_text() == thin_metrics(metrics)
    copied = sum(p.stat().st_size for p in (to / "fake").rglob("*") if p.is_file())
    assert result.bytes_written == copied + result.table_csv.stat().st_size
    # the failed, interrupted, corrupt and missing points are named on stderr
    assert re.search(r"^4 of 8 points not done, left out: ", err, re.M)
    # each with its reason: a corrupt point read as plainly "failed"
    assert f"{ids['detcon_s', 'fh', 0]} (failed: RuntimeError: evaluation blew up)" in err
    assert f"{ids['detcon_s', 'fh', 1]} (failed: interrupted: status.json says running" in err
    assert f"{ids['detcon_b', 'fh', 0]} (failed: corrupt summary.json" in err
    assert f"{ids['detcon_b', 'fh', 1]} (missing)" in err
    assert "[4/4]" in out and f"4 points in {to / 'fake'}" in out
    assert not list(to.rglob(".*"))  # no temp folder, no lock


def test_the_table_has_one_row_per_point_backbone_task_metric(fake, tmp_path):
    path, runs, ids = fake
    to = tmp_path / "results"
    result, _, _ = _export(path, runs, to)
    table = pd.read_csv(result.table_csv)
    assert result.table_csv == to / "fake.csv"
    assert list(table.columns) == [
        "ablation",
        "run_id",
        "seed",
        "method",
        "masks.source",
        "config_digest",
        "git_commit",
        "git_dirty",
        "backbone",
        "task",
        "metric",
        "value",
    ]
    digests = {p.run_id: p.digest for p in expand(load_ablation(path), "cpu")}
    assert set(table["run_id"]) == set(result.exported)
    assert (table["config_digest"] == table["run_id"].map(digests)).all()
    assert table["config_digest"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert (table["git_commit"] == SHA).all() and not table["git_dirty"].any()
    # the same numbers as the run directories, and one row per key
    tidy = scan_ablation(path, runs_dir=runs).tidy
    tidy = tidy[tidy["state"] == "done"]
    keys = ["run_id", "backbone", "task", "metric"]
    assert not table.duplicated(keys).any() and len(table) == len(tidy)
    merged = table.merge(tidy, on=keys, suffixes=("", "_runs"))
    assert len(merged) == len(table) and (merged["value"] == merged["value_runs"]).all()
    reference = ids["detcon_b", "grid", 0]  # the point with the floor and the ceiling
    assert set(table.loc[table["run_id"] == reference, "backbone"]) == {
        "pretrained",
        "random",
        "supervised",
    }


def test_the_report_reads_an_exported_tree_alone(fake, tmp_path):
    path, runs, ids = fake
    to = tmp_path / "results"
    _export(path, runs, to, notebook_seeds=[0, 1])
    before = _listing(to)
    figures = tmp_path / "figures"
    report = build_report(path, runs_dir=to, figures_dir=figures, echo=lambda line: None)
    assert report.scan.counts() == {"done": 4, "missing": 4}
    assert _listing(to) == sorted([*before, "fake/index.html"])  # no lock, nothing else
    page = report.files.index_html.read_text()
    links = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert all((to / "fake" / link).is_file() for link in links), links
    for key in [("detcon_s", "grid", 0), ("detcon_b", "grid", 1)]:  # the notebooks, no HTML
        assert f"{ids[key]}/evaluate.ipynb" in links and f"{ids[key]}/pretrain.ipynb" in links
    tidy = pd.read_csv(report.files.table_csv)
    assert set(tidy["state"]) == {"done"}
    # the notebook to read of an exported point: its .ipynb (no HTML there)
    done = report.scan.status[report.scan.status["state"] == "done"]
    assert all(Path(n).name == "evaluate.ipynb" and Path(n).is_file() for n in done["notebook"])


def test_a_re_export_replaces_each_folder_and_keeps_earlier_ones(fake, tmp_path):
    path, runs, ids = fake
    to = tmp_path / "results"
    _export(path, runs, to)
    kept = ids["detcon_s", "grid", 1]
    replaced = ids["detcon_s", "grid", 0]
    (to / "fake" / replaced / "stale.txt").write_text("from an older export")
    (to / "fake" / ".x.0123abcd.tmp").mkdir()  # left by an export killed mid-copy
    (to / "fake" / ".x.0123abcd.tmp" / "summary.json").write_text("{}")
    # the kept point's run directory is gone (another machine's runs): its export stays
    shutil.rmtree(runs / "fake" / kept)
    result, _, err = _export(path, runs, to)
    assert not (to / "fake" / replaced / "stale.txt").exists()
    assert (to / "fake" / kept / "summary.json").is_file() and result.kept == [kept]
    assert (
        f"1 of 8 points not done under {runs / 'fake'}, kept from an earlier export: {kept}" in err
    )
    assert re.search(r"^4 of 8 points not done, left out: ", err, re.M)  # the kept one not again
    assert f"{kept} (" not in err
    assert "left by an interrupted export" in err and not (to / "fake" / ".x.0123abcd.tmp").exists()
    assert kept in set(pd.read_csv(result.table_csv)["run_id"])


def test_an_export_that_fails_mid_point_leaves_the_earlier_folder_whole(
    fake, tmp_path, monkeypatch
):
    path, runs, ids = fake
    to = tmp_path / "results"
    _export(path, runs, to)
    rid = ids["detcon_s", "grid", 0]
    (runs / "fake" / rid / "eval.json").write_text(json.dumps({"segmentation": {"miou": 0.99}}))
    before = {p: p.read_bytes() for p in (to / "fake" / rid).iterdir()}
    real = export.atomic_write

    def failing(target, write):
        if Path(target).name == "eval.json":
            raise OSError("disk trouble")
        return real(target, write)

    monkeypatch.setattr(export, "atomic_write", failing)
    with pytest.raises(OSError, match="disk trouble"):
        _export(path, runs, to)
    assert {p: p.read_bytes() for p in (to / "fake" / rid).iterdir()} == before
    assert not [p for p in (to / "fake").iterdir() if p.name.startswith(".")]


def test_copy_point_puts_the_earlier_folder_back_when_the_rename_fails(tmp_path, monkeypatch):
    src = tmp_path / "a.json"
    src.write_text("{}")
    dest = tmp_path / "out" / "point"
    copy_point([src], dest)
    (dest / "a.json").write_text('{"old": 1}')
    renames = []
    real = export.os.rename

    def rename(a, b):
        renames.append((Path(a).name, Path(b).name))
        if len(renames) == 2:  # the new folder into place
            raise OSError("interrupted")
        return real(a, b)

    monkeypatch.setattr(export.os, "rename", rename)
    with pytest.raises(OSError, match="interrupted"):
        copy_point([src], dest)
    assert (dest / "a.json").read_text() == '{"old": 1}'
    assert sorted(p.name for p in dest.parent.iterdir()) == ["point"]
    assert remove_leftovers(dest.parent) == []


def test_a_point_set_aside_by_an_interrupted_export_is_put_back(tmp_path):
    # A kill between copy_point's two renames left only .point.<hex>.old: the next export
    # deleted it, and with the run directories gone the point was lost from the working tree.
    folder = tmp_path / "out"
    (folder / ".point.0123abcd.old").mkdir(parents=True)
    (folder / ".point.0123abcd.old" / "a.json").write_text("{}")
    (folder / ".other.89abcdef.tmp").mkdir()
    (folder / "kept").mkdir()
    (folder / ".kept.fedcba98.old").mkdir()  # its point is there: the older copy goes
    lines = remove_leftovers(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["kept", "point"]
    assert (folder / "point" / "a.json").read_text() == "{}"
    assert [line.split()[0] for line in lines] == ["removed", "removed", "put"]


def test_no_done_point_is_one_paragraph_and_exit_2(tmp_path, capsys):
    path, runs, _ = make_fake_runs(tmp_path)
    for run in (runs / "fake").iterdir():  # every point's job died before it finished
        (run / "summary.json").unlink(missing_ok=True)
        (run / "status.json").write_text(json.dumps({"state": "running"}))
    code = cli.main(["export", str(path), "--runs-dir", str(runs), "--to", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("detcon export: error: nothing to export: none of the 8 points")
    assert not (tmp_path / "r").exists()


def test_exporting_into_the_runs_dir_is_refused(fake, capsys):
    path, runs, _ = fake
    code = cli.main(["export", str(path), "--runs-dir", str(runs), "--to", str(runs)])
    assert code == 2 and "would replace the run directories" in capsys.readouterr().err
    assert list((runs / "fake").glob("*/checkpoint.pt"))


def test_a_notebook_seed_no_point_has_is_refused(fake, tmp_path, capsys):
    # --notebook-seeds 7 was taken, and a re-export with it removed the notebooks exported before
    path, runs, _ = fake
    to = tmp_path / "results"
    args = ["export", str(path), "--runs-dir", str(runs), "--to", str(to), "--notebook-seeds"]
    assert cli.main([*args, "0", "7"]) == 2
    assert (
        "--notebook-seeds 7: no point of fake at profile 'cpu' has that seed; expected some of 0 1"
        in (capsys.readouterr().err)
    )
    assert not to.exists()


def test_cli_export_options_and_the_size_warning(fake, tmp_path, capsys, monkeypatch):
    path, runs, ids = fake
    monkeypatch.setattr(export, "SIZE_WARNING_BYTES", 1000)
    to = tmp_path / "results"
    args = ["export", str(path), "--runs-dir", str(runs), "--to", str(to), "--notebook-seeds"]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "wrote " in captured.out and f"{to} holds " in captured.out
    assert "more than 1 KB" in captured.err and "--notebook-seeds" in captured.err
    assert not list(to.rglob("*.ipynb"))  # --notebook-seeds alone: no notebook
    assert cli.main([*args, "1"]) == 0
    found = sorted(p.parent.name for p in to.rglob("evaluate.ipynb"))
    assert found == sorted(ids[k] for k in (("detcon_s", "grid", 1), ("detcon_b", "grid", 1)))
    assert not list(to.rglob("*.html"))


def test_thin_metrics_keeps_evenly_spaced_steps_the_last_and_5_digits():
    lines = [json.dumps({"step": s, "loss": 1 / 3 + s, "lr": s, "note": "x"}) for s in range(10)]
    text = "\n".join(lines) + '\nnot json\n{"step": 10, "lo'  # garbage and a torn last line
    thinned = [json.loads(line) for line in thin_metrics(text, rows=4).splitlines()]
    assert [r["step"] for r in thinned] == [0, 3, 6, 9]  # stride ceil(10 / 4) = 3, and the last
    assert thinned[1] == {"step": 3, "loss": 3.3333, "lr": 3, "note": "x"}
    short = thin_metrics("\n".join(lines[:3]), rows=4)
    assert [json.loads(line)["step"] for line in short.splitlines()] == [0, 1, 2]
    assert thin_metrics("") == ""
    with pytest.raises(ValueError, match="rows must be >= 1, got 0"):
        thin_metrics(text, rows=0)


def test_a_reused_point_links_the_notebooks_it_shares_with_its_source(fake, tmp_path):
    """A point that took another ablation's finished run (status.json ``reused_from``) has the
    same pretrain notebook as its source: the export does not copy it twice, the index links the
    source's copy; a notebook that differs (evaluated again) is copied."""
    path, runs, ids = fake
    to = tmp_path / "results"
    rid = ids["detcon_s", "grid", 0]
    source = to / "baselines" / "detcon_s-s0-abc123"
    source.mkdir(parents=True)
    shutil.copy(runs / "fake" / rid / "pretrain.ipynb", source / "pretrain.ipynb")
    (source / "evaluate.ipynb").write_text('{"cells": [], "metadata": {"other": 1}}')
    status = json.loads((runs / "fake" / rid / "status.json").read_text())
    status["reused_from"] = "baselines/detcon_s-s0-abc123"
    (runs / "fake" / rid / "status.json").write_text(json.dumps(status))
    _export(path, runs, to)
    assert not (to / "fake" / rid / "pretrain.ipynb").exists()
    assert (to / "fake" / rid / "evaluate.ipynb").is_file()
    assert (to / "fake" / ids["detcon_b", "grid", 0] / "pretrain.ipynb").is_file()  # not reused
    report = build_report(path, runs_dir=to, figures_dir=tmp_path / "f", echo=lambda line: None)
    links = re.findall(r'href="([^"]+)"', report.files.index_html.read_text())
    assert "../baselines/detcon_s-s0-abc123/pretrain.ipynb" in links
    assert f"{rid}/evaluate.ipynb" in links
    assert all((to / "fake" / link).resolve().is_file() for link in links), links
