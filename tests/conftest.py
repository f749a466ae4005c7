"""The local SLURM cluster as a pytest fixture, and ``script``: a module of ``scripts/``.

Tests marked ``slurm`` (or asking for ``slurm_cluster``) need the private single-node cluster of
``scripts/slurm-up.sh``. When it is not reachable they skip with "run `make slurm-up`", except
when the environment has ``CI=true``: there they fail, because CI must exercise the real
scheduler rather than silently skip it (``.ci/run`` starts the cluster before ``make test``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The partition scripts/slurm/slurm.conf.in declares (Default=YES).
SLURM_PARTITION = "local"
# `scontrol ping` answers at once; `sinfo` can stall ~9 s, so it only runs once ping says UP.
_PROBE_TIMEOUT_S = 30


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """A reachable SLURM cluster that accepts jobs.

    Attributes:
        partition: partition to submit to (``slurm_partition=`` in submitit).
        node: name of the node that runs the jobs.
        conf: the slurm.conf the commands and jobs read (``SLURM_CONF``), or None for the
            system default ``/etc/slurm/slurm.conf``.
    """

    partition: str
    node: str
    conf: Path | None


def _local_slurm_conf() -> Path | None:
    """slurm.conf written by scripts/slurm-up.sh, if the local cluster was ever set up here."""
    base = Path(os.environ.get("SLURM_LOCAL_DIR", REPO / ".slurm-local"))
    conf = base / "etc" / "slurm.conf"
    return conf if conf.is_file() else None


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=_PROBE_TIMEOUT_S,
        check=False,
    )


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    """A command's output on one line, without scontrol's "**** RESTORE ... ****" banner."""
    lines = (proc.stdout + proc.stderr).splitlines()
    return " | ".join(line for line in lines if line.strip() and not line.startswith("**"))[:300]


def _probe_cluster(partition: str) -> tuple[str | None, str]:
    """Check that the controller, the node and accounting answer.

    Returns:
        (problem, node): ``problem`` is None when the cluster is usable, else a one-line reason;
        ``node`` is the node name sinfo reports ("" when unknown).
    """
    commands = ("sbatch", "srun", "scontrol", "sinfo", "sacct")
    missing = [cmd for cmd in commands if shutil.which(cmd) is None]
    if missing:
        return f"SLURM commands not on PATH: {', '.join(missing)}", ""
    try:
        ping = _run("scontrol", "ping")
        if "is UP" not in ping.stdout:
            return f"`scontrol ping` does not say UP: {_output(ping)}", ""
        info = _run("sinfo", "-h", "-p", partition, "-o", "%T %N")
        fields = info.stdout.split()
        # sinfo appends flags to the state: `*` not responding, `~` powered off, ...
        state = fields[0].rstrip("*~#!%$@^-").lower() if fields else ""
        node = fields[1] if len(fields) > 1 else ""
        if info.returncode != 0 or state not in ("idle", "mixed"):
            return f"partition {partition!r} has no idle/mixed node: {_output(info)}", node
        acct = _run("sacct", "-n", "-X", "-S", "now-1hours", "-o", "JobID")
        if acct.returncode != 0:
            return f"`sacct` fails (no accounting): {_output(acct)}", node
    except subprocess.TimeoutExpired as err:
        return f"`{' '.join(map(str, err.cmd))}` timed out after {_PROBE_TIMEOUT_S} s", ""
    return None, node


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The local SLURM cluster, checked once per session.

    Points ``SLURM_CONF`` at the cluster of scripts/slurm-up.sh when it is unset (jobs inherit
    it through sbatch). Skips when the cluster is not reachable; fails instead under ``CI=true``.
    """
    with pytest.MonkeyPatch.context() as patch:
        conf = Path(os.environ["SLURM_CONF"]) if os.environ.get("SLURM_CONF") else None
        if conf is None and (conf := _local_slurm_conf()) is not None:
            patch.setenv("SLURM_CONF", str(conf))
        problem, node = _probe_cluster(SLURM_PARTITION)
        if problem is not None:
            if _in_ci():
                pytest.fail(
                    f"SLURM cluster not reachable under CI=true ({problem}); SLURM tests must run "
                    "in CI: start the cluster with scripts/slurm-up.sh (.ci/run does)",
                    pytrace=False,
                )
            pytest.skip(f"SLURM cluster not reachable ({problem}): run `make slurm-up`")
        yield SlurmCluster(partition=SLURM_PARTITION, node=node, conf=conf)


