"""The launcher (detcon.launch, detcon.runs): validation before anything runs, the local and
debug executors, skipping and resuming, failure isolation and ``detcon status``.

Most tests replace the papermill execution (``detcon.launch.point._execute``) with a fake that
writes what the notebooks would write, so they exercise the launcher's bookkeeping in
milliseconds; one ``slow`` test runs the real notebooks end to end on a tiny grid.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest

import detcon.launch as launch
from detcon.atomic import write_json
from detcon.cli import main
from detcon.config import ConfigError, to_dict
from detcon.grid import resolve_config
from detcon.launch import executors as launch_executors
from detcon.launch import point as launch_point
from detcon.runs import flatten_summary, live_slurm_jobs, point_lock, point_state, write_status

REPO = Path(__file__).resolve().parent.parent
ABLATIONS = sorted((REPO / "ablations").glob("*.yaml"))

# A grid small enough to train for real in seconds (used by the slow end-to-end test).
TINY_BASE = """
base:
  data.num_images: 8
  data.scene_size: 32
  augment.crop_size: 32
  optim.batch_size: 4
  model.small_width: 8
  model.head_hidden: 32
  model.head_out: 16
  masks.grid_size: 2
  train.max_steps: 2
  train.checkpoint_every: 1
  train.threads: 1
"""


def write_ablation(tmp_path: Path, text: str, name: str = "abl") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ndescription: test grid\n" + textwrap.dedent(text))
    return path


class FakeNotebooks:
    """Stands in for papermill: writes the executed notebook and the files the real notebooks
    write. A point with ``masks.grid_size == 3`` fails in its pretrain notebook; with
    ``fail_eval`` set, every evaluate notebook fails. The evaluate notebook writes the floor and
    the ceiling when its parameters ask for them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.trained = 0
        self.fail_eval = False
        self.wrong_config = False

    def __call__(self, spec_nb, out_nb, parameters, cwd, kernel):
        run_dir = Path(parameters["run_dir"])
        assert Path(cwd) == run_dir and kernel in ("detcon-venv", "python3")
        self.calls.append((run_dir.name, Path(spec_nb).stem))
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hi')")])
        nbformat.write(nb, str(out_nb))
        if Path(spec_nb).stem == "evaluate":
            if self.fail_eval:
                raise RuntimeError("evaluation exploded")
            write_json(run_dir / "eval.json", {"linear": {"top1": 0.5}})
            if parameters.get("random_baseline"):
                write_json(run_dir / "eval_random.json", {"linear": {"top1": 0.1}})
            if parameters.get("supervised_ceiling"):
                write_json(run_dir / "eval_supervised.json", {"linear": {"top1": 0.9}})
            return
        overrides = dict(parameters["overrides"])
        if overrides.get("masks.grid_size") == 3:
            raise ValueError("grid of 3 is cursed\nsecond line")
        if self.wrong_config == "none":  # a notebook that trains nothing
            return
        if self.wrong_config:
            overrides["optim.epochs"] = 99
        write_json(
            run_dir / "config.json", to_dict(resolve_config(overrides, parameters["profile"]))
        )
        (run_dir / "metrics.jsonl").write_text(
            '{"step": 0, "loss": 5.0}\n{"step": 1, "loss": 4.5}\n'
        )
        self.trained += 1  # each training gives its own wall_s: tells copies from retraining
        (run_dir / "checkpoint.pt").write_bytes(b"checkpoint %d" % self.trained)
        (run_dir / "backbone.pt").write_bytes(b"weights %d" % self.trained)
        write_json(
            run_dir / "train_summary.json",
            {"steps": 2, "final_loss": 4.5, "wall_s": float(self.trained)},
        )


@pytest.fixture
def fake(monkeypatch) -> FakeNotebooks:
    fake = FakeNotebooks()
    monkeypatch.setattr(launch_point, "_execute", fake)
    return fake


def grid3(tmp_path: Path) -> Path:
    return write_ablation(
        tmp_path,
        """
        grid:
          product: {masks.grid_size: [2, 3, 4]}
        evaluate: [linear]
        """,
    )


def run_ids(path: Path, profile: str = "cpu") -> list[str]:
    return [s.run_id for s in launch.prepare(path, profile=profile, check_data=False).specs]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_dry_run_lists_every_point_and_writes_nothing(path, tmp_path, capsys):
    runs = tmp_path / "runs"
    for profile in ("cpu", "paper"):  # paper: no dataset needed for a dry run
        assert (
            main(["run", str(path), "--profile", profile, "--dry-run", "--runs-dir", str(runs)])
            == 0
        )
        out = capsys.readouterr().out
        ids = run_ids(path, profile)
        assert f"{len(ids)} points" in out and all(i in out for i in ids)
        assert "dry run: nothing was written or submitted" in out
    assert not runs.exists()


