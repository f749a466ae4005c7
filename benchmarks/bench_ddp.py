"""Multi-process DetCon-B pretraining on CPU (gloo): scaling of 2 processes and equality with 1.

Runs the real training loop (:func:`detcon.train.pretrain`, cpu profile, DetCon-B, FH masks read
from a precomputed store, one intra-op thread per process, data loading in the main process) as

* **1 process** -- ``python bench_ddp.py --worker SPEC`` (no process group);
* **2 processes via torchrun** -- ``python -m torch.distributed.run --standalone
  --nproc_per_node 2 ...`` (the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` environment);
* **2 processes as a submitit multi-task SLURM job** -- two plain processes given the
  environment SLURM and submitit set for ``tasks_per_node=2`` (``SUBMITIT_EXECUTOR=slurm``,
  ``SLURM_NTASKS``, ``SLURM_PROCID``, ...), so :func:`detcon.train.init_distributed` goes through
  ``submitit.helpers.TorchDistributedEnvironment`` as on a cluster, without one.

Figures: step time and images/s of 1 vs 2 processes at the same global batch (strong scaling,
efficiency = thr2 / (2 thr1)) and at the same per-process batch (weak scaling, efficiency =
t1 / t2), the 1 and 2 process runs interleaved (1, 2, 2w, then reversed, ...) and reduced to
medians; and the max abs difference between 1 and 2 processes of the loss curve, the lr
schedule (scaled from the global batch) and every tensor of the final model state (online and
target networks, BatchNorm running statistics). Photometric augmentations are off: they are drawn
per rank (docs/deviations.md A7), everything else must match one process holding the whole batch.

On a 2-core machine shared with other jobs the scaling efficiency is expected below 1 (the two
ranks compete with everything else for two cores): the figure is reported as measured.

Run: ``.venv/bin/python benchmarks/bench_ddp.py [--quick]``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread per process, set before torch loads

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import format_table, machine_header, median, verdict  # noqa: E402

SCRIPT = Path(__file__).resolve()
# Environment variables of an outer launcher that must not leak into the runs we start.
_DIST_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
    "ROLE_RANK",
    "TORCHELASTIC_RUN_ID",
)
NO_PHOTOMETRIC = {
    "color_jitter_prob": 0.0,
    "grayscale_prob": 0.0,
    "blur_prob": [0.0, 0.0],
    "solarize_prob": [0.0, 0.0],
}
EQUALITY_TOLERANCE = 1e-4  # the tolerance tests/test_train.py uses for 2 gloo ranks vs 1


@dataclass(frozen=True)
class Sizes:
    """What one benchmark run trains: ``steps`` steps of ``batch`` images (per process for the
    weak-scaling run), on ``num_images`` synthetic scenes, with the cpu profile's model unless
    ``tiny`` (the --quick smoke run)."""

    steps: int
    batch: int
    repeats: int
    tiny: bool

    @property
    def num_images(self) -> int:
        return 2 * self.batch * self.steps  # one epoch covers the weak-scaling run too


def overrides(sizes: Sizes, store: Path, global_batch: int, threads: int = 1) -> dict[str, Any]:
    """Config overrides (cpu profile) of one run: DetCon-B, FH from ``store``, ``threads``
    intra-op threads per process."""
    o: dict[str, Any] = {
        "method": "detcon_b",
        "data": {"num_images": sizes.num_images, "num_workers": 0},
        "masks": {"source": "fh", "store": str(store)},
        "augment": dict(NO_PHOTOMETRIC),
        "optim": {"batch_size": global_batch},
        "train": {
            "max_steps": sizes.steps,
            "threads": threads,
            "log_every": 1,
            "checkpoint_every": 1_000_000,
        },
    }
    if sizes.tiny:
        o["data"]["scene_size"] = 32
        o["masks"]["fh_min_size"] = 16
        o["augment"]["crop_size"] = 32
        o["model"] = {"small_width": 4, "head_hidden": 32, "head_out": 16}
    return o


# --------------------------------------------------------------------------- worker side


_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast")


@contextlib.contextmanager
def counting_collectives(stats: dict[str, float]) -> Iterator[None]:
    """Count the calls of ``torch.distributed`` collectives and the wall time spent in them
    (waiting for the other rank included) into ``stats`` (``calls``, ``seconds``)."""
    dist = torch.distributed
    originals = {name: getattr(dist, name) for name in _COLLECTIVES}

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                stats["calls"] += 1
                stats["seconds"] += time.perf_counter() - t0

        return timed

    for name, fn in originals.items():
        setattr(dist, name, wrap(fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


def worker(spec_path: str) -> int:
    """One training process: pretrain the spec's config into its run directory; rank 0 also
    writes ``bench_result.json`` (loop wall time, collectives per step and their time)."""
    from detcon.config import load_pretrain_config
    from detcon.train import pretrain

    spec = json.loads(Path(spec_path).read_text())
    cfg = load_pretrain_config(spec["overrides"], profile="cpu")
    stats = {"calls": 0.0, "seconds": 0.0}
    try:
        with counting_collectives(stats):
            result = pretrain(cfg, spec["out"], progress=False)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        if rank == 0:
            steps = max(1, result.steps)
            Path(spec["out"], "bench_result.json").write_text(
                json.dumps(
                    {
                        "world": world,
                        "wall_s": result.wall_s,
                        "steps": result.steps,
                        "collectives_per_step": stats["calls"] / steps,
                        "collective_s_per_step": stats["seconds"] / steps,
                    }
                )
            )
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


# --------------------------------------------------------------------------- launchers


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _slurm_job_id_with_free_port() -> str:
    """A fake job id whose submitit master port (``Random(job_id).randint(20000, 60000)``, as
    ``TorchDistributedEnvironment`` derives it) is free here."""
    for _ in range(100):
        job_id = str(random.randrange(10**6, 10**7))
        if _port_is_free(random.Random(job_id).randint(20000, 60000)):
            return job_id
    raise RuntimeError("no free port found for the emulated SLURM job after 100 tries")


def launch(kind: str, spec: Path, timeout_s: float) -> None:
    """Run one training job: ``single``, ``torchrun`` (2 processes), ``slurm`` (2 processes
    with a submitit multi-task environment) or ``inprocess`` (1 process: this one, saving an
    interpreter start in --quick). Raises with the job's output if it fails."""
    cmd = [sys.executable, str(SCRIPT), "--worker", str(spec)]
    env = _clean_env()
    if kind == "inprocess":
        worker(str(spec))
        return
    if kind == "single":
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)]
    elif kind == "torchrun":
        run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        procs = [
            subprocess.Popen(
                run + cmd[1:], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        ]
    elif kind == "slurm":
        job_id = _slurm_job_id_with_free_port()
        procs = []
        for rank in range(2):
            task_env = dict(
                env,
                SUBMITIT_EXECUTOR="slurm",
                SLURM_JOB_ID=job_id,
                SLURM_NTASKS="2",
                SLURM_JOB_NUM_NODES="1",
                SLURM_NODEID="0",
                SLURM_JOB_NODELIST="localhost",
                SLURM_PROCID=str(rank),
                SLURM_LOCALID=str(rank),
            )
            procs.append(
                subprocess.Popen(
                    cmd, env=task_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                )
            )
    else:
        raise ValueError(
            f"launcher {kind!r}: expected 'single', 'torchrun', 'slurm' or 'inprocess'"
        )
    outputs, failed = [], False
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, _ = p.communicate()
            failed = True
        outputs.append(out.decode(errors="replace"))
        failed |= p.returncode != 0
    if failed:
        tail = "\n".join(o[-3000:] for o in outputs)
        raise RuntimeError(f"{kind} run of {spec} failed:\n{tail}")


# --------------------------------------------------------------------------- measuring


def run_job(
    kind: str, sizes: Sizes, store: Path, global_batch: int, out: Path, threads: int = 1
) -> dict:
    """Launch one job and read back its step times, loss/lr curves and final state."""
    from detcon.train import load_checkpoint

    out.mkdir(parents=True)
    spec = out.with_suffix(".json")
    cfg = overrides(sizes, store, global_batch, threads)
    spec.write_text(json.dumps({"overrides": cfg, "out": str(out)}))
    t0 = time.perf_counter()
    launch(kind, spec, timeout_s=600)
    job_wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if not rows or "images_per_s" not in rows[0]:
        raise RuntimeError(
            f"{out / 'metrics.jsonl'} has no per-step 'images_per_s': the training loop's "
            "metrics changed; expected one row per step with images_per_s"
        )
    step_s = [global_batch / r["images_per_s"] for r in rows]
    timed = step_s[1:] if len(step_s) > 1 else step_s  # the first step allocates
    return {
        "step_s": median(timed),
        "loss": [r["loss"] for r in rows],
        "lr": [r["lr"] for r in rows],
        "state": load_checkpoint(out / "checkpoint.pt")["model"],
        "job_wall_s": job_wall,
        **{
            k: v
            for k, v in json.loads((out / "bench_result.json").read_text()).items()
            if k in ("collectives_per_step", "collective_s_per_step")
        },
    }


def max_abs_diff(a: Sequence[float], b: Sequence[float]) -> float:
    """Largest |a_i - b_i| of two equally long curves (ValueError when lengths differ)."""
    if len(a) != len(b):
        raise ValueError(f"curves of {len(a)} and {len(b)} points: expected equal lengths")
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def max_state_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over every tensor of two state dicts with the same keys."""
    if a.keys() != b.keys():
        raise ValueError(f"state dicts differ in keys: {sorted(set(a) ^ set(b))[:5]}")
    return max(
        (float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0) for k in a
    )


def build_store(sizes: Sizes, root: Path) -> Path:
    """FH masks of the run's scenes, computed once so that the timed steps do not compute FH."""
    from detcon.config import load_pretrain_config
    from detcon.data.pretrain import build_base_dataset
    from detcon.masks.store import precompute_store

    o = overrides(sizes, root / "unused", sizes.batch)
    o["masks"].pop("store")
    cfg = load_pretrain_config(o, profile="cpu")
    precompute_store(build_base_dataset(cfg), cfg.masks, root / "fh-store", progress=False)
    return root / "fh-store"


def equality_rows(ref: dict, runs: dict[str, dict], control: dict | None) -> list[tuple]:
    """Table rows comparing each 2-process run with the 1-process reference ``ref``.

    The first steps must agree to the test suite's tolerance. Over a longer run float32
    reduction-order differences (summing the batch in two halves) grow chaotically through
    LARS; ``control`` -- the same 1-process run with 2 intra-op threads, which only changes
    summation order -- measures that floor, and the 2-process differences must stay within
    10x of it.
    """
    rows: list[tuple] = []
    n_strict = 3
    floor = None
    if control is not None:
        floor = {
            "loss curve": max_abs_diff(ref["loss"], control["loss"]),
            "final state": max_state_diff(ref["state"], control["state"]),
        }
        for what, d in floor.items():
            rows.append((f"control: 1p 1 thread vs 2 threads, {what}", f"{d:.2e}", "", "", "floor"))
    for label, run in runs.items():
        strict = max_abs_diff(ref["loss"][:n_strict], run["loss"][:n_strict])
        rows.append(
            (
                f"|1p - 2p {label}| loss, first {n_strict} steps",
                f"{strict:.2e}",
                "",
                f"<= {EQUALITY_TOLERANCE:g}",
                verdict(strict, EQUALITY_TOLERANCE, higher_is_better=False),
            )
        )
        lr_d = max_abs_diff(ref["lr"], run["lr"])
        rows.append((f"|1p - 2p {label}| lr schedule", f"{lr_d:.2e}", "", "0", verdict(-lr_d, 0)))
        whole = {
            "loss curve": max_abs_diff(ref["loss"], run["loss"]),
            "final state": max_state_diff(ref["state"], run["state"]),
        }
        for what, d in whole.items():
            if floor is None:
                target, result = (
                    f"<= {EQUALITY_TOLERANCE:g}",
                    verdict(d, EQUALITY_TOLERANCE, higher_is_better=False),
                )
            else:
                limit = max(10 * floor[what], EQUALITY_TOLERANCE)
                target = f"<= {limit:.1e} (10x floor)"
                result = verdict(d, limit, higher_is_better=False)
            rows.append((f"|1p - 2p {label}| {what}", f"{d:.2e}", "", target, result))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 3 steps, 1 repeat")
    parser.add_argument("--steps", type=int, default=10, help="training steps per run")
    parser.add_argument("--batch", type=int, default=32, help="global batch (cpu profile: 32)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats")
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.quick:
        args.steps, args.batch, args.repeats = 3, 8, 1
    for name in ("steps", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)}: expected >= 1")
    if args.batch % 2:
        parser.error(f"--batch={args.batch}: expected an even global batch (2 processes)")
    sizes = Sizes(steps=args.steps, batch=args.batch, repeats=args.repeats, tiny=args.quick)
    b = sizes.batch
    # (label, launcher, global batch): strong scaling keeps the global batch, weak scaling the
    # per-process batch (the 1-process run is the baseline of both). --quick: the cheapest
    # launchers only (torchrun's agent alone takes ~5 s to start; 1 process in this one).
    if args.quick:
        jobs = [("1p", "inprocess", b), ("2p-slurm", "slurm", b)]
    else:
        jobs = [("1p", "single", b), ("2p", "torchrun", b), ("2p-weak", "torchrun", 2 * b)]

    print(machine_header("bench_ddp: DetCon-B pretraining, 1 vs 2 gloo processes, 1 thread each"))
    with tempfile.TemporaryDirectory(prefix="bench_ddp-") as tmp_name:
        tmp = Path(tmp_name)
        store = build_store(sizes, tmp)
        runs: dict[str, list[dict]] = {label: [] for label, _, _ in jobs}
        for k in range(sizes.repeats):
            for label, kind, batch in jobs if k % 2 == 0 else jobs[::-1]:
                runs[label].append(run_job(kind, sizes, store, batch, tmp / f"{label}-{k}"))
        if not args.quick:
            runs["2p-slurm"] = [run_job("slurm", sizes, store, b, tmp / "2p-slurm")]
        # the floor the 2-process differences are judged against, in --quick too: with AdamW
        # (the cpu profile's) a parameter whose gradient is zero (a bias before a BatchNorm)
        # takes a full-size step from rounding noise, so 3 steps already leave 1e-4 behind
        control = run_job(
            "inprocess" if args.quick else "single", sizes, store, b, tmp / "1p-2threads", threads=2
        )

    model = "tiny model, 32 px" if sizes.tiny else "cpu profile model, 64 px crops"
    print(
        f"DetCon-B, {model}, FH masks from a store, {sizes.steps} steps per run, "
        f"{sizes.repeats} interleaved repeat(s); step time = median over steps 2.. of the loop's "
        "own per-step timing on rank 0 (data loading excluded), then median over repeats"
    )
    step = {k: median([r["step_s"] for r in v]) for k, v in runs.items()}
    two = "2p" if "2p" in runs else "2p-slurm"
    rows = [
        (f"1 process, batch {b}: step s", f"{step['1p']:.3f}", f"{b / step['1p']:.1f} img/s"),
        (
            f"2 processes x {b // 2} ({'torchrun' if two == '2p' else 'submitit env'}): step s",
            f"{step[two]:.3f}",
            f"{b / step[two]:.1f} img/s",
        ),
    ]
    strong = median([p["step_s"] / (2 * q["step_s"]) for p, q in zip(runs["1p"], runs[two])])
    rows.append(("strong scaling efficiency thr2/(2 thr1)", f"{strong:.3f}", "", "1.0 ideal"))
    if "2p-weak" in runs:
        rows.append(
            (
                f"2 processes x {b} (weak, torchrun): step s",
                f"{step['2p-weak']:.3f}",
                f"{2 * b / step['2p-weak']:.1f} img/s",
            )
        )
        weak = median([p["step_s"] / q["step_s"] for p, q in zip(runs["1p"], runs["2p-weak"])])
        rows.append(("weak scaling efficiency t1/t2", f"{weak:.3f}", "", "1.0 ideal"))
    rows.append(
        (
            "2 processes: collectives per step (rank 0)",
            f"{runs[two][0]['collectives_per_step']:.0f}",
            f"{median([r['collective_s_per_step'] for r in runs[two]]):.3f} s in them",
        )
    )
    rows = [r + ("",) * (4 - len(r)) + ("info" if "efficiency" in r[0] else "",) for r in rows]
    ref = runs["1p"][0]
    compared = {"torchrun": runs["2p"][0]} if "2p" in runs else {}
    compared["submitit env"] = runs["2p-slurm"][0]
    rows += equality_rows(ref, compared, control)
    if sizes.repeats > 1:
        d = max_state_diff(runs["1p"][0]["state"], runs["1p"][-1]["state"])
        rows.append(("|1p run 1 - 1p run N| final state", f"{d:.2e}", "", "0", verdict(-d, 0)))
    print(format_table(rows, ("what", "median", "throughput", "target", "result")))
    walls = {k: median([r["job_wall_s"] for r in v]) for k, v in runs.items()}
    print("job wall time incl. start-up: " + ", ".join(f"{k} {v:.1f} s" for k, v in walls.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