# What makes a process a rank of a distributed job (torchrun's, or a submitit SLURM task's).
# `make test` inside `salloc -n 2` or an sbatch script has some of them; a test that wants them
# sets them itself.
_JOB_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SUBMITIT_EXECUTOR",
)


@pytest.fixture(autouse=True)
def _not_a_rank_of_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _JOB_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _slurm_marker_needs_cluster(request: pytest.FixtureRequest) -> None:
    """Give every test marked ``slurm`` the cluster check (skip, or fail under CI=true)."""
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm_cluster")


@pytest.fixture
def script():
    """``script("results_table")``: ``scripts/results_table.py`` loaded as a module (the scripts
    are not a package; their tests call their functions and ``main``)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def alive():
    """``alive(pid)``: the process exists and is not a zombie (one that exited and waits for its
    parent, or for an init that does not reap, to collect it)."""

    def check(pid: int) -> bool:
        if not Path("/proc/self/stat").exists():  # macOS, the BSDs: ask ps
            return process_state_by_ps(pid) not in (None, "Z")
        stat = Path(f"/proc/{pid}/stat")
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        return state != "Z"

    return check


def process_state_by_ps(pid: int) -> str | None:
    """The first letter of ``ps``'s state of ``pid`` ("Z": a zombie), None if there is none."""
    proc = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
    return proc.stdout.strip()[:1] or None


@pytest.fixture
def kill_once_started(tmp_path, alive):
    """``kill_once_started(argv, env, n)``: run the script ``argv`` with ``DETCON`` a stub that
    records its pid and sleeps, SIGTERM the script once ``n`` stubs run, and return its exit
    status, the pids of the stubs started by then (``started``), whether they all ran when it
    was killed (``ran``), those of them still alive after up to 10 s (``survivors``) and how many
    stubs started in all (``total``)."""
    import signal
    import time

    pids = tmp_path / "stub-pids"
    pids.mkdir()
    stub = tmp_path / "stub-detcon"
    stub.write_text(f"#!/usr/bin/env bash\necho $$ > {pids}/$$\nexec sleep 60\n")
    stub.chmod(0o755)

    def run(argv: list[str], env: dict[str, str], n: int):
        proc = subprocess.Popen(
            argv, cwd=REPO, env={**env, "DETCON": str(stub)}, stdout=subprocess.DEVNULL
        )
        deadline = time.time() + 30
        while len(list(pids.iterdir())) < n and time.time() < deadline:
            time.sleep(0.05)
        started = [int(p.name) for p in pids.iterdir()]
        ran = all(alive(pid) for pid in started)
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=30)
        deadline = time.time() + 10
        while any(alive(pid) for pid in started) and time.time() < deadline:
            time.sleep(0.05)
        survivors = [pid for pid in started if alive(pid)]
        return types.SimpleNamespace(
            status=status,
            started=started,
            ran=ran,
            survivors=survivors,
            total=len(list(pids.iterdir())),
        )

    return run


@pytest.fixture
def lock_held_elsewhere():
    """``with lock_held_elsewhere(folder, name=".lock"):`` runs its block while another process
    holds detcon's ``point_lock`` on ``folder/name`` (a point, a store, run by someone else)."""

    @contextlib.contextmanager
    def hold(folder: Path, name: str = ".lock") -> Iterator[None]:
        script = (
            "import sys, time; from detcon.runs import point_lock\n"
            "with point_lock(sys.argv[1], name=sys.argv[2]):\n"
            " print('held', flush=True); time.sleep(60)"
        )
        holder = subprocess.Popen(
            [sys.executable, "-c", script, str(folder), name], stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout.readline().strip() == "held"
            yield
        finally:
            holder.kill()
            holder.wait()

    return hold
