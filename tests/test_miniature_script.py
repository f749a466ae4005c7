"""scripts/miniature.sh: each queue line becomes a pretraining and an evaluation (or, for the
floor and the ceiling, an evaluation of that backbone). The script's `detcon` is a stub that logs
its arguments: what is tested is how the queue is read and dispatched."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "miniature.sh"


# the script's own knobs come from each test, not from the shell that runs pytest
_CALLER_ENV = {k: v for k, v in os.environ.items() if k not in ("TASKS", "EVAL_ARGS", "EVAL_RC")}


def _run(tmp_path: Path, queue: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = tmp_path / "calls.log"
    stub = tmp_path / "detcon"
    stub.write_text(
        f'#!/usr/bin/env bash\necho "$*" >> {log}\nif [ "$1" = pretrain ]; then mkdir -p "$5"; fi\n'
        '[ "$1" = evaluate ] && exit "${EVAL_RC:-0}"; exit 0\n'
    )
    stub.chmod(0o755)
    (tmp_path / "queue.txt").write_text(queue)
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "queue.txt"), str(tmp_path / "runs"), "1"],
        cwd=REPO,
        env={**_CALLER_ENV, "DETCON": str(stub), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, log.read_text().splitlines() if log.exists() else []


def test_each_line_is_one_point_even_with_trailing_blanks(tmp_path):
    queue = "# a comment\n\nrandom_F 0 \nA_byol 1 method=byol optim.epochs=2 \nrandomB 2\n"
    proc, calls = _run(tmp_path, queue, EVAL_ARGS="--split val")
    assert proc.returncode == 0, proc.stderr
    runs = tmp_path / "runs"
    tasks = "--tasks segmentation,depth,linear --quiet"
    assert calls == [
        f"pretrain --profile cpu --out {runs}/random_F-s0 --set seed=0 --stop-after 0 --quiet",
        f"evaluate {runs}/random_F-s0 --backbone random --seed 0 {tasks} --split val",
        f"pretrain --profile cpu --out {runs}/A_byol-s1 --set seed=1 --set method=byol "
        "--set optim.epochs=2 --quiet",
        f"evaluate {runs}/A_byol-s1 --seed 1 {tasks} --split val",
        # "randomB" is not a floor ("random" or "random_..."): it is pretrained, as
        # miniature_table.py reads it
        f"pretrain --profile cpu --out {runs}/randomB-s2 --set seed=2 --quiet",
        f"evaluate {runs}/randomB-s2 --seed 2 {tasks} --split val",
    ]
    assert (runs / "A_byol-s1" / "wall").is_file()


def test_a_finished_point_is_skipped_and_tasks_are_passed_on(tmp_path):
    done = tmp_path / "runs" / "A-s0"
    done.mkdir(parents=True)
    (done / "eval.json").write_text("{}")
    proc, calls = _run(tmp_path, "A 0\nB 0\n", TASKS="segmentation")
    assert proc.returncode == 0, proc.stderr
    assert calls == [
        f"pretrain --profile cpu --out {tmp_path}/runs/B-s0 --set seed=0 --quiet",
        f"evaluate {tmp_path}/runs/B-s0 --seed 0 --tasks segmentation --quiet",
    ]


def test_a_point_finished_with_other_eval_args_is_refused_not_taken(tmp_path):
    proc, _ = _run(tmp_path, "A 0\n", EVAL_ARGS="--split val")
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "runs" / "A-s0" / "eval.json").write_text("{}")  # the stub writes none
    (tmp_path / "calls.log").unlink()
    proc, calls = _run(tmp_path, "A 0\n")  # the same folder, now on each dataset's own split
    assert proc.returncode != 0 and calls == []
    assert "started with 'segmentation,depth,linear --split val'" in proc.stdout
    proc, calls = _run(tmp_path, "A 0\n", EVAL_ARGS="--split val")
    assert proc.returncode == 0 and calls == []  # same arguments: finished, skipped


def test_the_arguments_are_recorded_before_the_point_runs(tmp_path):
    # They were written after the eval file: a kill in between left a finished point that a
    # queue with other arguments took for its own.
    proc, _ = _run(tmp_path, "A 0\n", EVAL_ARGS="--split val", EVAL_RC="1")
    assert proc.returncode != 0 and "FAILED A-s0" in proc.stdout
    record = tmp_path / "runs" / "A-s0" / "eval_args"
    assert record.read_text() == "segmentation,depth,linear --split val\n"
    proc, calls = _run(tmp_path, "A 0\n")
    assert proc.returncode != 0 and "started with" in proc.stdout


def test_a_queue_of_comments_only_runs_nothing(tmp_path):
    # `xargs -L 1` without -r ran one empty point: RUNS/-s and `--set seed=`
    proc, calls = _run(tmp_path, "# only a comment\n\n")
    assert proc.returncode == 0, proc.stderr
    assert calls == [] and not (tmp_path / "runs" / "-s").exists()


def test_a_killed_queue_stops_its_points(tmp_path, kill_once_started):
    """Its workers and their detcon processes outlived it."""
    (tmp_path / "queue.txt").write_text("A 0\nB 0\nC 0\n")
    argv = ["bash", str(SCRIPT), str(tmp_path / "queue.txt"), str(tmp_path / "runs"), "2"]
    killed = kill_once_started(argv, _CALLER_ENV, 2)
    assert len(killed.started) == 2 and killed.status == 143
    assert killed.survivors == []
    assert killed.total == 2  # the third point never started
