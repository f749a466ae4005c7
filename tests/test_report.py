"""detcon report: files written, index links, figures, CLI behaviour, the report notebook."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import matplotlib as mpl
import pandas as pd
import pytest
import seaborn  # noqa: F401  (imported before rcParams are recorded: importing sets nothing)
from test_results import make_fake_runs, write_ablation, write_run

from detcon import cli
from detcon.grid import expand, load_ablation
from detcon.plotting import ablation_figure, mask_quality_figure, training_curves
from detcon.report import build_report, figure_rows, register_cli

REPO = Path(__file__).resolve().parent.parent
QUALITY_CSV = "source,mean_best_iou,coverage_at_50\ngrid,0.25,0.1\nfh,0.45,0.4\n"


def _hrefs(page: str) -> list[str]:
    return re.findall(r'(?:href|src)="([^"]+)"', page)


def test_report_writes_tables_figures_and_an_index_linking_existing_files(tmp_path):
    path, runs, ids = make_fake_runs(tmp_path)
    figures = tmp_path / "figures"
    lines: list[str] = []
    report = build_report(path, runs_dir=runs, figures_dir=figures, echo=lines.append)
    f = report.files
    assert [p.name for p in f.written()] == [
        "fake.png",
        "fake.pdf",
        "fake.csv",
        "fake_summary.csv",
        "fake_curves.png",
        "fake_status.csv",
        "index.html",
    ]
    assert f.index_html == runs / "fake" / "index.html"
    assert f.figure_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f.curves_png.read_bytes()[:4] == b"\x89PNG" and f.figure_pdf.read_bytes()[:5] == b"%PDF-"
    assert not list(figures.glob(".*.tmp")) and not list((runs / "fake").glob(".*.tmp"))

    tidy = pd.read_csv(f.table_csv)
    assert list(tidy.columns) == list(report.scan.tidy.columns) and len(tidy) == len(
        report.scan.tidy
    )
    status = pd.read_csv(f.status_csv)
    assert status["state"].value_counts().to_dict() == {"done": 4, "failed": 3, "missing": 1}
    # mean over seeds per configuration x backbone x metric, of the done points only
    summary = pd.read_csv(f.summary_csv)
    keys = [*report.scan.param_keys, "backbone", "task", "metric"]
    assert list(summary.columns) == [*keys, "mean", "std", "seeds"]
    done = report.scan.tidy[report.scan.tidy["state"] == "done"]
    assert summary["seeds"].sum() == len(done) and not summary.duplicated(keys).any()
    for _, row in summary.iterrows():
        values = done[(done[keys] == row[keys]).all(axis=1)]["value"]
        assert row["mean"] == pytest.approx(values.mean()) and row["seeds"] == len(values)
    assert (report.layout.x, report.layout.hue) == ("masks.source", "method")
    rows, references = figure_rows(report.scan, report.layout)
    assert set(rows["state"]) == {"done"} and len(rows) == 4 * 2  # 4 done runs x 2 metrics
    # Panels in the ablation's evaluate order, though summary.json sorts depth first.
    assert list(dict.fromkeys(zip(rows["task"], rows["metric"]))) == [
        ("segmentation", "miou"),
        ("depth", "rmse"),
    ]
    # the one eval_random.json (the floor) and eval_supervised.json (the ceiling)
    assert sorted(zip(references["backbone"], references["task"], references["value"])) == [
        ("random", "depth", 0.9),
        ("random", "segmentation", 0.2),
        ("supervised", "depth", 0.2),
        ("supervised", "segmentation", 0.8),
    ]

    page = f.index_html.read_text()
    here = f.index_html.parent
    links = _hrefs(page)
    assert all((here / link).is_file() for link in links), links
    for rid in ids.values():  # every rendered notebook of every run is linked
        for nb in sorted((runs / "fake" / rid).glob("*.html")):
            assert f"{rid}/{nb.name}" in links
    assert "../../figures/fake.png" in links and "../../figures/fake_curves.png" in links
    failed_rows = re.findall(r'<tr class="failed">(.*?)</tr>', page)
    assert len(failed_rows) == 3
    assert any("RuntimeError: evaluation blew up" in row for row in failed_rows)
    assert any("corrupt summary.json" in row for row in failed_rows)
    assert page.count('<tr class="missing">') == 1 and page.count('<tr class="done">') == 4

    text = "\n".join(lines)
    assert "8 points: 4 done, 3 failed, 1 missing" in text
    assert f"FAILED {ids['detcon_s', 'fh', 0]}: RuntimeError: evaluation blew up" in text
    assert f"missing (1): {ids['detcon_b', 'fh', 1]}" in text
    assert str(f.index_html) in text and str(f.figure_pdf) in text


def test_a_run_directory_replaced_by_a_file_fails_that_point_only(tmp_path):
    path, runs, ids = make_fake_runs(tmp_path)
    rid = ids["detcon_b", "fh", 1]
    (runs / "fake" / rid).write_text("not a directory")
    report = build_report(
        path, runs_dir=runs, figures_dir=tmp_path / "figures", echo=lambda line: None
    )
    row = report.scan.status.set_index("run_id").loc[rid]
    assert row["state"] == "failed" and "is a file, not a run directory" in row["error"]
    assert report.scan.counts() == {"done": 4, "failed": 4}


def test_mask_quality_figure_when_the_csv_exists(tmp_path):
    path, runs = write_ablation(tmp_path), tmp_path / "runs"
    for point in expand(load_ablation(path), "cpu"):  # every point done this time
        write_run(runs / "fake" / point.run_id, point, random=True, supervised=True)
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "mask_quality.csv").write_text(QUALITY_CSV)
    report = build_report(path, runs_dir=runs, figures_dir=figures, echo=lambda line: None)
    assert report.files.mask_quality_png.read_bytes()[:4] == b"\x89PNG"
    assert report.files.mask_quality_pdf.is_file()
    assert "mask quality vs. transfer" in report.files.index_html.read_text()


def test_mask_quality_for_one_source_only_says_why_no_figure(tmp_path):
    path, runs = write_ablation(tmp_path), tmp_path / "runs"
    for point in expand(load_ablation(path), "cpu"):
        write_run(runs / "fake" / point.run_id, point, random=True, supervised=True)
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "mask_quality.csv").write_text("source,mean_best_iou,coverage_at_50\nfh,0.45,0.4\n")
    lines: list[str] = []
    report = build_report(path, runs_dir=runs, figures_dir=figures, echo=lines.append)
    assert report.files.mask_quality_png is None
    assert (
        "mask quality figure: not drawn; it needs 2 or more mask sources with a quality in "
        "mask_quality.csv, and fake has fh (no quality for grid)"
    ) in lines
    (figures / "mask_quality.csv").unlink()  # the README's report command has none: say so
    lines.clear()
    report = build_report(path, runs_dir=runs, figures_dir=figures, echo=lines.append)
    assert report.files.mask_quality_png is None
    assert (
        f"mask quality figure: not drawn; {figures / 'mask_quality.csv'} does not exist "
        f"(`detcon masks quality --profile cpu --out {figures / 'mask_quality.csv'}` writes it)"
    ) in lines


def test_no_runs_at_all_is_a_clear_error_and_nonzero_exit(tmp_path, monkeypatch, capsys):
    path, _, _ = make_fake_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="no run of ablation 'fake' at profile 'cpu'"):
        build_report(path, runs_dir=tmp_path / "elsewhere", figures_dir=tmp_path / "figures")
    assert not (tmp_path / "figures").exists()
    # Through the `detcon` command (cli.py turns the error into a message and exit code 2).
    monkeypatch.setattr(cli, "_load_extra_commands", lambda: None)
    monkeypatch.setattr(cli, "_EXTRA_COMMANDS", [register_cli])
    code = cli.main(["report", str(path), "--runs-dir", str(tmp_path / "elsewhere")])
    assert code == 2
    assert "detcon report: error: no run of ablation 'fake'" in capsys.readouterr().err
    # runs of an earlier version of the file (an export of it, e.g. results/): not "run it
    # there", which would train into the results tree
    (tmp_path / "elsewhere" / "fake" / "detcon_b-fh-s0-0a1b2c").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"holds 1 run directories \(e\.g\. detcon_b-fh"):
        build_report(path, runs_dir=tmp_path / "elsewhere", figures_dir=tmp_path / "figures")


def test_cli_report_prints_where_everything_is(tmp_path, capsys):
    path, runs, _ = make_fake_runs(tmp_path)
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(
        ["report", str(path), "--runs-dir", str(runs), "--figures-dir", str(tmp_path / "fig")]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "fig" / "fake.png") in out and str(runs / "fake" / "index.html") in out


def _tidy_rows() -> pd.DataFrame:
    rows = [
        {"task": t, "metric": m, "value": v + seed / 50, "src": s, "method": meth}
        for t, m, v in (("seg", "miou", 0.4), ("depth", "rmse", 0.6))
        for s in ("grid", "fh")
        for meth in ("a", "b")
        for seed in range(3)
    ]
    return pd.DataFrame(rows)


def test_figures_draw_one_panel_per_metric_and_leave_pyplot_alone():
    import matplotlib.pyplot as plt

    before = dict(mpl.rcParams)
    figs_before = plt.get_fignums()
    data = _tidy_rows()  # seg miou in [0.4, 0.44], depth rmse in [0.6, 0.64]
    # Floor and ceiling far from the points; for rmse (lower is better) the ceiling is below.
    # The floor's two seg rows are two points' baselines: the line is at their mean.
    references = pd.DataFrame(
        [
            {"backbone": b, "task": t, "metric": m, "value": v}
            for b, t, m, v in (
                ("random", "seg", "miou", 0.15),
                ("random", "seg", "miou", 0.25),
                ("supervised", "seg", "miou", 0.9),
                ("random", "depth", "rmse", 1.1),
                ("supervised", "depth", "rmse", 0.3),
            )
        ]
    )
    fig = ablation_figure(
        data,
        x="src",
        order=["grid", "fh"],
        hue="method",
        hue_order=["a", "b"],
        references=references,
        title="t",
    )
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [
        "seg: miou ↑",
        "depth: rmse ↓",
    ]
    for ax, (task, floor, ceiling) in zip(axes, [("seg", 0.2, 0.9), ("depth", 1.1, 0.3)]):
        # two horizontal lines of distinct styles: the floor dashed, the ceiling dash-dot
        floors = [ln.get_ydata()[0] for ln in ax.lines if ln.get_linestyle() == "--"]
        ceilings = [ln.get_ydata()[0] for ln in ax.lines if ln.get_linestyle() == "-."]
        assert floors == [pytest.approx(floor)] and ceilings == [pytest.approx(ceiling)]
        # the y axis spans both lines and every seed, with a small margin
        values = [*data.loc[data["task"] == task, "value"], floor, ceiling]
        lo, hi = min(values), max(values)
        bottom, top = ax.get_ylim()
        assert lo - 0.15 * (hi - lo) < bottom < lo and hi < top < hi + 0.15 * (hi - lo)
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_texts == ["a", "b", "random init (floor)", "supervised (ceiling)"]
    # without references: no reference line, no legend entry, the y axis fits the seeds
    bare = ablation_figure(data, x="src", order=["grid", "fh"])
    ax = next(ax for ax in bare.axes if ax.get_visible())
    assert not [ln for ln in ax.lines if ln.get_linestyle() in ("--", "-.")]
    assert 0.3 < ax.get_ylim()[0] < 0.4 and 0.44 < ax.get_ylim()[1] < 0.5
    assert ax.get_xlabel() == "src"
    # a long combined column (two keys varying in one file) breaks at its " / ": one line was
    # clipped under the right-hand panel
    long = data.assign(**{"masks.num_samples / loss.temperature": data["src"]})
    wide = ablation_figure(long, x="masks.num_samples / loss.temperature", order=["grid", "fh"])
    ax = next(ax for ax in wide.axes if ax.get_visible())
    assert ax.get_xlabel() == "masks.num_samples /\nloss.temperature"
    # The paper's expected direction is printed under the title; report takes it from the claims.
    from detcon.report import paper_expectations

    expected = paper_expectations("baselines")
    assert len(expected) == 2 and all("transfers better than" in e for e in expected)
    assert paper_expectations("demo") == []
    marked = ablation_figure(data, x="src", order=["grid", "fh"], title="t", expected=expected)
    heading = marked._suptitle.get_text()
    assert f"paper: {expected[1]}" in " ".join(heading.split())
    # wrapped to the figure's width: no line longer than ~13 characters per inch
    assert max(map(len, heading.splitlines())) <= int(marked.get_figwidth() * 13)
    # The same results draw the same bytes (committed figures: `make figures` changes nothing),
    # and NumPy's global RNG is left as it was.
    import io

    import numpy as np

    def png_and_pdf(fig):
        out = []
        for fmt, meta in (("png", None), ("pdf", {"CreationDate": None})):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, metadata=meta)
            out.append(buf.getvalue())
        return out

    state = np.random.get_state()[1].copy()  # noqa: NPY002
    first = png_and_pdf(ablation_figure(data, x="src", order=["grid", "fh"]))
    assert (np.random.get_state()[1] == state).all()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    assert png_and_pdf(ablation_figure(data, x="src", order=["grid", "fh"])) == first

    curves = pd.DataFrame(
        {
            "run_id": ["r1"] * 3 + ["r2"] * 3,
            "step": [0, 1, 2] * 2,
            "loss": [3.0, 2.0, 1.0] * 2,
            "normalized_proj_std": [0.1] * 6,
        }
    )
    fig2 = training_curves(curves)
    assert sum(ax.get_visible() for ax in fig2.axes) == 2
    quality = data.assign(
        mean_best_iou=data["src"].map({"grid": 0.25, "fh": 0.45}), source=data["src"]
    )
    fig3 = mask_quality_figure(quality, hue="method")
    assert sum(ax.get_visible() for ax in fig3.axes) == 2
    assert dict(mpl.rcParams) == before and plt.get_fignums() == figs_before


def test_figure_functions_reject_bad_tables():
    with pytest.raises(ValueError, match="missing column"):
        ablation_figure(pd.DataFrame({"task": ["s"]}), x="src", order=["grid"])
    data = _tidy_rows()
    imagenet = pd.DataFrame([{"backbone": "imagenet", "task": "seg", "metric": "miou", "value": 1}])
    with pytest.raises(ValueError, match="backbone\\(s\\) 'imagenet'; expected 'random' or"):
        ablation_figure(data, x="src", order=["grid", "fh"], references=imagenet)
    with pytest.raises(ValueError, match="empty"):
        training_curves(pd.DataFrame(columns=["run_id", "step", "loss"]))


def test_report_notebook_is_thin_parameterised_and_stripped():
    import ast
    import json

    # Plain JSON (nbformat's schema validation alone takes seconds on a busy machine).
    nb = json.loads((REPO / "notebooks" / "report.ipynb").read_text())
    cells = nb["cells"]
    tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1
    # What papermill's inspection reads (parsed here directly: importing papermill is slow).
    assigned = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse("".join(tagged[0]["source"])).body
        if isinstance(node, ast.Assign)
    }
    assert assigned == {
        "ablation": "ablations/demo.yaml",
        "profile": "cpu",
        "runs_dir": "runs",
        "figures_dir": "figures",
    }
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert any("build_report(" in "".join(c["source"]) for c in code)


def test_figures_dir_that_is_a_file_is_one_paragraph(tmp_path, capsys):
    path, runs, _ = make_fake_runs(tmp_path)
    taken = tmp_path / "figures"
    taken.write_text("a file")
    rc = cli.main(["report", str(path), "--runs-dir", str(runs), "--figures-dir", str(taken)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"--figures-dir {str(taken)!r}" in err
    assert taken.read_text() == "a file"


def test_an_executed_report_notebook_keeps_nothing_that_changes_between_executions(
    tmp_path, monkeypatch
):
    """Timings, kernel timestamps, the injected cell's random id and the temporary output path
    go; the outputs and the rest stay: the same results give the same bytes."""
    import json

    from detcon.report import settle_notebook

    def executed(stamp: str, cell_id: str, tmp_name: str, template: str) -> dict:
        times = {"start_time": stamp, "end_time": stamp, "duration": 0.1}
        paths = {"input_path": template, "output_path": tmp_name}
        return {
            "metadata": {"papermill": {**times, **paths, "parameters": {"a": 1}}},
            "cells": [
                {
                    "id": cell_id,
                    "cell_type": "code",
                    "metadata": {"tags": ["injected-parameters"], "papermill": dict(times)},
                    "outputs": [],
                    "source": "a = 1",
                },
                {
                    "id": "fixed",
                    "cell_type": "code",
                    "metadata": {
                        "execution": {"iopub.status.busy": stamp},
                        "papermill": {**times, "status": "completed"},
                    },
                    "outputs": [{"output_type": "stream", "name": "stdout", "text": "x\n"}],
                    "source": "print('x')",
                },
            ],
        }

    settled = []
    for stamp, cell_id, tmp_name in [
        ("t1", "ab12", ".report.1.tmp"),
        ("t2", "cd34", ".report.2.tmp"),
    ]:
        clone = tmp_path / f"clone-{cell_id}"  # executed in two clones: absolute template paths
        (clone / "notebooks").mkdir(parents=True)
        monkeypatch.chdir(clone)
        template = str(clone / "notebooks" / "report.ipynb")
        path = tmp_path / tmp_name
        path.write_text(json.dumps(executed(stamp, cell_id, tmp_name, template)))
        settle_notebook(path, tmp_path / "report.ipynb")
        settled.append(path.read_bytes())
    assert settled[0] == settled[1]
    nb = json.loads(settled[0])
    assert nb["metadata"]["papermill"] == {
        "input_path": "notebooks/report.ipynb",
        "output_path": str(tmp_path / "report.ipynb"),
        "parameters": {"a": 1},
    }
    assert nb["cells"][0]["id"] == "injected-parameters"
    assert nb["cells"][1]["metadata"] == {"papermill": {"status": "completed"}}
    assert nb["cells"][1]["outputs"][0]["text"] == "x\n"


def test_the_mask_quality_figure_has_references_and_one_correlation_per_line():
    # r was pooled over the methods' points (-0.72 where they were -0.44 and -0.91), and the
    # floor and the ceiling were missing.
    rows = []
    for method, slope in (("detcon_s", 1.0), ("detcon_b", -1.0)):
        for source, q in (("grid", 0.2), ("fh", 0.5), ("ground_truth", 1.0)):
            for seed in range(2):
                value = 0.4 + slope * 0.1 * q**8 + 0.01 * seed  # monotone, far from linear
                rows.append({"method": method, "source": source, "mean_best_iou": q,
                             "task": "segmentation", "metric": "miou", "value": value})  # fmt: skip
    refs = pd.DataFrame(
        [
            {"backbone": "random", "task": "segmentation", "metric": "miou", "value": 0.25},
            {"backbone": "supervised", "task": "segmentation", "metric": "miou", "value": 0.8},
        ]
    )
    fig = mask_quality_figure(pd.DataFrame(rows), hue="method", references=refs)
    ax = fig.axes[0]
    title = " ".join(ax.get_title().split())
    # the claims' rank correlation (Pearson's r of these means: 0.93 and -0.93)
    assert "Spearman ρ over 3 sources: detcon_s 1.00, detcon_b -1.00" in title
    styles = {ln.get_linestyle() for ln in ax.lines}
    assert {"--", "-."} <= styles and ax.get_ylim()[0] < 0.25 and ax.get_ylim()[1] > 0.8
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[-2:] == ["random init (floor)", "supervised (ceiling)"]
    assert "95% bootstrap CI" in " ".join(fig._suptitle.get_text().split())


def test_the_figure_says_what_the_profiles_values_stand_for():
    from detcon.grid import load_ablation
    from detcon.report import stand_in_lines

    resolution = load_ablation(Path(__file__).parents[1] / "ablations" / "resolution.yaml")
    assert stand_in_lines(resolution, "cpu") == [
        "at cpu: augment.crop_size 64 for 224, 112 for 384, 144 for 512"
    ]
    assert stand_in_lines(resolution, "paper") == []
    negatives = load_ablation(Path(__file__).parents[1] / "ablations" / "negatives.yaml")
    assert stand_in_lines(negatives, "cpu") == ["at cpu: loss.negative_groups 8 for 128"]


def test_the_figure_says_when_not_every_point_is_drawn(tmp_path):
    # A configuration none of whose points finished vanished from the figure without a word
    # (the status table and the index page listed it; the figure a reader looks at did not).
    from detcon.report import _incomplete_lines

    path, runs, ids = make_fake_runs(tmp_path)
    scan = build_report(path, runs_dir=runs, figures_dir=tmp_path / "f", echo=lambda _: None).scan
    done = scan.counts().get("done", 0)
    assert 0 < done < len(scan.status)  # the fake runs hold a point that did not finish
    (line,) = _incomplete_lines(scan)
    assert line.startswith(f"{done} of {len(scan.status)} points done (") and "only those" in line
    scan.status["state"] = "done"
    assert _incomplete_lines(scan) == []  # the committed figures: every point done, no line
