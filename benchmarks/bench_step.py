"""DetCon overhead: one training step of DetCon-B against BYOL, same backbone, batch and data.

What is timed: :func:`detcon.train.train_step`, the step of the one training loop (lr schedule,
the step's random draws, photometric augmentation of both views, forward of online and target
networks, mask pooling, loss, backward, LARS, target EMA), model-only: the batches (uint8 views
and masks, from the real pretraining dataset) are generated before timing and held in memory.

The methods differ only in what DetCon adds: DetCon-B uses the profile's FH masks and K=16
sampled masks per view with the contrastive detection loss; BYOL uses one whole-image mask
(K=1) and the regression loss. Both see the same images and crops (the views are seeded by
(seed, epoch, image)). DetCon-S and SimCLR rows are for information.

Measurement: one intra-op thread, warm-up steps, then rounds of one step per method in turn
(A, B, C, D, A, B, ...; the order rotates every round) so machine contention hits every method
alike; medians of the per-step times; a ratio is the median over rounds of the per-round ratio
(steps timed a moment apart). Wall time decides; the CPU time of the (single) thread is shown
too, as it is less sensitive to other processes. Target: DetCon-B / BYOL <= 1.05 at the
cpu profile's sizes (batch 32, 64 px views, small ResNet, 512->128 heads, K=16).

``--profile`` adds a torch.profiler table of DetCon-B and BYOL steps (self CPU time by op).
``--compile`` times the steps with the backbones ``torch.compile``d (``PretrainModel.
compile_networks``; on a CPU inductor needs a C++ compiler) and prints each method's first step,
compilation included: what a run of N steps gains is N times the step's saving less that.
``--set KEY=VALUE`` overrides a config field for every method, e.g. ``--set train.precision=bf16
--set train.channels_last=true`` (bf16 autocast on the CPU: docs/performance.md §1).

Run: ``.venv/bin/python benchmarks/bench_step.py [--quick] [--rounds N] [--profile] [--set K=V]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import at_least, format_table, given, machine_header, median, verdict  # noqa: E402

from detcon.config import (  # noqa: E402
    PretrainConfig,
    load_pretrain_config,
    merge,
    parse_dotted,
)
from detcon.data.pretrain import StepBatchSampler, build_pretrain_dataset, collate_views  # noqa: E402
from detcon.train import (  # noqa: E402
    StepContext,
    build_model,
    build_optimizer,
    retain_freed_host_memory,
    train_step,
)

TARGET_RATIO = 1.05
# method -> overrides giving it the same data as DetCon-B (the image-level baselines need one
# whole-image mask, K=1).
METHODS = {
    "detcon_b": {},
    "byol": {"masks": {"source": "image", "num_samples": 1}},
    "detcon_s": {},
    "simclr": {"masks": {"source": "image", "num_samples": 1}},
}
# --quick: toy sizes, seconds.
QUICK = {
    "data": {"num_images": 16, "scene_size": 32},
    "masks": {"fh_min_size": 16},
    "augment": {"crop_size": 32},
    "model": {"small_width": 4, "head_hidden": 32, "head_out": 16},
    "optim": {"batch_size": 4},
}


def method_config(method: str, base: dict) -> PretrainConfig:
    """The cpu-profile config of ``method`` with the shared ``base`` overrides."""
    over = merge(merge(base, METHODS[method]), {"method": method, "train": {"threads": 1}})
    return load_pretrain_config(over, profile="cpu")


def make_batches(cfg: PretrainConfig, n: int) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` batches the training loop would see (views and masks in memory)."""
    dataset = build_pretrain_dataset(cfg)
    sampler = StepBatchSampler(len(dataset), cfg.optim.batch_size, cfg.seed, 0, n)
    return [collate_views([dataset[key] for key in keys]) for keys in sampler]


class Runner:
    """One method's model, optimiser and pre-generated batches; ``step()`` times one step."""

    def __init__(self, method: str, base: dict, n_batches: int) -> None:
        self.method = method
        self.cfg = method_config(method, base)
        device = torch.device("cpu")
        self.batches = make_batches(self.cfg, n_batches)
        self.ctx = StepContext.for_run(self.cfg, device, self.cfg.data.num_images)
        self.model = build_model(self.cfg, device)
        self.optimizer = build_optimizer(self.cfg, self.model)
        self.i = 0
        self.times: list[float] = []  # wall seconds per step
        self.cpu_times: list[float] = []  # this thread's CPU seconds per step

    def step(self, record: bool = True) -> None:
        batch = self.batches[self.i % len(self.batches)]  # cycled
        t0, c0 = time.perf_counter(), time.thread_time()
        train_step(self.model, self.optimizer, batch, self.i, self.ctx)
        dt, dc = time.perf_counter() - t0, time.thread_time() - c0
        self.i += 1
        if record:
            self.times.append(dt)
            self.cpu_times.append(dc)