def test_real_paper_run_fails_early_naming_the_missing_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["run", str(REPO / "ablations" / "mask_type.yaml"), "--profile", "paper"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "needs data.root but it is 'data/coco'" in err and "does not exist" in err
    assert not (tmp_path / "runs").exists()


def _mask_stores(path: Path, profile: str) -> None:
    """Make the mask store each point of the ablation file names (relative to the working
    directory), for its source and parameters, from a few tiny images: the launcher checks the
    store's manifest and shards, not the dataset."""
    import numpy as np

    from detcon.masks.store import precompute_store

    images = [{"image": np.full((3, 8, 8), i, dtype=np.uint8)} for i in range(2)]
    for spec in launch.prepare(path, profile=profile, check_data=False).specs:
        masks = spec.point.config.masks
        precompute_store(images, masks, masks.store, shard_size=2, progress=False)


def test_relative_data_paths_become_absolute_and_eval_data_is_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("imagenet/train", "VOCdevkit/VOC2012", "cityscapes"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    path = write_ablation(
        tmp_path, "base: {masks.store: stores/fh}\ngrid: {point: {}}\nevaluate: [segmentation]\n"
    )
    _mask_stores(path, "paper")
    plan = launch.prepare(path, profile="paper")  # paper.yaml: data.root data/imagenet/train
    (spec,) = plan.specs
    assert spec.parameters["overrides"]["data.root"] == str(tmp_path / "data/imagenet/train")
    assert spec.parameters["overrides"]["masks.store"] == str(tmp_path / "stores/fh")
    assert spec.eval_parameters["data_root"] == str(tmp_path / "data")
    assert spec.point.config.data.root == "data/imagenet/train"  # the run id's config
    with pytest.raises(FileNotFoundError, match=r"reads .* from --data-root '.*nowhere'"):
        launch.prepare(path, profile="paper", data_root=tmp_path / "nowhere")
    # a data root that exists but lacks a dataset the tasks read: found before anything trains
    # (it was found when the first point's evaluation started, after its pretraining)
    (tmp_path / "data" / "cityscapes").rmdir()
    with pytest.raises(FileNotFoundError, match=r"which lacks cityscapes \(cityscapes\);"):
        launch.prepare(path, profile="paper")


def test_paper_points_on_real_data_need_precomputed_fh_and_mcg_masks(tmp_path, monkeypatch, capsys):
    # FH (~0.14 s per ImageNet image) and MCG computed in every loader worker, every epoch:
    # refused before anything runs, with the command that precomputes them.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "coco").mkdir(parents=True)
    coco = "profiles: {paper: {overrides: {data.dataset: coco, data.root: data/coco}}}\n"
    path = write_ablation(tmp_path, "grid: {product: {masks.source: [grid, fh, mcg]}}\n" + coco)
    grid_id, fh_id, mcg_id = run_ids(path, "paper")
    assert main(["run", str(path), "--profile", "paper"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "2 points compute them on the fly (masks.store is empty)" in err
    fh = (
        "`detcon masks precompute --profile paper --source fh --set data.dataset=coco --set "
        "data.root=data/coco --set masks.fh_scale=1000.0 --set masks.fh_sigma=0.8 --set "
        f"masks.fh_min_size=1000 --out stores/coco-fh` (point {fh_id})"
    )
    mcg = (
        "`detcon masks precompute --profile paper --source mcg --set data.dataset=coco --set "
        f"data.root=data/coco --set masks.mcg_num_proposals=16 --out stores/coco-mcg` (point "
        f"{mcg_id})"
    )
    assert fh in err and mcg in err and grid_id not in err
    assert not (tmp_path / "runs").exists()
    # A dry run needs no data but says what the launch will refuse, the cpu profile computes its
    # small scenes' masks on the fly, and points with stores pass.
    launch.prepare(path, profile="paper", check_data=False)
    assert main(["run", str(path), "--profile", "paper", "--dry-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert fh_id in out and "dry run: the launch would refuse this:" in out and fh in out
    launch.prepare(path, profile="cpu")
    stored = write_ablation(
        tmp_path,
        "grid: {zip: {masks.source: [fh, mcg], masks.store: [stores/coco-fh, stores/coco-mcg]}}\n"
        + coco,
        "stored",
    )
    _mask_stores(stored, "paper")
    assert len(launch.prepare(stored, profile="paper").specs) == 2


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        # the notebook trained, then the check of its config.json refused the run
        ("point: {masks.source: grid, notebook.max_steps: 1}", r"use the config key train\.max"),
        # each point's values, not the first point's only
        ("product: {notebook.num_examples: [1, 2.5]}", r"num_examples=2\.5 has type float"),
    ],
)
def test_bad_notebook_grid_keys_are_rejected_before_anything_runs(tmp_path, grid, message):
    path = write_ablation(tmp_path, f"grid: {{{grid}}}\n")
    with pytest.raises(ValueError, match=message):
        launch.prepare(path)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "parameters: {pretrain: {num_exampels: 2}}",
            r"has no parameter 'num_exampels' \(did you mean 'num_examples'\?\); its "
            r"parameters: profile \(str\), overrides \(dict\)",
        ),
        (
            "evaluate: [linear]\nparameters: {evaluate: {quick: 1}}",
            r"quick=1 has type int, expected bool",
        ),
        ("parameters: {evaluate: {quick: true}}", r"'evaluate:' lists no task"),
        (
            "parameters: {pretrain: {num_examples: '2'}}",
            r"num_examples='2' has type str, expected int",
        ),
        ("parameters: {pretrain: {overrides: {}}}", r"set by the launcher"),
        ("parameters: {pretrain: {max_steps: 2}}", r"base: \{train\.max_steps: N\}"),
        (
            "parameters: {pretrain: {official_checkpoint: w.npy}}",
            r"official_checkpoint would change what is trained",
        ),
        ("evaluate: [segmentaton]", r"unknown task 'segmentaton' \(did you mean 'segmentation'"),
        ("cluster: nowhere", r"cluster profile 'nowhere' not found"),
    ],
)
def test_bad_inputs_are_rejected_before_anything_runs(
    tmp_path, capsys, monkeypatch, extra, message
):
    monkeypatch.setattr(launch_executors, "run_point", lambda spec: pytest.fail("a point ran"))
    path = write_ablation(tmp_path, f"grid: {{product: {{masks.source: [grid]}}}}\n{extra}\n")
    rc = main(["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) <= 8  # one wrapped paragraph
    import re

    assert re.search(message, " ".join(err.split())), err
    assert not (tmp_path / "runs").exists()


def test_notebook_without_parameters_cell_is_rejected(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("profile = 'cpu'")])
    nbformat.write(nb, str(tmp_path / "bare.ipynb"))
    path = write_ablation(tmp_path, "notebook: bare.ipynb\ngrid: {point: {}}\n")
    with pytest.raises(ValueError, match=r"bare\.ipynb has no cell tagged 'parameters'"):
        launch.prepare(path)
    missing = write_ablation(tmp_path, "notebook: nothere\ngrid: {point: {}}\n", "missing")
    with pytest.raises(FileNotFoundError, match=r"nothere\.ipynb"):
        launch.prepare(missing)


def test_typo_in_ablation_exits_2_with_one_paragraph(tmp_path, capsys):
    path = write_ablation(tmp_path, "grid: {product: {masks.source: [fh]}}\nseed: [1]\n")
    assert main(["run", str(path), "--dry-run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown key 'seed'" in err and "did you mean 'seeds'" in err


def test_unwritable_runs_dir_is_a_clear_error(tmp_path, fake, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc = main(["run", str(grid3(tmp_path)), "--runs-dir", str(blocker / "runs")])
    assert rc == 2 and "is not writable" in capsys.readouterr().err
    assert fake.calls == []


def test_only_filters_points_and_rejects_no_match(tmp_path):
    path = grid3(tmp_path)
    plan = launch.prepare(path, only="grid3")
    assert [s.point.params["masks.grid_size"] for s in plan.specs] == [3]
    with pytest.raises(ValueError, match="matches no run id"):
        launch.prepare(path, only="nothing-like-this")


def test_status_with_an_only_that_matches_nothing_says_so(tmp_path, capsys):
    # `detcon status --only zzz` printed "0 points:" and exited 0; `detcon run` refused it
    path = grid3(tmp_path)
    rc = main(["status", str(path), "--runs-dir", str(tmp_path / "runs"), "--only", "zzz"])
    assert rc == 2 and "--only 'zzz' matches no run id" in capsys.readouterr().err
    assert main(["status", str(path), "--runs-dir", str(tmp_path / "runs"), "--only", "grid3"]) == 0
    assert "the runs folder" in capsys.readouterr().err  # a typo read as "nothing started"
    (tmp_path / "afile").write_text(
        ""
    )  # every point read as broken: "status.json: Not a directory"
    assert main(["status", str(path), "--runs-dir", str(tmp_path / "afile")]) == 2
    assert "--runs-dir" in capsys.readouterr().err


def test_slurm_executor_needs_a_cluster_profile_and_sbatch(tmp_path, monkeypatch):
    path = grid3(tmp_path)
    with pytest.raises(ValueError, match="--executor slurm needs a cluster profile"):
        launch.prepare(path, executor="slurm")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="needs SLURM's sbatch"):
        launch.run_ablation(
            path, executor="slurm", cluster="local", runs_dir=tmp_path / "r", echo=lambda line: None
        )


def test_a_cluster_profile_whose_processes_do_not_split_the_batch_is_refused(tmp_path):
    # found only by every rank of the job, after it waited in the queue for its nodes
    path = grid3(tmp_path)
    (tmp_path / "three.yaml").write_text("partition: p\ntasks_per_node: 3\n")
    with pytest.raises(ConfigError, match=r"batch_size=32 is not divisible by the cluster "):
        launch.prepare(path, executor="slurm", cluster=str(tmp_path / "three.yaml"))
    (tmp_path / "two.yaml").write_text("partition: p\nnodes: 2\ntasks_per_node: 2\n")
    assert len(launch.prepare(path, executor="slurm", cluster=str(tmp_path / "two.yaml")).specs)
    # each process's 8 images of 24 do not tile groups of 12
    from detcon.config import load_pretrain_config
    from detcon.launch.plan import ClusterProfile, _check_processes

    cfg = load_pretrain_config(
        {"optim": {"batch_size": 24}, "loss": {"negative_groups": 2}}, profile="cpu"
    )
    with pytest.raises(ConfigError, match="groups of 12 images, which the 8 images"):
        _check_processes(cfg, ClusterProfile(tasks_per_node=3), "here")
    _check_processes(cfg, ClusterProfile(tasks_per_node=6), "here")  # 4 images tile 12


def _fake_slurm(bin_dir: Path, squeue: str) -> None:
    """``sbatch`` that must not be called and an ``squeue`` script body, on a PATH of their own."""
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("sbatch", "echo sbatch called >&2; exit 1"), ("squeue", squeue)):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)


def _launched_grid3(tmp_path: Path, monkeypatch) -> tuple[Path, list[str], Path, dict]:
    """grid3's points recorded as SLURM jobs 77_0..77_2 of an earlier launch, with PATH set for
    :func:`_fake_slurm`'s commands: (ablation, run ids, runs folder, run id -> job id)."""
    path = grid3(tmp_path)
    ids = run_ids(path)
    runs = tmp_path / "r"
    jobs = {run_id: f"77_{i}" for i, run_id in enumerate(ids)}
    record = runs / "abl" / ".submitit" / "20261207-120000-1" / "launch.json"
    write_json(record, {"ablation": "abl", "profile": "cpu", "jobs": jobs})
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    return path, ids, runs, jobs


def test_a_point_slurm_still_queues_is_not_submitted_again(tmp_path, monkeypatch):
    # Rerunning `detcon run --executor slurm` to retry failures while earlier jobs wait in the
    # queue submitted those points a second time (their files said "not started").
    path, ids, runs, _ = _launched_grid3(tmp_path, monkeypatch)
    _fake_slurm(
        tmp_path / "bin",
        'echo "77_0 PENDING"; echo "77_1 REQUEUED"; echo "77_2 RUNNING"; echo "78_0 PENDING"',
    )
    lines: list[str] = []
    result = launch.run_ablation(
        path, executor="slurm", cluster="local", runs_dir=runs, echo=lines.append
    )
    assert sorted(result.busy) == sorted(ids) and not result.jobs
    assert f"  {ids[0]}: SLURM job 77_0 is PENDING, skipped" in lines
    assert f"  {ids[1]}: SLURM job 77_1 is REQUEUED, skipped" in lines
    assert live_slurm_jobs({"77_0", "79_0"}) == {"77_0": "PENDING"}
    _fake_slurm(tmp_path / "bin", "echo 'squeue: error: Invalid user' >&2; exit 1")
    with pytest.raises(ChildProcessError, match="Invalid user.*would be submitted again"):
        launch.run_ablation(path, executor="slurm", cluster="local", runs_dir=runs)


def test_jobs_slurm_refuses_are_one_paragraph_naming_the_cluster_profile(
    tmp_path, monkeypatch, capsys
):
    # sbatch's refusal (a partition or account the cluster does not have) was a traceback.
    path, _, runs, _ = _launched_grid3(tmp_path, monkeypatch)
    _fake_slurm(tmp_path / "bin", "exit 0")  # nothing queued: every point is submitted
    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.write_text(
        "#!/bin/sh\necho 'sbatch: error: Invalid partition name specified' >&2\nexit 1\n"
    )
    argv = ["run", str(path), "--executor", "slurm", "--cluster", "local", "--runs-dir", str(runs)]
    assert main(argv) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "SLURM refused the jobs of cluster profile 'local'" in err
    assert "Invalid partition name specified" in err and "Traceback" not in err


def test_status_says_when_slurm_forgot_a_pending_point(tmp_path, monkeypatch):
    # A job that died before its point wrote a file (an import error on the node, scancel)
    # read "pending" for ever; `detcon run` would submit it again, so status says so.
    path, ids, runs, jobs = _launched_grid3(tmp_path, monkeypatch)
    _fake_slurm(tmp_path / "bin", 'echo "77_0 PENDING"; echo "77_2 COMPLETED"')
    states = {s.run_id: s for s in launch.ablation_status(path, runs_dir=runs)}
    assert states[ids[0]].state == "pending" and states[ids[0]].error is None
    for lost in (ids[1], ids[2]):
        assert states[lost].state == "not started" and states[lost].job_id == jobs[lost]
        assert f"SLURM job {jobs[lost]} left the queue without starting" in states[lost].error
    _fake_slurm(tmp_path / "bin", "exit 1")  # no answer: the files' word stands
    assert {s.state for s in launch.ablation_status(path, runs_dir=runs)} == {"pending"}


def test_cluster_profiles_are_strict_and_map_to_submitit(tmp_path, monkeypatch):
    local = launch.load_cluster_profile("local")
    # the README's copy named as a file: found in the profiles' folder from any directory
    monkeypatch.chdir(tmp_path)
    assert launch.load_cluster_profile("local.yaml") == local
    params = local.submitit_parameters()
    assert params["slurm_partition"] == "local" and params["slurm_array_parallelism"] == 2
    assert "gpus_per_node" not in params  # a CPU job asks for no GPU
    gpu = launch.load_cluster_profile("gpu-32").submitit_parameters()
    assert gpu["gpus_per_node"] == 8 and gpu["tasks_per_node"] == 8
    # a constructor argument: update_parameters() refuses it
    assert launch.load_cluster_profile("gpu-32").executor_arguments() == {
        "slurm_max_num_timeout": 20
    }
    (tmp_path / "bad.yaml").write_text("partition: x\ngpus: 2\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'gpus'"):
        launch.load_cluster_profile("bad", tmp_path)
    (tmp_path / "mine.yaml").write_text("partition: p\ntimeout_min: 0\n")
    with pytest.raises(ConfigError, match=r"timeout_min=0 is out of range"):
        launch.load_cluster_profile(str(tmp_path / "mine.yaml"))  # a path works too


# --------------------------------------------------------------------------- running


def test_local_run_isolates_a_failing_point_and_reruns_skip_done_ones(tmp_path, fake, capsys):
    path = grid3(tmp_path)
    runs = tmp_path / "runs"
    rc = main(["run", str(path), "--runs-dir", str(runs)])
    captured = capsys.readouterr()
    assert rc == 1
    ok2, bad, ok4 = run_ids(path)
    assert f"[1/3] {ok2} done" in captured.out and f"[3/3] {ok4} done" in captured.out
    assert f"[2/3] {bad} FAILED: {bad}: ValueError: grid of 3 is cursed" in captured.out
    assert "1 of 3 points failed" in captured.err
    root = runs / "abl"
    for rid in (ok2, ok4):
        d = root / rid
        for name in ("point.json", "env.json", "summary.json", "pretrain.html", "evaluate.html"):
            assert (d / name).exists(), name
        assert json.loads((d / "status.json").read_text())["state"] == "done"
    summary = json.loads((root / ok2 / "summary.json").read_text())
    assert summary["masks.grid_size"] == 2 and summary["seed"] == 0
    assert summary["pretrain.final_loss"] == 4.5 and summary["eval.linear.top1"] == 0.5
    point = json.loads((root / ok2 / "point.json").read_text())
    assert point["run_id"] == ok2 and point["parameters"]["progress"] is False
    env = json.loads((root / ok2 / "env.json").read_text())
    assert env["executor"] == "local" and "sha" in env["git"] and "torch" in env["packages"]
    assert env["git"]["sha"] or not (REPO / ".git").exists()  # a zip or `git archive` has none
    if env["device"]["type"] == "cpu":  # which CPU and kernels: results drift between CPUs
        assert isinstance(env["device"]["capability"], str)  # e.g. AVX2, AVX512
        assert set(env["device"]) >= {"count", "torch_threads", "name"}
    status = json.loads((root / bad / "status.json").read_text())
    assert status["state"] == "failed" and status["error"].startswith("ValueError: grid of 3")
    assert (root / bad / "pretrain.html").exists() and not (root / bad / "summary.json").exists()

    # status: every point, the failure's first line and its rendered notebook
    assert main(["status", str(path), "--runs-dir", str(runs)]) == 0
    table = capsys.readouterr().out
    assert "3 points: 2 done, 1 failed" in table
    line = next(x for x in table.splitlines() if x.startswith(bad))
    assert "failed" in line and "ValueError: grid of 3 is cursed" in line
    assert "second line" not in line and "pretrain.html" in line

    # a second run skips the finished points and retries the failed one only
    fake.calls.clear()
    before = (root / ok2 / "summary.json").stat().st_mtime_ns
    assert main(["run", str(path), "--runs-dir", str(runs)]) == 1
    assert "3 points, 2 done, 0 running elsewhere, 1 to run" in capsys.readouterr().out
    assert fake.calls == [(bad, "pretrain")]
    assert (root / ok2 / "summary.json").stat().st_mtime_ns == before


def test_a_requeued_point_skips_finished_pretraining(tmp_path, fake):
    path = write_ablation(tmp_path, "grid: {point: {}}\nevaluate: [linear]\n")
    fake.fail_eval = True
    result = launch.run_ablation(path, runs_dir=tmp_path / "runs", echo=lambda line: None)
    (rid,) = result.failed
    status = json.loads((tmp_path / "runs" / "abl" / rid / "status.json").read_text())
    assert (
        status["stages"] == ["pretrain"] and status["error"] == "RuntimeError: evaluation exploded"
    )
    assert status["notebook"] == "evaluate.html"
    fake.fail_eval, fake.calls = False, []
    result = launch.run_ablation(path, runs_dir=tmp_path / "runs", echo=lambda line: None)
    assert result.ran == [rid] and fake.calls == [(rid, "evaluate")]


def test_a_point_removes_the_temp_files_a_killed_job_left(tmp_path, fake):
    path = write_ablation(tmp_path, "grid: {point: {}}\n")
    (rid,) = run_ids(path)
    run_dir = tmp_path / "runs" / "abl" / rid
    run_dir.mkdir(parents=True)
    stale = [run_dir / ".status.json.abcdefgh.tmp", run_dir / ".pretrain.html.k2x_9q0a.tmp"]
    for p in stale:
        p.write_text("{")
    result = launch.run_ablation(path, runs_dir=tmp_path / "runs", echo=lambda line: None)
    assert result.ran == [rid] and not any(p.exists() for p in stale)


def test_the_floor_and_the_ceiling_reach_summary_json(tmp_path, fake):
    """The evaluate notebook's reference parameters are accepted in an ablation file (checked
    against the notebook) and what they write is carried into summary.json."""
    path = write_ablation(
        tmp_path,
        "grid: {point: {}}\nevaluate: [linear]\n"
        "parameters: {evaluate: {random_baseline: true, supervised_ceiling: true}}\n",
    )
    (spec,) = launch.prepare(path, check_data=False).specs
    assert spec.eval_parameters["supervised_ceiling"] is True
    result = launch.run_ablation(path, runs_dir=tmp_path / "runs", echo=lambda line: None)
    (rid,) = result.ran
    summary = json.loads((tmp_path / "runs" / "abl" / rid / "summary.json").read_text())
    assert summary["eval.linear.top1"] == 0.5
    assert summary["eval_random.linear.top1"] == 0.1
    assert summary["eval_supervised.linear.top1"] == 0.9


@pytest.mark.parametrize(
    ("wrong", "error"),
    [(True, "differs from the point's"), ("none", "finished without config.json")],
)
def test_a_notebook_that_trains_another_config_fails_the_point(tmp_path, fake, wrong, error):
    fake.wrong_config = wrong
    path = write_ablation(tmp_path, "grid: {point: {}}\n")
    result = launch.run_ablation(path, runs_dir=tmp_path / "runs", echo=lambda line: None)
    (rid,) = result.failed
    status = json.loads((tmp_path / "runs" / "abl" / rid / "status.json").read_text())
    assert error in status["error"]


def test_a_locked_point_is_reported_running_elsewhere(tmp_path, fake):
    path = grid3(tmp_path)
    ids = run_ids(path)
    run_dir = tmp_path / "runs" / "abl" / ids[0]
    run_dir.mkdir(parents=True)
    lines: list[str] = []
    with point_lock(run_dir):
        result = launch.run_ablation(
            path, runs_dir=tmp_path / "runs", only=ids[0], echo=lines.append
        )
        assert result.busy == [ids[0]] and fake.calls == []
        assert any("running elsewhere" in x for x in lines)
        write_status(run_dir, "running", job_id="123_0")
        assert point_state(run_dir, ids[0]).state == "running"
        result = launch.run_ablation(
            path, runs_dir=tmp_path / "runs", only=ids[0], echo=lines.append
        )
        assert result.busy == [ids[0]] and fake.calls == []
    # the holder died: the lock is free but the status still says running
    state = point_state(run_dir, ids[0])
    assert state.state == "interrupted" and state.job_id == "123_0"


def test_a_corrupt_status_or_summary_is_reported_and_rerun(tmp_path, fake, capsys):
    path = grid3(tmp_path)
    runs = tmp_path / "runs"
    launch.run_ablation(path, runs_dir=runs, echo=lambda line: None)
    ok2, bad, ok4 = run_ids(path)
    root = runs / "abl"
    (root / ok2 / "summary.json").write_text('{"ablation": "abl", "run_i')  # torn
    write_json(root / ok4 / "status.json", {"stages": ["pretrain", "evaluate"]})  # no state
    assert main(["status", str(path), "--runs-dir", str(runs)]) == 0
    table = capsys.readouterr().out
    assert "3 points: 2 corrupt, 1 failed" in table
    line = next(x for x in table.splitlines() if x.startswith(ok2))
    assert "corrupt" in line and "summary.json is not valid JSON" in line
    line = next(x for x in table.splitlines() if x.startswith(ok4))
    assert "corrupt" in line and "status.json: state=None" in line

    fake.calls.clear()
    result = launch.run_ablation(path, runs_dir=runs, echo=lambda line: None)
    assert sorted(result.ran) == sorted([ok2, ok4]) and result.failed == [bad]
    # Pretraining had finished: ok2's status says so; ok4's status is unreadable, but its
    # train_summary.json beside the point's own config.json does (rerunning the notebook would
    # resume a finished checkpoint and overwrite train_summary.json with an empty segment's).
    assert sorted(fake.calls) == sorted([(ok2, "evaluate"), (bad, "pretrain"), (ok4, "evaluate")])
    assert {point_state(root / r, r).state for r in (ok2, ok4)} == {"done"}

    # A summary.json that parses but is not a point's summary is corrupt too.
    write_json(root / ok2 / "summary.json", {"ablation": "abl", "run_id": ok4, "profile": "cpu"})
    assert f"is the summary of '{ok4}', not of '{ok2}'" in point_state(root / ok2, ok2).error
    write_json(root / ok2 / "summary.json", {"ablation": "abl"})
    state = point_state(root / ok2, ok2)
    assert state.state == "corrupt" and "lacks run_id, profile" in state.error

    # The corrupt-summary error says "delete it to start the point over": the point, its
    # status done, then runs again (it stayed done without a summary, never rewritten).
    (root / ok2 / "summary.json").unlink()
    state = point_state(root / ok2, ok2)
    assert state.state == "corrupt" and "summary.json is missing while status.json" in state.error
    fake.calls.clear()
    assert launch.run_ablation(path, runs_dir=runs, only=ok2, echo=lambda line: None).ran == [ok2]
    assert fake.calls == [(ok2, "evaluate")] and point_state(root / ok2, ok2).state == "done"


def test_a_finished_point_whose_evaluation_changed_is_evaluated_again(tmp_path, fake):
    """A finished grid given another task or evaluate parameter: `detcon run` said "1 done, 0
    to run" and the new task never ran."""
    path = write_ablation(tmp_path, "grid: {point: {}}\nevaluate: [linear]\n")
    runs = tmp_path / "runs"
    (rid,) = launch.run_ablation(path, runs_dir=runs, echo=lambda line: None).ran
    path.write_text(path.read_text().replace("[linear]", "[linear, depth]"))
    fake.calls.clear()
    lines: list[str] = []
    assert launch.run_ablation(path, runs_dir=runs, echo=lines.append).ran == [rid]
    assert fake.calls == [(rid, "evaluate")]  # the pretraining is kept
    assert f"  {rid}: evaluated with other settings (point.json), evaluated again" in lines
    recorded = json.loads((runs / "abl" / rid / "point.json").read_text())
    assert recorded["eval_parameters"]["tasks"] == ["linear", "depth"]
    fake.calls.clear()  # and then it is done
    assert launch.run_ablation(path, runs_dir=runs, echo=lambda line: None).done == [rid]
    assert fake.calls == []


def test_a_failed_re_evaluation_leaves_the_point_failed_not_done(tmp_path, fake):
    # point.json recorded the new evaluation while the old summary.json stayed: the point read
    # as done (summary.json means done) with the old metrics, and the next run skipped it.
    path = write_ablation(tmp_path, "grid: {point: {}}\nevaluate: [linear]\n")
    runs = tmp_path / "runs"
    (rid,) = launch.run_ablation(path, runs_dir=runs, echo=lambda line: None).ran
    path.write_text(path.read_text().replace("[linear]", "[linear, depth]"))
    fake.fail_eval = True
    assert launch.run_ablation(path, runs_dir=runs, echo=lambda line: None).failed == [rid]
    assert point_state(runs / "abl" / rid, rid).state == "failed"
    fake.fail_eval = False
    fake.calls.clear()
    assert launch.run_ablation(path, runs_dir=runs, echo=lambda line: None).ran == [rid]
    assert fake.calls == [(rid, "evaluate")]  # the pretraining is still kept


def test_a_finished_point_is_evaluated_once_its_file_asks_for_an_evaluation(tmp_path, fake):
    # point.json records eval_parameters null for a run without one: that is a recorded choice
    path = write_ablation(tmp_path, "grid: {point: {}}\n")
    runs = tmp_path / "runs"
    (rid,) = launch.run_ablation(path, runs_dir=runs, echo=lambda line: None).ran
    assert json.loads((runs / "abl" / rid / "point.json").read_text())["eval_parameters"] is None
    path.write_text(path.read_text() + "evaluate: [linear]\n")
    fake.calls.clear()
    assert launch.run_ablation(path, runs_dir=runs, echo=lambda line: None).ran == [rid]
    assert fake.calls == [(rid, "evaluate")] and (runs / "abl" / rid / "eval.json").is_file()


def test_a_run_directory_replaced_by_a_file_breaks_that_point_only(tmp_path, fake, capsys):
    path = write_ablation(tmp_path, "grid: {product: {masks.grid_size: [2, 4]}}\n")
    runs = tmp_path / "runs"
    a, b = run_ids(path)
    (runs / "abl").mkdir(parents=True)
    (runs / "abl" / a).write_text("not a directory")
    assert main(["status", str(path), "--runs-dir", str(runs)]) == 0
    table = capsys.readouterr().out
    line = next(x for x in table.splitlines() if x.startswith(a))
    assert "broken" in line and "is a file, not a run directory" in line
    assert main(["run", str(path), "--runs-dir", str(runs)]) == 1
    captured = capsys.readouterr()
    assert fake.calls == [(b, "pretrain")]
    assert f"{a}: broken (" in captured.out and f"{b} done" in captured.out
    assert f"1 of 2 points broken (not run): {a}" in captured.err
    assert (runs / "abl" / a).read_text() == "not a directory"


def test_status_of_points_never_started_and_queued(tmp_path, monkeypatch):
    path = grid3(tmp_path)
    ids = run_ids(path)
    _fake_slurm(tmp_path / "bin", 'echo "77_1 PENDING"')  # SLURM still queues it
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    folder = tmp_path / "runs" / "abl" / ".submitit" / "20260101-000000-1"
    write_json(folder / "launch.json", {"profile": "cpu", "jobs": {ids[1]: "77_1"}})
    states = {s.run_id: s for s in launch.ablation_status(path, runs_dir=tmp_path / "runs")}
    assert states[ids[0]].state == "not started" and states[ids[0]].job_id is None
    assert states[ids[1]].state == "pending" and states[ids[1]].job_id == "77_1"
    # another profile's launch record does not apply
    paper = launch.ablation_status(path, profile="paper", runs_dir=tmp_path / "runs")
    assert {s.state for s in paper} == {"not started"}


def test_debug_executor_runs_points_in_process(tmp_path, fake):
    path = write_ablation(tmp_path, "grid: {product: {masks.source: [grid, fh]}}\n")
    result = launch.run_ablation(
        path, executor="debug", runs_dir=tmp_path / "runs", echo=lambda line: None
    )
    assert result.ok and len(result.ran) == 2 and len(result.jobs) == 2
    env = json.loads((tmp_path / "runs" / "abl" / result.ran[0] / "env.json").read_text())
    assert env["executor"] == "debug"


def test_lanes_run_points_side_by_side_and_isolate_a_failure(tmp_path, fake, capsys, monkeypatch):
    monkeypatch.setattr(launch_executors, "_LANE_START_METHOD", "fork")  # the fake reaches them
    path = grid3(tmp_path)
    runs = tmp_path / "runs"
    rc = main(["run", str(path), "--runs-dir", str(runs), "--lanes", "2"])
    captured = capsys.readouterr()
    assert rc == 1 and "1 of 3 points failed" in captured.err
    ok2, bad, ok4 = run_ids(path)
    lines = captured.out.splitlines()
    # two points start before either ends; the third starts when a lane is free
    starts = [i for i, line in enumerate(lines) if line.endswith(" ...")]
    first_end = next(i for i, line in enumerate(lines) if " done (" in line or " FAILED" in line)
    assert len(starts) == 3 and starts[1] < first_end < starts[2] and "[3/3]" in lines[starts[2]]
    assert any(f"[1/3] {ok2} done (" in line for line in lines)
    assert any(f"[2/3] {bad} FAILED: {bad}: ValueError: grid of 3" in line for line in lines)
    assert any(f"[3/3] {ok4} done (" in line for line in lines)
    for rid, state in ((ok2, "done"), (bad, "failed"), (ok4, "done")):
        assert point_state(runs / "abl" / rid, rid).state == state
    # a rerun in lanes skips the finished points and retries the failed one
    assert main(["run", str(path), "--runs-dir", str(runs), "--lanes", "2"]) == 1
    assert "3 points, 2 done, 0 running elsewhere, 1 to run" in capsys.readouterr().out


REFERENCE_GRID = """
grid:
  product: {masks.grid_size: [2, 4]}
evaluate: [linear]
parameters: {evaluate: {random_baseline: true, supervised_ceiling: true, quick: true}}
"""


def test_run_references_computes_each_distinct_set_once_ceiling_first(tmp_path, monkeypatch):
    """The reference lane's job: the notebook's call with each point's evaluation parameters,
    in a scratch run directory holding the point's config, through the runs folder's cache;
    two points of one model and data config share one set."""
    import detcon.evaluate

    calls = []

    def evaluate_point_references(run_dir, **kwargs):
        calls.append((Path(run_dir), kwargs))
        return {}

    monkeypatch.setattr(detcon.evaluate, "evaluate_point_references", evaluate_point_references)
    path = write_ablation(tmp_path, REFERENCE_GRID)
    specs = launch.prepare(path, runs_dir=tmp_path / "runs", check_data=False).specs
    assert launch_point.run_references(specs) == 1
    ((work, kwargs),) = calls
    cache = (tmp_path / "runs" / ".references").absolute()
    assert work == cache / "points" / specs[0].run_id
    config = json.loads((work / "config.json").read_text())
    assert config == json.loads(json.dumps(launch.reuse.expected_config(specs[0])))
    expected = {k: v for k, v in specs[0].eval_parameters.items() if k != "run_dir"}
    assert kwargs == {"reference_cache": cache, "ceiling_first": True, **expected}
    # another model: its own set; no references asked for: nothing
    calls.clear()
    widths = REFERENCE_GRID.replace("masks.grid_size: [2, 4]", "model.small_width: [8, 16]")
    wider = write_ablation(tmp_path, widths, "wider")
    specs = launch.prepare(wider, runs_dir=tmp_path / "runs", check_data=False).specs
    assert launch_point.run_references(specs) == 2
    plain = write_ablation(tmp_path, "grid: {point: {}}\nevaluate: [linear]\n", "plain")
    specs = launch.prepare(plain, runs_dir=tmp_path / "runs", check_data=False).specs
    assert launch_point.run_references(specs) == 0


def _lane_stand_in(tmp_path: Path, how: str) -> Callable[[list], int]:
    """A stand-in for ``run_references`` in the reference lane's process: writes the run ids
    it was given, then ends as ``how`` says."""
    import os
    import time

    def run_references(specs):
        (tmp_path / "references.txt").write_text(" ".join(spec.run_id for spec in specs))
        if how == "fails":
            raise RuntimeError("no ceiling today\nsecond line")
        if how == "crashes":
            os._exit(3)
        if how == "outlives":  # longer than any point: stopped when the last one ends
            time.sleep(120)
        return 1

    return run_references


@pytest.mark.parametrize(
    ("how", "end"),
    [
        ("done", "[references] done ("),
        (
            "fails",
            "[references] FAILED: RuntimeError: no ceiling today (each point computes the "
            "references it lacks) (",
        ),
        (
            "crashes",
            "[references] FAILED: its process ended with exit code 3 (each point computes the "
            "references it lacks) (",
        ),
        ("outlives", "[references] stopped: every point has ended, none is left to use them"),
    ],
)
def test_a_spare_lane_computes_the_references_while_the_points_run(
    tmp_path, fake, capsys, monkeypatch, how, end
):
    """Three lanes, two points asking for the floor and the ceiling: the third lane runs the
    reference job from the start, in a process of its own; its failure, even a crash, is
    reported and the points still finish (each computes what it lacks); when it outlives every
    point it is stopped."""
    import time

    monkeypatch.setattr(launch_executors, "_LANE_START_METHOD", "fork")  # the fakes reach them
    monkeypatch.setattr(launch_executors, "run_references", _lane_stand_in(tmp_path, how))
    path = write_ablation(tmp_path, REFERENCE_GRID)
    runs = tmp_path / "runs"
    t0 = time.monotonic()
    assert main(["run", str(path), "--runs-dir", str(runs), "--lanes", "3"]) == 0
    assert time.monotonic() - t0 < 60  # a guard: "outlives" sleeps 120 s unless stopped
    lines = capsys.readouterr().out.splitlines()
    ids = run_ids(path)
    assert (tmp_path / "references.txt").read_text() == " ".join(ids)
    start = lines.index("[references] the floor and the ceiling, in the spare lane ...")
    assert start < min(i for i, line in enumerate(lines) if " done (" in line)
    (last,) = [line for line in lines[start + 1 :] if line.startswith("[references] ")]
    assert last.startswith(end)
    assert {point_state(runs / "abl" / rid, rid).state for rid in ids} == {"done"}


def test_the_spare_lane_serves_only_points_that_will_evaluate(tmp_path, fake, capsys, monkeypatch):
    """One point and two lanes: the second computes its references. No lane when no point to
    run asks for references, or when the one that does takes its evaluation from a finished
    run of the same config (another ablation's)."""
    monkeypatch.setattr(launch_executors, "_LANE_START_METHOD", "fork")
    monkeypatch.setattr(launch_executors, "run_references", _lane_stand_in(tmp_path, "done"))
    runs = tmp_path / "runs"
    one = write_ablation(tmp_path, REFERENCE_GRID.replace("[2, 4]", "[2]"), "one")
    assert main(["run", str(one), "--runs-dir", str(runs), "--lanes", "2"]) == 0
    assert "[references] done (" in capsys.readouterr().out
    assert (tmp_path / "references.txt").read_text() == run_ids(one)[0]

    (tmp_path / "references.txt").unlink()
    again = write_ablation(tmp_path, REFERENCE_GRID.replace("[2, 4]", "[2]"), "again")
    plain = write_ablation(tmp_path, "grid: {point: {}}\nevaluate: [linear]\n", "plain")
    for path in (again, plain):
        assert main(["run", str(path), "--runs-dir", str(runs), "--lanes", "3"]) == 0
    out = capsys.readouterr().out
    assert "reuses the pretraining and evaluation of one/" in out
    assert "[references]" not in out and not (tmp_path / "references.txt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lanes", "0"], r"--lanes: '0': expected a whole number >= 1"),
        (["--lanes", "two"], r"--lanes: 'two': expected a whole number >= 1"),
        (
            ["--lanes", "2", "--executor", "debug"],
            r"lanes=2 applies to the local executor only, not 'debug'",
        ),
    ],
)
def test_bad_lanes_are_a_clear_error(tmp_path, fake, capsys, args, message):
    import re

    path = grid3(tmp_path)
    with contextlib.suppress(SystemExit):  # argparse exits 2 itself
        assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), *args]) == 2
    assert re.search(message, " ".join(capsys.readouterr().err.split()))
    assert not fake.calls


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize("lanes", ["1", "2", "3"])
def test_end_to_end_local_run_with_real_notebooks(tmp_path, capsys, lanes):
    """Two points through papermill + nbconvert: one trains and evaluates (quick linear probe),
    one fails in its notebook (an empty external mask store); a rerun skips the finished one.
    With two lanes the points run side by side in spawned worker processes; with three, the
    third computes the floor and the ceiling meanwhile, keyed as the notebook keys them (one
    cached file each, whoever computed it)."""
    empty = tmp_path / "empty-store"
    empty.mkdir()
    path = write_ablation(
        tmp_path,
        TINY_BASE
        + textwrap.dedent(f"""
        grid:
          union:
            - point: {{masks.source: grid}}
            - point: {{masks.source: external, masks.external_dir: {empty}}}
        evaluate: [linear]
        parameters:
          pretrain: {{num_examples: 1}}
          evaluate: {{quick: true, device: cpu, random_baseline: true, supervised_ceiling: true}}
        """),
        "tiny",
    )
    runs = tmp_path / "runs"
    assert main(["run", str(path), "--runs-dir", str(runs), "--lanes", lanes]) == 1
    out = capsys.readouterr().out
    good, bad = run_ids(path)
    assert f"{good} done" in out and f"{bad} FAILED" in out
    d = runs / "tiny" / good
    for name in (
        "pretrain.ipynb",
        "pretrain.html",
        "evaluate.ipynb",
        "evaluate.html",
        "checkpoint.pt",
        "backbone.pt",
        "metrics.jsonl",
        "eval.json",
        "summary.json",
    ):
        assert (d / name).exists(), name
    summary = json.loads((d / "summary.json").read_text())
    assert summary["pretrain.steps"] == 2 and "eval.linear.top1" in summary
    # the notebook's floor and ceiling (eval_random.json, eval_supervised.json) reach the summary
    assert "eval_random.linear.top1" in summary and "eval_supervised.linear.top1" in summary
    cached = sorted(p.name.split("-")[0] for p in (runs / ".references").glob("*.json"))
    assert cached == ["random", "supervised"]
    assert ("[references] done (" in out) == (lanes == "3")
    executed = nbformat.read(str(d / "pretrain.ipynb"), as_version=4)
    tags = [c.metadata.get("tags", []) for c in executed.cells]
    assert ["injected-parameters"] in tags
    failed = json.loads((runs / "tiny" / bad / "status.json").read_text())
    assert failed["state"] == "failed" and "holds no .png or .npz mask" in failed["error"]
    assert (runs / "tiny" / bad / "pretrain.html").exists()
    html = (runs / "tiny" / bad / "pretrain.html").read_text()
    assert "holds no .png or .npz mask" in html
    assert main(["run", str(path), "--runs-dir", str(runs), "--only", good]) == 0
    assert "1 points, 1 done, 0 running elsewhere, 0 to run" in capsys.readouterr().out


