"""detcon.results: fake run directories -> completeness and tidy tables, figure layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from detcon.grid import expand, load_ablation
from detcon.results import (
    AblationScan,
    choose_layout,
    diverged_probes,
    label_rows,
    load_mask_quality,
    read_curves,
    read_run_metrics,
    scan_ablation,
)
from detcon.runs import ablation_status, flatten_summary, is_locked, point_lock, summary_of

ABLATION = """\
name: fake
description: two methods x two mask sources x two seeds, for the report tests
seeds: [0, 1]
grid:
  product: {method: [detcon_s, detcon_b], masks.source: [grid, fh]}
evaluate: [segmentation, depth]
"""
ROOT = Path(__file__).resolve().parents[1]
TRAIN_KEYS = ["final_loss", "images_per_s", "steps", "wall_s"]  # numeric train_summary fields


def miou(method: str, source: str, seed: int) -> float:
    return {"grid": 0.3, "fh": 0.4}[source] + (0.05 if method == "detcon_b" else 0) + seed / 100


def _write(path: Path, data: object) -> None:
    path.write_text(json.dumps(data))


def write_run(
    run: Path, point, *, state: str = "done", random: bool = False, supervised: bool = False
) -> None:
    """A run directory as the launcher, pretrain.ipynb and evaluate.ipynb leave it (with the
    random-init floor and the supervised ceiling when asked)."""
    run.mkdir(parents=True)
    method, source, seed = (point.params[k] for k in ("method", "masks.source", "seed"))
    _write(run / "point.json", point.to_json())
    train = {
        "steps": 3,
        "final_loss": 2.0 - seed / 10,
        "wall_s": 1.5,
        "images_per_s": 20.0,
        "resumed_from": 0,
        "method": method,
        "mask_source": source,
    }
    _write(run / "train_summary.json", train)
    lines = [
        json.dumps({"step": s, "loss": 3.0 - s / 2, "normalized_proj_std": 0.1 + s / 100})
        for s in range(3)
    ]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 3, "lo')  # torn last line
    (run / "pretrain.ipynb").write_text('{"cells": [], "metadata": {"stage": "pretrain"}}')
    (run / "pretrain.html").write_text("<html>pretrain</html>")
    if state == "failed":
        _write(
            run / "status.json",
            {
                "state": "failed",
                "notebook": "evaluate.html",
                "error": "RuntimeError: evaluation blew up\nTraceback ...",
            },
        )
        (run / "evaluate.html").write_text("<html>failed evaluate</html>")
        return
    if state == "running":
        _write(run / "status.json", {"state": "running"})
        return
    evaluation = {"segmentation": {"miou": miou(method, source, seed)}, "depth": {"rmse": 0.5}}
    _write(run / "eval.json", evaluation)
    if random:
        _write(run / "eval_random.json", {"segmentation": {"miou": 0.2}, "depth": {"rmse": 0.9}})
    if supervised:
        ceiling = {"segmentation": {"miou": 0.8}, "depth": {"rmse": 0.2}}
        _write(run / "eval_supervised.json", ceiling)
    (run / "evaluate.ipynb").write_text(f'{{"cells": [], "metadata": {{"seed": {seed}}}}}')
    (run / "evaluate.html").write_text("<html>evaluate</html>")
    _write(run / "summary.json", flatten_summary(point.to_json(), train, evaluation))
    _write(run / "status.json", {"state": "done", "notebook": "evaluate.html"})


def write_ablation(folder: Path) -> Path:
    path = folder / "fake.yaml"
    path.write_text(ABLATION)
    return path


def make_fake_runs(tmp_path: Path) -> tuple[Path, Path, dict[tuple, str]]:
    """8 points: 4 done (one with the random floor and the supervised ceiling), 1 failed, 1
    running (status only; the caller holds its lock or not), 1 with a corrupt summary.json, 1
    missing.

    Returns (ablation file, runs dir, {(method, source, seed): run_id}).
    """
    path = write_ablation(tmp_path)
    runs = tmp_path / "runs"
    points = expand(load_ablation(path), "cpu")
    ids = {(p.params["method"], p.params["masks.source"], p.params["seed"]): p for p in points}
    root = runs / "fake"
    for key in [("detcon_s", "grid", 0), ("detcon_s", "grid", 1), ("detcon_b", "grid", 1)]:
        write_run(root / ids[key].run_id, ids[key])
    reference = ids["detcon_b", "grid", 0]
    write_run(root / reference.run_id, reference, random=True, supervised=True)
    write_run(root / ids["detcon_s", "fh", 0].run_id, ids["detcon_s", "fh", 0], state="failed")
    write_run(root / ids["detcon_s", "fh", 1].run_id, ids["detcon_s", "fh", 1], state="running")
    corrupt = ids["detcon_b", "fh", 0]
    write_run(root / corrupt.run_id, corrupt)
    (root / corrupt.run_id / "summary.json").write_text('{"ablation": "fake", "run_i')
    # ("detcon_b", "fh", 1) is missing: no run directory.
    return path, runs, {k: p.run_id for k, p in ids.items()}


@pytest.fixture()
def fake(tmp_path):
    return make_fake_runs(tmp_path)


def test_completeness_table_lists_every_point_with_state_error_and_notebook(fake):
    path, runs, ids = fake
    scan = scan_ablation(path, profile="cpu", runs_dir=runs)
    st = scan.status.set_index("run_id")
    assert list(scan.status.columns) == [
        "ablation",
        "run_id",
        "state",
        "method",
        "masks.source",
        "seed",
        "error",
        "notebook",
        "run_dir",
    ]
    assert len(st) == 8 and scan.param_keys == ("method", "masks.source")
    states = {key: st.at[rid, "state"] for key, rid in ids.items()}
    assert states == {
        ("detcon_s", "grid", 0): "done",
        ("detcon_s", "grid", 1): "done",
        ("detcon_b", "grid", 0): "done",
        ("detcon_b", "grid", 1): "done",
        ("detcon_s", "fh", 0): "failed",
        ("detcon_s", "fh", 1): "failed",  # status says running, nobody holds the lock
        ("detcon_b", "fh", 0): "failed",  # corrupt summary.json
        ("detcon_b", "fh", 1): "missing",
    }
    failed = st.loc[ids["detcon_s", "fh", 0]]
    assert failed["error"] == "RuntimeError: evaluation blew up"
    assert Path(failed["notebook"]).name == "evaluate.html" and Path(failed["notebook"]).is_file()
    assert st.at[ids["detcon_s", "fh", 1], "error"].startswith("interrupted")
    corrupt = st.at[ids["detcon_b", "fh", 0], "error"]
    assert corrupt.startswith("corrupt summary.json") and "not valid JSON" in corrupt
    assert st.loc[ids["detcon_b", "fh", 1], ["error", "notebook"]].isna().all()
    assert pd.isna(st.at[ids["detcon_s", "grid", 0], "error"])
    assert scan.counts() == {"done": 4, "failed": 3, "missing": 1}


def test_a_point_whose_lock_is_held_is_running(fake):
    path, runs, ids = fake
    with point_lock(runs / "fake" / ids["detcon_s", "fh", 1]):
        scan = scan_ablation(path, profile="cpu", runs_dir=runs)
    row = scan.status.set_index("run_id").loc[ids["detcon_s", "fh", 1]]
    assert row["state"] == "running" and pd.isna(row["error"])


def test_reading_a_lock_leaves_its_holder_name_as_it_is(tmp_path):
    """is_locked probes the lock without writing: the name in .lock stays the last holder's
    (what a stale-lock message shows), held or not."""
    run = tmp_path / "run"
    run.mkdir()
    assert not is_locked(run) and not (run / ".lock").exists()  # reading creates nothing
    (run / ".lock").write_text("otherhost 42\n")
    assert not is_locked(run)
    assert (run / ".lock").read_text() == "otherhost 42\n"
    with point_lock(run):
        held = (run / ".lock").read_text()
        assert is_locked(run) and (run / ".lock").read_text() == held


def test_a_probe_of_the_lock_does_not_make_a_writer_give_up(tmp_path):
    """is_locked holds a shared lock for a moment: a writer taking the lock then was refused as
    'in use by another process' (1 in 30 attempts under a busy `detcon status`)."""
    import fcntl
    import os
    import threading

    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("")
    probe = os.open(run / ".lock", os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a probe, caught in the middle
    threading.Timer(0.05, os.close, [probe]).start()
    with point_lock(run):
        assert is_locked(run)


def test_a_lock_is_probed_as_nfs_allows_on_a_read_only_descriptor(tmp_path, monkeypatch):
    """On NFS Linux turns flock into a whole-file fcntl lock, for which an exclusive lock needs a
    descriptor open for writing: the read-only probe must ask for a shared one (an exclusive
    probe failed with EBADF, and every running or interrupted point read as broken)."""
    import fcntl
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("node1 123\n")
    monkeypatch.setattr(fcntl, "flock", fcntl.lockf)  # the NFS client's emulation
    assert not is_locked(run)  # a killed holder's lock file: nobody holds it
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.lockf(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
         str(run / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_locked(run)
    finally:
        holder.kill()
        holder.wait()
    assert not is_locked(run)


def test_tidy_table_has_one_row_per_run_backbone_metric(fake):
    path, runs, ids = fake
    tidy = scan_ablation(path, profile="cpu", runs_dir=runs).tidy
    assert list(tidy.columns) == [
        "ablation",
        "run_id",
        "state",
        "method",
        "masks.source",
        "seed",
        "backbone",
        "task",
        "metric",
        "value",
    ]
    expected = []
    for method, source, seed in [
        ("detcon_s", "grid", 0),
        ("detcon_b", "grid", 0),
        ("detcon_s", "grid", 1),
        ("detcon_b", "grid", 1),
    ]:
        ident = ("fake", ids[method, source, seed], "done", method, source, seed)
        train = {"steps": 3.0, "final_loss": 2.0 - seed / 10, "wall_s": 1.5, "images_per_s": 20.0}
        expected += [(*ident, "pretrained", "pretrain", k, train[k]) for k in TRAIN_KEYS]
        expected += [
            (*ident, "pretrained", "segmentation", "miou", miou(method, source, seed)),
            (*ident, "pretrained", "depth", "rmse", 0.5),
        ]
        if (method, seed) == ("detcon_b", 0):
            expected += [
                (*ident, "random", "segmentation", "miou", 0.2),
                (*ident, "random", "depth", "rmse", 0.9),
                (*ident, "supervised", "segmentation", "miou", 0.8),
                (*ident, "supervised", "depth", "rmse", 0.2),
            ]
    # The failed point finished pretraining: its train_summary rows are kept, marked failed;
    # the corrupt point's readable train_summary.json + eval.json are kept too.
    failed = ("fake", ids["detcon_s", "fh", 0], "failed", "detcon_s", "fh", 0)
    expected += [
        (*failed, "pretrained", "pretrain", k, v) for k, v in zip(TRAIN_KEYS, [2.0, 20.0, 3.0, 1.5])
    ]
    corrupt = ("fake", ids["detcon_b", "fh", 0], "failed", "detcon_b", "fh", 0)
    expected += [
        (*corrupt, "pretrained", "pretrain", k, v)
        for k, v in zip(TRAIN_KEYS, [2.0, 20.0, 3.0, 1.5])
    ]
    expected += [
        (*corrupt, "pretrained", "segmentation", "miou", miou("detcon_b", "fh", 0)),
        (*corrupt, "pretrained", "depth", "rmse", 0.5),
    ]
    running = ("fake", ids["detcon_s", "fh", 1], "failed", "detcon_s", "fh", 1)
    expected += [
        (*running, "pretrained", "pretrain", k, v)
        for k, v in zip(TRAIN_KEYS, [1.9, 20.0, 3.0, 1.5])
    ]

    def norm(rows):
        return sorted((*r[:-1], round(float(r[-1]), 9)) for r in rows)

    assert norm(tidy.itertuples(index=False)) == norm(expected)
    assert tidy["value"].dtype == float


def test_curves_skip_torn_lines(fake):
    path, runs, ids = fake
    curves = read_curves(runs / "fake" / ids["detcon_s", "grid", 0])
    assert curves["step"].tolist() == [0, 1, 2]
    assert curves["loss"].tolist() == [3.0, 2.5, 2.0]
    scan = scan_ablation(path, profile="cpu", runs_dir=runs)
    assert list(scan.curves.columns) == ["run_id", "seed", "step", "loss", "normalized_proj_std"]
    assert len(scan.curves) == 7 * 3  # every run directory has 3 complete lines


def test_bad_metric_values_make_the_run_failed_not_a_crash(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"segmentation": {"miou": "high"}}))
    rows, problem = read_run_metrics(tmp_path)
    assert rows == [] and "segmentation.miou='high' is not a number" in problem
    (tmp_path / "eval.json").write_text(json.dumps({"segmentation": 0.4}))
    assert "expected a mapping" in read_run_metrics(tmp_path)[1]
    (tmp_path / "eval.json").write_text("[1, 2]")
    assert "corrupt eval.json" in read_run_metrics(tmp_path)[1]
    assert read_run_metrics(tmp_path / "nowhere") == ([], None)
    (tmp_path / "eval.json").unlink()
    (tmp_path / "status.json").write_text('{"state": "do')
    assert read_run_metrics(tmp_path)[1].startswith("corrupt status.json")
    (tmp_path / "status.json").unlink()
    (tmp_path / "eval_supervised.json").write_text('{"segmentation": {"mi')
    assert read_run_metrics(tmp_path)[1].startswith("corrupt eval_supervised.json")


def test_the_encoder_record_of_eval_json_is_not_a_metric(tmp_path):
    record = {"step": 3, "planned_steps": 6, "finished": False}
    _write(tmp_path / "eval.json", {"segmentation": {"miou": 0.4}, "encoder": record})
    rows, problem = read_run_metrics(tmp_path)
    assert problem is None and [(r["task"], r["metric"]) for r in rows] == [
        ("segmentation", "miou")
    ]
    point = {"ablation": "a", "run_id": "r", "profile": "cpu"}
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert flatten_summary(point, None, evaluation) == point | {"eval.segmentation.miou": 0.4}


def test_summary_rows_parse_dotted_keys():
    # eval_random.* / eval_supervised.* in summary.json are the launcher's form of the floor
    # and the ceiling (backbone=random / supervised).
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        summary = {
            "ablation": "a",
            "run_id": "r",
            "profile": "cpu",
            "method": "byol",
            "pretrain.final_loss": 1.0,
            "pretrain.method": "byol",
            "eval.seg.voc.miou": 0.5,
            "eval_random.seg.voc.miou": 0.1,
            "eval_supervised.seg.voc.miou": 0.9,
        }
        (Path(d) / "summary.json").write_text(json.dumps(summary))
        # the summary already holds the ceiling: the file is not read a second time
        (Path(d) / "eval_supervised.json").write_text(json.dumps({"seg.voc": {"miou": 0.7}}))
        rows, problem = read_run_metrics(d)
    assert problem is None
    assert rows == [
        {"backbone": "pretrained", "task": "pretrain", "metric": "final_loss", "value": 1.0},
        {"backbone": "pretrained", "task": "seg.voc", "metric": "miou", "value": 0.5},
        {"backbone": "random", "task": "seg.voc", "metric": "miou", "value": 0.1},
        {"backbone": "supervised", "task": "seg.voc", "metric": "miou", "value": 0.9},
    ]


def test_use_summary_false_reads_the_eval_files_not_an_earlier_summary(tmp_path):
    # evaluate.ipynb re-run in a finished point: it shows what it just wrote, not the summary
    _write(tmp_path / "summary.json", {"ablation": "a", "run_id": "r", "eval.seg.miou": 0.1})
    _write(tmp_path / "eval.json", {"seg": {"miou": 0.6}})
    value = {True: 0.1, False: 0.6}
    for use in (True, False):
        rows, problem = read_run_metrics(tmp_path, use_summary=use)
        assert problem is None and [r["value"] for r in rows] == [value[use]]


def test_a_reference_probed_otherwise_than_eval_json_is_no_floor_of_it(tmp_path):
    # An earlier job's floor (another split) stayed in the directory and went into summary.json,
    # the export and the figures as this evaluation's floor.
    probe = {"profile": "cpu", "split": "val", "seed": 0, "data": "abc"}
    _write(tmp_path / "eval.json", {"seg": {"miou": 0.6}, "probe": probe})
    _write(
        tmp_path / "eval_random.json", {"seg": {"miou": 0.1}, "probe": probe | {"split": "test"}}
    )
    _write(tmp_path / "eval_supervised.json", {"seg": {"miou": 0.9}, "probe": probe})
    rows, problem = read_run_metrics(tmp_path)
    assert problem is None
    assert [(r["backbone"], r["value"]) for r in rows] == [("pretrained", 0.6), ("supervised", 0.9)]
    point = {"ablation": "a", "run_id": "r", "profile": "cpu"}
    assert summary_of(point, tmp_path, evaluated=True) == point | {
        "eval.seg.miou": 0.6,
        "eval_supervised.seg.miou": 0.9,
    }


def test_diverged_probes_name_backbone_task_and_message(tmp_path):
    _write(tmp_path / "eval.json", {"seg": {"miou": 0.6}, "depth": {"diverged": "loss nan"}})
    _write(tmp_path / "eval_random.json", {"linear": {"diverged": "loss inf"}})
    (tmp_path / "eval_supervised.json").write_text('{"seg": ')  # read_run_metrics reports it
    assert diverged_probes(tmp_path) == [
        "pretrained: depth diverged (loss nan)",
        "random: linear diverged (loss inf)",
    ]
    assert [r["task"] for r in read_run_metrics(tmp_path)[0]] == ["seg"]  # no metric rows
    assert diverged_probes(tmp_path / "nowhere") == []


def _status(rows):
    return pd.DataFrame(rows)


def test_layout_full_product_puts_the_larger_axis_on_x():
    st = _status(
        [{"method": m, "masks.source": s} for m in ("a", "b") for s in ("grid", "fh", "mcg")]
    )
    layout = choose_layout(st, ["method", "masks.source"])
    assert (layout.x, layout.hue) == ("masks.source", "method")
    assert layout.x_order == ("grid", "fh", "mcg") and layout.hue_order == ("a", "b")


def test_layout_ties_and_three_keys():
    st = _status([{"src": s, "px": p} for s in ("fh", "gt") for p in (64, 112)])
    assert choose_layout(st, ["src", "px"]).x == "px"  # tie: the last key (resolution)
    st = _status([{"m": m, "s": s, "g": g} for m in "ab" for s in "xy" for g in (1, 8)])
    layout = choose_layout(st, ["m", "s", "g"])
    assert (layout.x, layout.hue, layout.hue_order) == (
        "g",
        "m / s",
        ("a / x", "a / y", "b / x", "b / y"),
    )


def test_layout_orders_whole_floats_as_the_rows_are_labelled():
    # A column of 2.4, 4.8, 7.2 and 24 epochs reads back from CSV as floats; the order said
    # "24.0" while the rows said "24", and the figure dropped the 24-epoch points.
    st = _status([{"m": m, "e": e} for m in "ab" for e in (2.4, 4.8, 7.2, 24.0)])
    layout = choose_layout(st, ["m", "e"])
    assert layout.x_order == ("2.4", "4.8", "7.2", "24")
    assert set(label_rows(st, layout)["e"]) == set(layout.x_order)


def test_layout_union_arms_drop_determined_keys_and_combine_the_rest():
    st = _status(
        [
            {"method": "detcon_b", "masks.source": "grid", "k": 16},
            {"method": "detcon_b", "masks.source": "fh", "k": 16},
            {"method": "byol", "masks.source": "image", "k": 1},
        ]
    )
    layout = choose_layout(st, ["method", "masks.source", "k"])
    assert (layout.x, layout.hue) == ("method / masks.source", None)
    assert layout.x_order == ("detcon_b / grid", "detcon_b / fh", "byol / image")
    labelled = label_rows(st, layout)
    assert labelled["method / masks.source"].tolist() == list(layout.x_order)
    # Constant parameters are not plotted; nothing varying -> one category per run.
    assert choose_layout(_status([{"run_id": "r", "m": "a"}]), ["m"]).x == "run_id"


def test_mask_quality_csv(tmp_path):
    assert load_mask_quality(tmp_path / "none.csv") is None
    (tmp_path / "q.csv").write_text("source,mean_best_iou,coverage_at_50\ngrid,0.3,0.1\n")
    assert load_mask_quality(tmp_path / "q.csv")["mean_best_iou"].tolist() == [0.3]
    (tmp_path / "q.csv").write_text("source,mean_best_iou\ngrid,0.3\n")
    with pytest.raises(ValueError, match="coverage_at_50"):
        load_mask_quality(tmp_path / "q.csv")


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_scanning_writes_nothing_into_the_run_directories(fake):
    """Reading a point that says running (status.json) without a .lock file must not create one:
    results are also read from exported, committed copies (detcon export) and read-only mounts."""
    path, runs, ids = fake
    before = _listing(runs)
    scan = scan_ablation(path, profile="cpu", runs_dir=runs)
    assert scan.status.set_index("run_id").at[ids["detcon_s", "fh", 1], "state"] == "failed"
    assert _listing(runs) == before


def test_pending_and_corrupt_status(fake):
    path, runs, ids = fake
    pending = runs / "fake" / ids["detcon_b", "fh", 1]
    pending.mkdir()
    (pending / "status.json").write_text(json.dumps({"state": "pending"}))
    done = runs / "fake" / ids["detcon_s", "grid", 0]
    (done / "status.json").write_text("{")  # summary.json alone would say done
    st = scan_ablation(path, profile="cpu", runs_dir=runs).status.set_index("run_id")
    assert st.at[ids["detcon_b", "fh", 1], "state"] == "pending"
    assert st.at[ids["detcon_s", "grid", 0], "state"] == "failed"
    assert st.at[ids["detcon_s", "grid", 0], "error"].startswith("corrupt status.json")


def test_reading_results_does_not_import_the_launcher():
    """``detcon report`` reads run directories: the point states come from the run-directory
    code (detcon.runs), not from the launcher and what it pulls in (submitit, the executors)."""
    code = (
        "import sys, detcon.results; "
        "print(sorted(m for m in sys.modules if m.split('.')[:2] == ['detcon', 'launch']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == "[]", f"detcon.results imports the launcher: {proc.stdout}"


def test_reading_results_does_not_import_torch():
    """``detcon report``, ``detcon figures`` and ``detcon export`` read JSON and draw figures:
    importing torch would cost them seconds each (``detcon.atomic`` imports it only to save)."""
    code = "import sys, detcon.report, detcon.export; print('torch' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == "False"


def test_a_metrics_line_with_a_step_not_a_whole_number_does_not_stop_the_scan(fake):
    # {"step": null} in one point's metrics.jsonl made status, report and export of the whole
    # ablation fail with a TypeError; {"step": "x"} with a ValueError naming no file.
    path, runs, ids = fake
    run = runs / "fake" / ids["detcon_s", "fh", 1]  # the running point
    good = '{"step": 4, "loss": 2.5}\n'
    (run / "metrics.jsonl").write_text(good + '{"step": null}\n{"step": "x", "loss": "y"}\n')
    assert len(scan_ablation(path, profile="cpu", runs_dir=runs).status) == 8
    states = {p.run_id: p for p in ablation_status(path, profile="cpu", runs_dir=runs)}
    point = states[ids["detcon_s", "fh", 1]]
    assert (point.steps, point.loss) == (5, 2.5)
    (run / "metrics.jsonl").write_text('{"step": 4, "loss": "nan?"}\n')
    states = {p.run_id: p for p in ablation_status(path, profile="cpu", runs_dir=runs)}
    assert (states[point.run_id].steps, states[point.run_id].loss) == (5, None)


def test_a_whole_float_parameter_is_labelled_without_its_point_zero():
    # epochs 2.4, 4.8, 7.2 and 24 read back from CSV as floats: the axis said "24.0"
    from detcon.results import join_labels

    table = pd.DataFrame({"optim.epochs": [2.4, 24.0], "method": ["byol", "simclr"]})
    assert join_labels(table, ["optim.epochs", "method"]) == ["2.4 / byol", "24 / simclr"]


def test_an_eval_file_that_is_no_mapping_is_a_problem_not_a_crash(tmp_path):
    _write(tmp_path / "eval.json", [1, 2])
    _write(tmp_path / "eval_random.json", {"seg": {"miou": 0.1}, "probe": {"split": "val"}})
    rows, problem = read_run_metrics(tmp_path, use_summary=False)
    assert problem is not None and problem.startswith("corrupt eval.json")


def test_the_seed_summary_is_the_mean_and_the_sample_std_over_seeds():
    # ddof 1, as documented (ddof 0 passed every test: they read the column names only)
    tidy = pd.DataFrame(
        {
            "method": ["byol", "byol", "byol", "simclr"],
            "backbone": ["pretrained"] * 4,
            "task": ["segmentation"] * 4,
            "metric": ["miou"] * 4,
            "seed": [0, 1, 2, 0],
            "state": ["done", "done", "failed", "done"],
            "value": [0.0, 1.0, 5.0, 0.5],
        }
    )
    scan = AblationScan(None, "cpu", Path("."), ("method",), pd.DataFrame(), tidy, pd.DataFrame())
    rows = scan.seed_summary().set_index("method")
    assert rows.loc["byol", "mean"] == pytest.approx(0.5)  # the failed seed left out
    assert rows.loc["byol", "std"] == pytest.approx(2**-0.5)
    assert rows.loc["byol", "seeds"] == 2
    assert pd.isna(rows.loc["simclr", "std"]) and rows.loc["simclr", "seeds"] == 1