def run_interleaved(runners: Sequence[Runner], warmup: int, rounds: int) -> None:
    """Warm every runner up, then ``rounds`` rounds of one step each, order rotated per round."""
    for _ in range(warmup):
        for r in runners:
            r.step(record=False)
    for k in range(rounds):
        shift = k % len(runners)
        for r in list(runners[shift:]) + list(runners[:shift]):
            r.step()


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of a[k] / b[k]: each ratio compares steps timed a moment apart, so
    contention that lasts a round cancels."""
    if len(a) != len(b):
        raise ValueError(f"paired_ratio: {len(a)} and {len(b)} rounds; expected the same number")
    return median([x / y for x, y in zip(a, b)])


def profile_table(runner: Runner, steps: int, rows: int = 15) -> str:
    """torch.profiler: self CPU time by op over ``steps`` steps of ``runner``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            runner.step(record=False)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes, a few rounds (smoke)")
    parser.add_argument(
        "--rounds", type=at_least(1), default=None, help="timed rounds (default 40)"
    )
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the backbones (the first step's time, compilation included, printed)",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field for every method, e.g. --set train.precision=bf16",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    retain_freed_host_memory()  # as pretrain() does
    base = merge(QUICK if args.quick else {}, parse_dotted(args.set or []))
    rounds = given(args.rounds, 3 if args.quick else 40)
    warmup = 1 if args.quick else 3

    print(machine_header("bench_step: DetCon-B training step vs BYOL (model-only, one thread)"))
    runners = [Runner(m, base, n_batches=2 if args.quick else 4) for m in METHODS]
    if args.compile:
        for r in runners:
            r.model.compile_networks()
            t0 = time.perf_counter()
            r.step(record=False)
            print(f"compile: {r.method}'s first step, compilation included: "
                  f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    c = runners[0].cfg
    print(
        f"sizes: batch {c.optim.batch_size}, {c.augment.crop_size} px views, backbone "
        f"{c.model.backbone} (width {c.model.small_width}, stride {c.model.small_stride}), heads "
        f"{c.model.head_hidden}->{c.model.head_out}, K={c.masks.num_samples} "
        f"({c.masks.source} masks), {c.train.precision}"
        f"{', channels_last' if c.train.channels_last else ''}"
        f"{', torch.compile' if args.compile else ''}; {warmup} warm-up + {rounds} "
        "interleaved rounds"
    )
    run_interleaved(runners, warmup, rounds)
    byol = next(r for r in runners if r.method == "byol")
    wall = {r.method: median(r.times) for r in runners}
    cpu = {r.method: median(r.cpu_times) for r in runners}
    table = []
    for r in runners:
        m = r.method
        ratio = paired_ratio(r.times, byol.times)
        cpu_ratio = paired_ratio(r.cpu_times, byol.cpu_times)
        target, result = "", ""
        if m == "detcon_b":
            target, result = f"<= {TARGET_RATIO}", verdict(ratio, TARGET_RATIO, False)
        table.append(
            [
                f"{m} step",
                f"{wall[m] * 1e3:.1f} ms",
                f"{r.cfg.optim.batch_size / wall[m]:.0f} img/s",
                f"{ratio:.3f}",
                f"{cpu[m] * 1e3:.1f} ms",
                f"{cpu_ratio:.3f}",
                target,
                result,
            ]
        )
    header = ["what", "median wall", "throughput", "time / byol", "median cpu", "cpu time / byol"]
    print(format_table(table, [*header, "target", "result"]))
    print(
        "ratios: median over rounds of the per-round ratio (wall decides the result; cpu: this "
        "thread's CPU time, less sensitive to other processes)"
    )
    if args.profile:
        steps = 1 if args.quick else 5
        for r in runners[:2]:
            print(f"\nprofile: {r.method}, {steps} steps")
            print(profile_table(r, steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
