"""scripts/study.sh: lanes of `detcon run` per ablation, then its export; figures at the end.

The script's `detcon` is a stub that logs its arguments: what is tested is the orchestration
(the lanes sharing points through their locks is tested with the launcher, tests/test_launch.py).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from conftest import process_state_by_ps

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "study.sh"


def _stub(tmp_path: Path, fail_run: bool = False) -> tuple[Path, Path]:
    log = tmp_path / "calls.log"
    stub = tmp_path / "detcon"
    exit_run = "exit 1" if fail_run else "echo '[1/1] p done (1 s)'"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$* OMP=$OMP_NUM_THREADS" >> {log}\n'
        f'if [ "$1" = run ]; then sleep 0.2; {exit_run}; fi\n'
    )
    stub.chmod(0o755)
    return stub, log


def _run(tmp_path, stub, *args, lanes="2", results=None, path=None):
    env = {**os.environ, "DETCON": str(stub), "LANES": lanes, "STAGGER": "0"}
    env["RESULTS_DIR"] = str(tmp_path / "r") if results is None else results
    if path is not None:
        env["PATH"] = f"{path}:{env['PATH']}"
    return subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "runs"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_each_ablation_runs_in_lanes_then_is_exported_and_the_figures_follow(tmp_path):
    stub, log = _stub(tmp_path)
    proc = _run(tmp_path, stub, "ablations/negatives.yaml", "ablations/single_view.yaml")
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    runs, results = tmp_path / "runs", tmp_path / "r"
    run = f"--profile cpu --runs-dir {runs} OMP=1"
    assert calls == [
        f"run ablations/negatives.yaml {run}",
        f"run ablations/negatives.yaml {run}",
        f"export ablations/negatives.yaml {run.replace(' OMP', f' --to {results} OMP')}",
        f"run ablations/single_view.yaml {run}",
        f"run ablations/single_view.yaml {run}",
        f"export ablations/single_view.yaml {run.replace(' OMP', f' --to {results} OMP')}",
        f"figures --ablations-dir ablations --results-dir {results} --figures-dir "
        f"{results}/figures --notebooks OMP=1",
        f"claims --results {results} --out {results}/RESULTS.md --mask-quality "
        f"{results}/figures/mask_quality.csv --figures-dir {results}/figures OMP=1",
    ]
    assert (runs / "negatives.lane1.log").read_text() == "[1/1] p done (1 s)\n"
    assert (runs / "single_view.lane2.log").is_file()
    assert "== study: finished with status 0" in proc.stdout


def test_a_failed_lane_is_reported_and_the_study_goes_on(tmp_path):
    stub, log = _stub(tmp_path, fail_run=True)
    proc = _run(tmp_path, stub, "ablations/negatives.yaml", lanes="1")
    assert proc.returncode == 1
    assert [c.split()[0] for c in log.read_text().splitlines()] == [
        "run",
        "export",
        "figures",
        "claims",
    ]
    assert "finished with status 1" in proc.stdout


def test_a_missing_ablation_file_stops_before_anything_runs(tmp_path):
    stub, log = _stub(tmp_path)
    proc = _run(tmp_path, stub, "ablations/negatives.yaml", "ablations/nope.yaml")
    assert proc.returncode == 2 and "no ablation file ablations/nope.yaml" in proc.stderr
    assert not log.exists()


def test_ablation_files_of_another_folder_are_drawn_from_it(tmp_path):
    # `detcon figures` read ablations/ whatever the files named: the study ended with status 1
    # after a good export ("none of the 8 ablations of ablations has a folder")
    stub, log = _stub(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.yaml").write_text("name: a\n")
    proc = _run(tmp_path, stub, str(mine / "a.yaml"), lanes="1")
    assert proc.returncode == 0, proc.stderr
    assert f"figures --ablations-dir {mine} " in log.read_text()
    # files of two folders: refused before anything runs
    log.unlink()
    proc = _run(tmp_path, stub, str(mine / "a.yaml"), "ablations/negatives.yaml", lanes="1")
    assert proc.returncode == 2 and "ablations/negatives.yaml is not in" in proc.stderr
    assert not log.exists()


def test_the_committed_results_are_told_apart_without_gnu_realpath(tmp_path):
    # macOS 13+'s realpath has no -m, 12's none at all: a results folder elsewhere wrote the
    # study's figures and claims over the committed figures/ and RESULTS.md
    stub, log = _stub(tmp_path)
    bsd = tmp_path / "bin"
    bsd.mkdir()
    (bsd / "realpath").write_text("#!/bin/sh\necho 'realpath: illegal option' >&2; exit 64\n")
    (bsd / "realpath").chmod(0o755)
    mine = tmp_path / "mine"
    for results, figures, claims in (
        (str(mine), f"{mine}/figures", f"{mine}/RESULTS.md"),
        ("./results/", "figures", "RESULTS.md"),  # the committed tree, however it is written
    ):
        proc = _run(
            tmp_path, stub, "ablations/negatives.yaml", lanes="1", results=results, path=bsd
        )
        assert proc.returncode == 0, proc.stderr
        calls = log.read_text().splitlines()
        log.unlink()
        assert f"--figures-dir {figures} --notebooks" in calls[-2]
        assert f"--out {claims} " in calls[-1]
    assert mine.is_dir()  # made before the lanes start


def test_a_killed_study_stops_its_lanes(tmp_path, kill_once_started):
    """Its lanes outlived it, holding their points' locks: a resumed study skipped those points
    as "running elsewhere" while the orphans went on training."""
    env = {**os.environ, "LANES": "2", "STAGGER": "0"}
    argv = ["bash", str(SCRIPT), str(tmp_path / "runs"), "ablations/negatives.yaml"]
    killed = kill_once_started(argv, env, 2)
    assert len(killed.started) == 2 and killed.ran and killed.status == 143
    assert killed.survivors == []


def test_the_liveness_check_without_proc():
    # macOS has no /proc: the kill tests ask ps there (without it every process read as dead,
    # so one test always failed and another could not fail)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert process_state_by_ps(sleeper.pid) not in (None, "Z")
    finally:
        sleeper.kill()
    deadline = time.monotonic() + 10
    while process_state_by_ps(sleeper.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_state_by_ps(sleeper.pid) == "Z"  # exited, not yet collected
    sleeper.wait()
    assert process_state_by_ps(sleeper.pid) is None