def _write_sleeping_notebook(path: Path, cells: list) -> None:
    """A python3 notebook of ``cells`` (the last one sleeps, to be interrupted)."""
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(
        nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": kernelspec}), str(path)
    )


def _write_sleeping_point_notebook(path: Path) -> None:
    """A pretraining notebook's parameters, then a cell that marks the point started and
    sleeps (to be interrupted)."""
    cells = [
        nbformat.v4.new_code_cell(
            'profile = "cpu"\noverrides = {}\nrun_dir = "."\nprogress = True',
            metadata={"tags": ["parameters"]},
        ),
        nbformat.v4.new_code_cell(
            "import time\nfrom pathlib import Path\n"
            'Path(run_dir, "started").write_text("")\ntime.sleep(600)'
        ),
    ]
    _write_sleeping_notebook(path, cells)


def _ctrl_c_once_started(
    cmd: list[str], started: list[Path], sig: int | None = None
) -> tuple[int, str, str]:
    """Start ``cmd`` in a session of its own, wait until every ``started`` file exists, send
    SIGINT to its process group (a terminal's Ctrl-C), or ``sig`` to its process alone, and
    return (exit code, stdout, stderr)."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # A terminal's Ctrl-C: SIGINT must be deliverable. When the tests themselves run as a
        # background job of a non-interactive shell (`.ci/run &`), SIGINT arrives ignored and
        # Python would then never raise KeyboardInterrupt (the run hung for 120 s in that case).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 300  # a guard, not a measurement: the kernel's start
        while not all(f.exists() for f in started) and proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert all(f.exists() for f in started), proc.communicate()
        if sig is None:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, err


@pytest.mark.slow
@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_ctrl_c_during_a_run_prints_one_line_and_exits_130(tmp_path, lanes):
    """SIGINT to `detcon run`'s process group (what Ctrl-C in a terminal does) while a point's
    notebook runs: one line, exit code 130 (the kernel's shutdown printed a ZMQError traceback).
    With two lanes, both points' notebooks run when it comes, and both stop; with three, the
    spare lane training the ceiling (the cpu profile's, minutes) stops too, silently."""
    import sys

    _write_sleeping_point_notebook(tmp_path / "sleep.ipynb")
    points = min(lanes, 2)
    text = f"notebook: sleep.ipynb\ngrid: {{point: {{}}}}\nseeds: {list(range(points))}\n"
    if lanes == 3:
        text += (
            "evaluate: [linear]\n"
            "parameters: {evaluate: {random_baseline: true, supervised_ceiling: true}}\n"
        )
    path = write_ablation(tmp_path, text)
    rids = run_ids(path)
    started = [tmp_path / "runs" / "abl" / rid / "started" for rid in rids]
    cmd = [sys.executable, "-m", "detcon", "run", str(path), "--runs-dir", str(tmp_path / "runs")]
    returncode, out, err = _ctrl_c_once_started([*cmd, "--lanes", str(lanes)], started)
    assert returncode == 130, err
    assert err.splitlines() == ["detcon run: interrupted"], err
    assert ("[references] the floor and the ceiling" in out) == (lanes == 3)
    for i, (rid, f) in enumerate(zip(rids, started), 1):
        assert f"[{i}/{points}] {rid} ..." in out
        # The point resumes on the next run: nobody holds its lock and its status says running.
        assert point_state(f.parent, rid).state == "interrupted"


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_to_the_launch_alone_stops_its_lanes(tmp_path, sig):
    """`kill -INT` or `kill -TERM` of `detcon run --lanes 2` (not its process group): the launch
    hung in the pool's shutdown (2 times in 7 with SIGINT), or with SIGTERM ended at once and
    left its lane workers training on, holding their points' locks."""
    import signal
    import sys

    _write_sleeping_point_notebook(tmp_path / "sleep.ipynb")
    path = write_ablation(tmp_path, "notebook: sleep.ipynb\ngrid: {point: {}}\nseeds: [0, 1]\n")
    rids = run_ids(path)
    started = [tmp_path / "runs" / "abl" / rid / "started" for rid in rids]
    cmd = [sys.executable, "-m", "detcon", "run", str(path), "--runs-dir", str(tmp_path / "runs")]
    number = getattr(signal, sig)
    returncode, _, err = _ctrl_c_once_started([*cmd, "--lanes", "2"], started, sig=number)
    word = "interrupted" if sig == "SIGINT" else "terminated (SIGTERM)"
    assert returncode == 128 + number if sig == "SIGTERM" else 130, err
    assert err.splitlines() == [f"detcon run: {word}"], err
    for rid, f in zip(rids, started):
        # nobody holds the point's lock any more: its lane worker is gone
        assert point_state(f.parent, rid).state == "interrupted"


_SLOW_TEARDOWN = """
import asyncio, sys
from pathlib import Path
from jupyter_client.manager import AsyncKernelManager
from detcon.launch.notebooks import execute_notebook

cleanup = AsyncKernelManager.cleanup_resources

async def slow_cleanup(self, *args, **kwargs):  # a loaded machine: past nbclient's 1 s poll
    await asyncio.sleep(2.5)
    return await cleanup(self, *args, **kwargs)

AsyncKernelManager.cleanup_resources = slow_cleanup
d = Path(sys.argv[1])
try:
    execute_notebook(d / "sleep.ipynb", d / "out.ipynb", {}, cwd=d, kernel="python3")
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
"""


@pytest.mark.slow
def test_ctrl_c_with_a_slow_kernel_teardown_adds_nothing_to_stderr(tmp_path):
    """The rare failure of the test above, made certain: when stopping the kernel after Ctrl-C
    outlasts nbclient's kernel poll, nbclient logged "Kernel died while waiting for execute
    reply." and asyncio a DeadKernelError traceback at exit; execute_notebook drops both."""
    import sys

    cells = [
        nbformat.v4.new_code_cell(
            'from pathlib import Path\nimport time\nPath("started").write_text("")\ntime.sleep(600)'
        )
    ]
    _write_sleeping_notebook(tmp_path / "sleep.ipynb", cells)
    (tmp_path / "drive.py").write_text(_SLOW_TEARDOWN)
    cmd = [sys.executable, str(tmp_path / "drive.py"), str(tmp_path)]
    returncode, _, err = _ctrl_c_once_started(cmd, [tmp_path / "started"])
    assert returncode == 130, err
    assert err.splitlines() == ["interrupted"], err


def test_summary_rows_are_flat_and_name_their_source():
    point = {"ablation": "a", "run_id": "r", "profile": "cpu", "params": {"masks.source": "fh"}}
    row = flatten_summary(
        point,
        {"steps": 3},
        {"linear": {"top1": 0.5}},
        {"linear": {"top1": 0.1}},
        {"linear": {"top1": 0.9}},
    )
    assert row == {
        "ablation": "a",
        "run_id": "r",
        "profile": "cpu",
        "masks.source": "fh",
        "pretrain.steps": 3,
        "eval.linear.top1": 0.5,
        "eval_random.linear.top1": 0.1,
        "eval_supervised.linear.top1": 0.9,
    }


def test_a_run_directory_of_another_config_under_the_same_run_id_is_refused(tmp_path):
    """Identity is the full config digest: a run id's short digest naming another point's
    directory (a prefix collision across edits of a file) is never reused as done."""
    path = grid3(tmp_path)
    runs = tmp_path / "runs"
    point = launch.prepare(path, runs_dir=runs).points[0]
    run_dir = runs / "abl" / point.run_id
    write_json(run_dir / "point.json", {**point.to_json(), "config_digest": "f" * 64})
    with pytest.raises(ValueError, match=rf"{point.run_id}.*{'f' * 64}.*{point.digest}"):
        launch.prepare(path, runs_dir=runs)
    write_json(run_dir / "point.json", point.to_json())  # its own point: fine
    launch.prepare(path, runs_dir=runs)


def test_a_mask_store_of_other_masks_is_refused_before_anything_runs(tmp_path, fake):
    import numpy as np

    from detcon.config import MaskConfig
    from detcon.masks.store import precompute_store

    images = [{"image": np.full((3, 8, 8), i, dtype=np.uint8)} for i in range(4)]
    store = tmp_path / "store"
    precompute_store(images, MaskConfig(source="grid"), store, shard_size=2, progress=False)
    path = write_ablation(
        tmp_path,
        f"base: {{masks.store: {store}}}\ngrid:\n  product: {{masks.source: [grid, fh]}}\n",
    )
    with pytest.raises(
        ValueError, match=r"point fh-s0-\w+: mask store .*source: store has 'grid', asked for 'fh'"
    ):
        launch.prepare(path, runs_dir=tmp_path / "runs")
    (store / "shard-00001.npz").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"point grid-s0-\w+: mask store .* 1 of 2 shards missing"
    ):
        launch.prepare(path, runs_dir=tmp_path / "runs")
    assert fake.calls == []


# --------------------------------------------------------------------------- reuse across files


def two_files(tmp_path: Path, second: str = "evaluate: [linear]\n") -> tuple[Path, Path]:
    """Two ablation files sharing one point (masks.grid_size 4): ``first`` with [2, 4],
    ``second`` with [4, 5] and ``second`` as its evaluation lines."""
    first = write_ablation(
        tmp_path, "grid: {product: {masks.grid_size: [2, 4]}}\nevaluate: [linear]\n", "first"
    )
    other = write_ablation(
        tmp_path, "grid: {product: {masks.grid_size: [4, 5]}}\n" + second, "second"
    )
    return first, other


def test_a_config_training_now_for_another_file_is_not_trained_twice(
    tmp_path, fake, lock_held_elsewhere
):
    """A launch found nothing to take over from a point of another file still training the same
    config, and trained it a second time (a multi-day run at the paper profile)."""
    first, other = two_files(tmp_path)
    runs = tmp_path / "runs"
    shared = next(
        s
        for s in launch.prepare(first, runs_dir=runs, check_data=False).specs
        if s.point.params["masks.grid_size"] == 4
    )
    shared.run_dir.mkdir(parents=True)
    write_json(shared.run_dir / "point.json", shared.record())
    lines: list[str] = []
    with lock_held_elsewhere(shared.run_dir):
        result = launch.run_ablation(other, runs_dir=runs, echo=lines.append)
    ids = run_ids(other)
    assert result.busy == [ids[0]] and result.ran == [ids[1]]
    assert f"  {ids[0]}: its config runs now in first/{shared.run_id} (its lock is held)" in (
        " ".join(lines)
    )
    assert [c for c in fake.calls if c[0] == ids[0]] == []
    # still so while it evaluates what it has trained (taken over only once done)
    (shared.run_dir / "train_summary.json").write_text("{}")
    from detcon.launch.reuse import training_elsewhere

    spec = launch.prepare(other, runs_dir=runs, check_data=False).specs[0]
    with lock_held_elsewhere(shared.run_dir):
        assert training_elsewhere(spec) == shared.run_dir


def pretrain_metrics(scan, run_id: str) -> dict[str, float]:
    rows = scan.tidy[(scan.tidy.run_id == run_id) & (scan.tidy.task == "pretrain")]
    return dict(zip(rows.metric, rows.value))


@pytest.mark.parametrize(
    ("second", "evaluated"),
    [
        ("evaluate: [linear]\n", False),  # equal evaluation settings: taken over too
        ("evaluate: [linear, depth]\n", True),  # other tasks: its own evaluation
        ("evaluate: [linear]\nparameters: {evaluate: {random_baseline: true}}\n", True),
    ],
    ids=["same-evaluation", "other-tasks", "other-evaluate-parameters"],
)
def test_a_point_finished_in_another_ablation_file_is_not_trained_again(
    tmp_path, fake, capsys, second, evaluated
):
    from detcon.results import scan_ablation

    first, other = two_files(tmp_path, second)
    runs = tmp_path / "runs"
    assert main(["run", str(first), "--runs-dir", str(runs)]) == 0
    _, a4 = run_ids(first)
    b4, b5 = run_ids(other)
    shared = launch.prepare(other, check_data=False).points[0]
    assert shared.digest == launch.prepare(first, check_data=False).points[1].digest
    capsys.readouterr()

    # The dry run says so already.
    assert main(["run", str(other), "--runs-dir", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 points (1 reused from finished runs)" in out
    assert f"first/{a4}" in next(x for x in out.splitlines() if x.startswith(b4))

    fake.calls.clear()
    assert main(["run", str(other), "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "2 to run (1 reused from finished runs)" in out
    what = "pretraining" if evaluated else "pretraining and evaluation"
    assert f"{b4}: reuses the {what} of first/{a4}" in out
    assert f"{b4} done (reused first/{a4})" in out
    # b4 is not trained again; only b5 is.
    assert fake.calls == [
        *([(b4, "evaluate")] if evaluated else []),
        (b5, "pretrain"),
        (b5, "evaluate"),
    ]
    src, dst = runs / "first" / a4, runs / "second" / b4
    for name in ("backbone.pt", "checkpoint.pt"):  # hard links: no space taken
        assert (dst / name).samefile(src / name)
    for name in ("config.json", "metrics.jsonl", "train_summary.json", "pretrain.ipynb"):
        assert (dst / name).read_bytes() == (src / name).read_bytes(), name
    assert (dst / "pretrain.html").exists() and (dst / "evaluate.html").exists()
    # The git state of the code that trained it travels with it (export's git_commit).
    assert (dst / "pretrain_env.json").read_bytes() == (src / "env.json").read_bytes()
    # ... also through a second takeover: a third file's point taken from second/b4 (first's
    # run gone) records first's training, not the job that took it over
    trained_by = (src / "env.json").read_bytes()
    third = write_ablation(tmp_path, "grid: {product: {masks.grid_size: [4]}}\n" + second, "third")
    shutil.move(str(runs / "first"), str(tmp_path / "first-elsewhere"))
    launch.run_ablation(third, runs_dir=runs, echo=lambda line: None)
    c4 = run_ids(third)[0]
    assert json.loads((runs / "third" / c4 / "status.json").read_text())["reused_from"] == (
        f"second/{b4}"
    )
    assert (runs / "third" / c4 / "pretrain_env.json").read_bytes() == trained_by
    shutil.move(str(tmp_path / "first-elsewhere"), str(runs / "first"))
    status = json.loads((dst / "status.json").read_text())
    assert status["state"] == "done" and status["reused_from"] == f"first/{a4}"
    assert status["stages"] == ["pretrain", "evaluate"]
    summary = json.loads((dst / "summary.json").read_text())
    assert summary["run_id"] == b4 and summary["ablation"] == "second"

    # Each ablation's report lists the point as done, with the metrics of the one training.
    first_scan = scan_ablation(first, runs_dir=runs)
    second_scan = scan_ablation(other, runs_dir=runs)
    assert dict(zip(second_scan.status.run_id, second_scan.status.state)) == {
        b4: "done",
        b5: "done",
    }
    assert pretrain_metrics(second_scan, b4) == pretrain_metrics(first_scan, a4)
    assert (
        pretrain_metrics(second_scan, b4)["wall_s"] != pretrain_metrics(second_scan, b5)["wall_s"]
    )
    assert len(second_scan.curves[second_scan.curves.run_id == b4]) == 2
    if not evaluated:
        a_eval = first_scan.tidy[
            (first_scan.tidy.run_id == a4) & (first_scan.tidy.task != "pretrain")
        ]
        b_eval = second_scan.tidy[
            (second_scan.tidy.run_id == b4) & (second_scan.tidy.task != "pretrain")
        ]
        assert list(b_eval.value) == list(a_eval.value) and len(b_eval)

    # `detcon status` names the source; a rerun finds everything done.
    assert main(["status", str(other), "--runs-dir", str(runs)]) == 0
    table = capsys.readouterr().out
    assert "2 points: 2 done (1 reused from finished runs)" in table
    assert f"first/{a4}" in next(x for x in table.splitlines() if x.startswith(b4))
    fake.calls.clear()
    assert main(["run", str(other), "--runs-dir", str(runs)]) == 0
    assert "2 points, 2 done, 0 running elsewhere, 0 to run" in capsys.readouterr().out
    assert fake.calls == []


def test_the_cpu_evaluation_is_reused_across_checkouts_at_other_paths(tmp_path, fake):
    """The cpu profile's probes read generated scenes, not the data root: a launch from another
    checkout (another absolute --data-root) takes the evaluation over too; where the tasks read
    the data root (paper profile), it must agree."""
    from detcon.launch.reuse import eval_settings

    first, other = two_files(tmp_path)
    runs = tmp_path / "runs"
    launch.run_ablation(first, runs_dir=runs, data_root=tmp_path / "a", echo=lambda line: None)
    fake.calls.clear()
    result = launch.run_ablation(
        other, runs_dir=runs, data_root=tmp_path / "b", echo=lambda line: None
    )
    b4, b5 = run_ids(other)
    assert b4 in result.reused and fake.calls == [(b5, "pretrain"), (b5, "evaluate")]

    cpu = {"profile": "cpu", "tasks": ["linear"], "data_root": "/a", "run_dir": "/r"}
    assert eval_settings(cpu) == {"profile": "cpu", "tasks": ["linear"]}
    paper = {"profile": "paper", "tasks": ["segmentation"], "data_root": "/a", "run_dir": "/r"}
    assert eval_settings(paper) == {k: v for k, v in paper.items() if k != "run_dir"}
    odd = {"profile": "nope", "tasks": ["linear"], "data_root": "/a"}
    assert eval_settings(odd) == odd


def _failed(run_dir: Path) -> None:  # pretraining finished, evaluation failed
    (run_dir / "summary.json").unlink()
    write_status(run_dir, "failed", stages=["pretrain"], error="RuntimeError: boom")


def _unfinished(run_dir: Path) -> None:  # killed while pretraining
    for name in ("summary.json", "train_summary.json"):
        (run_dir / name).unlink()
    write_status(run_dir, "running", stages=[])


def _corrupt(run_dir: Path) -> None:
    (run_dir / "summary.json").write_text('{"ablation": "first", "run_i')


def _other_config(run_dir: Path) -> None:  # e.g. another absolute data path: not this config
    config = json.loads((run_dir / "config.json").read_text())
    config["optim"]["epochs"] = 99
    write_json(run_dir / "config.json", config)


def _no_backbone(run_dir: Path) -> None:
    (run_dir / "backbone.pt").unlink()


@pytest.mark.parametrize(
    "damage",
    [_failed, _unfinished, _corrupt, _other_config, _no_backbone],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_point_whose_shared_run_is_not_finished_and_sound_is_trained(tmp_path, fake, damage):
    first, other = two_files(tmp_path)
    runs = tmp_path / "runs"
    launch.run_ablation(first, runs_dir=runs, echo=lambda line: None)
    _, a4 = run_ids(first)
    b4, b5 = run_ids(other)
    src = runs / "first" / a4
    damage(src)
    fake.calls.clear()
    result = launch.run_ablation(other, runs_dir=runs, echo=lambda line: None)
    assert result.ok and result.reused == {} and sorted(result.ran) == sorted([b4, b5])
    assert (b4, "pretrain") in fake.calls
    status = json.loads((runs / "second" / b4 / "status.json").read_text())
    assert status["state"] == "done" and "reused_from" not in status
    if (src / "backbone.pt").exists():
        assert not (runs / "second" / b4 / "backbone.pt").samefile(src / "backbone.pt")


def test_a_point_whose_shared_run_is_evaluated_again_now_waits_for_it(tmp_path, fake):
    """A done run of the same config evaluated again elsewhere (its lock held, its summary gone)
    is neither taken over (not done) nor trained a second time: the point waits for it."""
    first, other = two_files(tmp_path)
    runs = tmp_path / "runs"
    launch.run_ablation(first, runs_dir=runs, echo=lambda line: None)
    _, a4 = run_ids(first)
    b4, b5 = run_ids(other)
    src = runs / "first" / a4
    (src / "summary.json").unlink()
    write_status(src, "running", stages=["pretrain"])
    fake.calls.clear()
    with point_lock(src):
        result = launch.run_ablation(other, runs_dir=runs, echo=lambda line: None)
    assert result.busy == [b4] and result.ran == [b5] and (b4, "pretrain") not in fake.calls
    assert not (runs / "second" / b4 / "backbone.pt").exists()


def test_a_point_copies_the_shared_run_where_hard_links_fail(tmp_path, fake, monkeypatch):
    import errno
    import os

    def no_links(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    first, other = two_files(tmp_path)
    runs = tmp_path / "runs"
    launch.run_ablation(first, runs_dir=runs, echo=lambda line: None)
    fake.calls.clear()
    result = launch.run_ablation(other, runs_dir=runs, echo=lambda line: None)
    _, a4 = run_ids(first)
    b4, _ = run_ids(other)
    assert result.reused == {b4: f"first/{a4}"} and (b4, "pretrain") not in fake.calls
    src, dst = runs / "first" / a4, runs / "second" / b4
    for name in ("backbone.pt", "checkpoint.pt"):
        assert not (dst / name).samefile(src / name)
        assert (dst / name).read_bytes() == (src / name).read_bytes()
    assert not list(dst.glob(".*.tmp"))


def test_a_takeover_that_fails_halfway_leaves_nothing_and_the_point_trains(
    tmp_path, fake, monkeypatch
):
    """A takeover interrupted after the checkpoint was placed must not leave a finished
    checkpoint that the next job would resume as if trained; the point then trains itself, and a
    point whose own pretraining finished is never announced as reused."""
    from detcon.launch import reuse

    first, other = two_files(tmp_path)
    runs = tmp_path / "runs"
    launch.run_ablation(first, runs_dir=runs, echo=lambda line: None)
    b4, _ = run_ids(other)
    place = reuse._place

    def fail_after_checkpoint(src, dst, *, link):
        place(src, dst, link=link)
        if dst.name == "checkpoint.pt":
            raise OSError("the source vanished")

    monkeypatch.setattr(reuse, "_place", fail_after_checkpoint)
    result = launch.run_ablation(other, runs_dir=runs, echo=lambda line: None)
    dst = runs / "second" / b4
    assert b4 in result.failed
    assert not [p.name for p in dst.iterdir() if p.name.endswith((".pt", "_env.json"))]
    assert not (dst / "train_summary.json").exists()

    monkeypatch.setattr(reuse, "_place", place)
    (runs / "first").rename(tmp_path / "gone")  # no source any more: b4 trains itself
    fake.calls.clear()
    result = launch.run_ablation(other, runs_dir=runs, echo=lambda line: None)
    assert (b4, "pretrain") in fake.calls and not result.reused
    # Its pretraining finished but evaluation is to be redone: with a source back, still not
    # announced (nor counted) as reused.
    (tmp_path / "gone").rename(runs / "first")
    status = json.loads((dst / "status.json").read_text())
    (dst / "status.json").write_text(json.dumps({**status, "state": "failed"}))
    (dst / "summary.json").unlink()
    fake.calls.clear()
    result = launch.run_ablation(other, runs_dir=runs, echo=lambda line: None)
    assert not result.reused and b4 in result.ran and (b4, "pretrain") not in fake.calls


def test_every_process_of_a_multi_process_job_agrees_on_reuse(tmp_path, fake, monkeypatch):
    """In a DDP job the ranks > 0 join rank 0's training: they must skip it exactly when rank 0
    takes a finished run. All check only the source named when the launch was planned."""
    import dataclasses

    import detcon.train

    first, other = two_files(tmp_path)
    runs = tmp_path / "runs"
    launch.run_ablation(first, runs_dir=runs, echo=lambda line: None)
    spec = launch.prepare(other, runs_dir=runs, check_data=False).specs[0]
    spec = dataclasses.replace(spec, executor="slurm")
    planned = dataclasses.replace(spec, reuse=runs / "first" / run_ids(first)[1])
    joined: list[Path] = []
    monkeypatch.setattr(detcon.train, "pretrain", lambda cfg, run_dir, **kw: joined.append(run_dir))
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert launch.run_point(planned)["state"] == "follower" and joined == []
    # a follower joins once rank 0 has taken the point for this job (status.json says so)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    write_status(spec.run_dir, "running", job_id=launch_point.job_id_from_env("slurm"))
    assert launch.run_point(spec)["state"] == "follower" and joined == [spec.run_dir]
    # rank 0 of the job planned without a source trains, as its followers do
    monkeypatch.setenv("SLURM_PROCID", "0")
    fake.calls.clear()
    assert launch.run_point(spec)["state"] == "done"
    assert fake.calls == [(spec.run_id, "pretrain"), (spec.run_id, "evaluate")]
    assert "reused_from" not in json.loads((spec.run_dir / "status.json").read_text())


def test_followers_do_not_join_a_rank_0_that_will_not_train(
    tmp_path, fake, monkeypatch, lock_held_elsewhere
):
    """Rank 0 of a DDP job that finds the point held by another job returns 'busy' without
    joining the process group: its followers waited there for torch's 10-30 minute timeout."""
    import dataclasses

    spec = launch.prepare(grid3(tmp_path), runs_dir=tmp_path / "r", check_data=False).specs[0]
    spec = dataclasses.replace(spec, executor="slurm")
    spec.run_dir.mkdir(parents=True)
    took = launch_point.rank0_took_the_point
    fast = {"timeout_s": 5.0, "busy_after_s": 0.3, "poll_s": 0.05}
    assert not took(spec, **{**fast, "timeout_s": 0.2})  # rank 0 never came
    write_status(spec.run_dir, "running", job_id="77_0")  # another job trains it...
    with lock_held_elsewhere(spec.run_dir):  # ... and holds its lock
        assert not took(spec, **fast)
        joined: list[Path] = []
        monkeypatch.setattr("detcon.train.pretrain", lambda cfg, d, **kw: joined.append(d))
        monkeypatch.setattr(launch_point, "rank0_took_the_point", lambda s: took(s, **fast))
        monkeypatch.setenv("SLURM_NTASKS", "2")
        monkeypatch.setenv("SLURM_PROCID", "1")
        assert launch.run_point(spec)["state"] == "busy" and joined == []
    # rank 0 says it has the point before its env.json record (seconds: torch, the device, git),
    # which outlasted the followers' patience
    seen = []

    def record(*args, **kwargs):
        seen.append(took(spec, **{**fast, "timeout_s": 0.1}))
        return {}

    monkeypatch.setattr(launch_point, "environment_record", record)
    monkeypatch.setenv("SLURM_PROCID", "0")
    launch.run_point(spec)
    assert seen == [True]
    job = launch_point.job_id_from_env("slurm")
    write_status(spec.run_dir, "failed", job_id=job, error="x")  # rank 0 of this job failed
    assert not took(spec, **{**fast, "timeout_s": 0.3})
    write_status(spec.run_dir, "running", job_id=job)
    assert took(spec, **fast)


@pytest.mark.slow
def test_end_to_end_a_shared_point_is_evaluated_from_the_run_it_reuses(tmp_path, monkeypatch):
    """Real notebooks: the second file's evaluate notebook runs on the taken-over run directory
    (hard-linked backbone.pt) and its pretraining notebook never runs."""
    real, executed = launch_point._execute, []

    def spy(spec_nb, out_nb, parameters, cwd, kernel):
        executed.append((Path(cwd).name, Path(spec_nb).stem))
        real(spec_nb, out_nb, parameters, cwd, kernel)

    monkeypatch.setattr(launch_point, "_execute", spy)
    quick = "parameters: {evaluate: {quick: true, device: cpu}}\n"
    first = write_ablation(
        tmp_path, TINY_BASE + "grid: {point: {}}\nevaluate: [linear]\n" + quick, "first"
    )
    second = write_ablation(
        tmp_path, TINY_BASE + "grid: {point: {}}\nevaluate: [depth]\n" + quick, "second"
    )
    runs = tmp_path / "runs"
    assert main(["run", str(first), "--runs-dir", str(runs)]) == 0
    ((a,), (b,)) = run_ids(first), run_ids(second)
    executed.clear()
    assert main(["run", str(second), "--runs-dir", str(runs)]) == 0
    assert executed == [(b, "evaluate")]
    d = runs / "second" / b
    assert (d / "backbone.pt").samefile(runs / "first" / a / "backbone.pt")
    summary = json.loads((d / "summary.json").read_text())
    assert summary["pretrain.steps"] == 2 and "eval.depth.rmse" in summary
    assert "eval.linear.top1" not in summary
    encoder = json.loads((d / "eval.json").read_text())["encoder"]
    assert encoder == {"step": 2, "planned_steps": 2, "finished": True}


@pytest.mark.parametrize(
    ("second", "stands_in"),
    [("evaluate: [linear]\n", True), ("evaluate: [linear, depth]\n", False)],
    ids=["same-evaluation", "other-tasks"],
)
def test_an_export_takes_a_point_over_from_another_ablations_export(
    tmp_path, fake, capsys, second, stands_in
):
    """Run directories are gone (another session), the first file's export is committed: the
    second file runs only its new point, and its export takes the shared one from the first's
    export, as the launcher would have taken the run over, or leaves it out when the
    evaluation differs (an export cannot evaluate)."""
    import pandas as pd

    from detcon.export import export_ablation

    first, other = two_files(tmp_path, second)
    results = tmp_path / "results"
    _, a4 = run_ids(first)
    b4, b5 = run_ids(other)
    assert main(["run", str(first), "--runs-dir", str(tmp_path / "runs1")]) == 0
    export_ablation(first, runs_dir=tmp_path / "runs1", to=results, echo=print, warn=print)
    (results / "first" / a4 / "status.json").write_text(  # a reused point: follow to its source
        json.dumps(
            {
                **json.loads((results / "first" / a4 / "status.json").read_text()),
                "reused_from": "zero/trained-abcdef",
            }
        )
    )
    (results / "zero" / "trained-abcdef").mkdir(parents=True)
    runs = tmp_path / "runs2"
    if stands_in:  # nothing of the second file ran yet: the stand-in alone is exported
        alone = export_ablation(other, runs_dir=runs, to=results, echo=print, warn=print)
        assert alone.exported == [] and [r for r, _ in alone.reused] == [b4]
        shutil.rmtree(results / "second")
    assert main(["run", str(other), "--runs-dir", str(runs), "--only", b5]) == 0
    assert not (runs / "second" / b4).exists()
    capsys.readouterr()
    result = export_ablation(other, runs_dir=runs, to=results, echo=print, warn=print)
    out = capsys.readouterr().out
    dst, src = results / "second" / b4, results / "first" / a4
    table = pd.read_csv(result.table_csv)
    if not stands_in:
        assert result.reused == [] and result.not_done == [(b4, "missing")]
        assert not dst.exists() and set(table.run_id) == {b5}
        return
    assert result.reused == [(b4, "zero/trained-abcdef")] and result.not_done == []
    assert f"{b4}: not under {runs / 'second'}; taken from the exported zero/trained-abcdef" in out
    for name in ("config.json", "train_summary.json", "eval.json", "metrics.jsonl"):
        assert (dst / name).read_bytes() == (src / name).read_bytes(), name
    assert not list(dst.glob("*.ipynb"))  # the index page links the source's notebooks
    status = json.loads((dst / "status.json").read_text())
    assert status["state"] == "done" and status["reused_from"] == "zero/trained-abcdef"
    point = json.loads((dst / "point.json").read_text())
    assert (point["ablation"], point["run_id"]) == ("second", b4)
    summary = json.loads((dst / "summary.json").read_text())
    assert (summary["ablation"], summary["run_id"]) == ("second", b4)
    assert {k: v for k, v in summary.items() if k.startswith(("eval", "pretrain"))} == {
        k: v
        for k, v in json.loads((src / "summary.json").read_text()).items()
        if k.startswith(("eval", "pretrain"))
    }
    # the table has the point, with the numbers of the one training and the code that ran it
    ours = table[table.run_id == b4].drop(columns=["ablation", "run_id", "masks.grid_size"])
    theirs = pd.read_csv(results / "first.csv")
    theirs = theirs[theirs.run_id == a4].drop(columns=["ablation", "run_id", "masks.grid_size"])
    assert len(ours) and ours.reset_index(drop=True).equals(theirs.reset_index(drop=True))
    # a second export keeps the folder (it is an earlier export now)
    again = export_ablation(other, runs_dir=runs, to=results, echo=print, warn=print)
    assert again.reused == [] and again.kept == [b4]


def test_one_store_template_serves_every_source_of_a_paper_grid(tmp_path, monkeypatch):
    """`masks.store: stores/{source}` once in an ablation that varies masks.source: FH and MCG
    points read their own store, the grid point none; a missing store is named."""
    import numpy as np

    from detcon.masks.store import precompute_store

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "coco").mkdir(parents=True)
    paper = "{data.dataset: coco, data.root: data/coco, masks.store: 'stores/{source}'}"
    path = write_ablation(
        tmp_path,
        "grid: {product: {masks.source: [grid, fh, mcg]}}\n"
        f"profiles: {{paper: {{overrides: {paper}}}}}\n",
    )
    specs = launch.prepare(path, profile="paper", check_data=False).specs
    stores = {s.point.config.masks.source: s.point.config.masks.store for s in specs}
    assert stores == {"grid": "", "fh": "stores/fh", "mcg": "stores/mcg"}
    with pytest.raises(FileNotFoundError, match="2 points read mask stores") as missing:
        launch.prepare(path, profile="paper")
    for source in ("fh", "mcg"):  # every missing store's command, not the first one's only
        assert f"--source {source} " in str(missing.value)
        assert f"--out stores/{source}` (point {source}-s0-" in str(missing.value)
    images = [{"image": np.full((3, 8, 8), i, dtype=np.uint8)} for i in range(2)]
    for spec in specs:
        masks = spec.point.config.masks
        if masks.store:
            precompute_store(images, masks, masks.store, shard_size=2, progress=False)
    plan = launch.prepare(path, profile="paper")
    by_source = {s.point.config.masks.source: s for s in plan.specs}
    assert by_source["fh"].parameters["overrides"]["masks.store"] == str(tmp_path / "stores/fh")


def test_a_batch_larger_than_the_synthetic_scenes_is_refused_before_anything_runs(tmp_path):
    # It passed `detcon run --dry-run` and failed when the point started to train.
    path = write_ablation(tmp_path, "grid: {point: {optim.batch_size: 2048}}\n")
    with pytest.raises(ConfigError, match=r"point .*: optim.batch_size=2048 is larger than"):
        launch.prepare(path, check_data=False)
