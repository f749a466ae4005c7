"""GPU path: DetCon-B vs BYOL training steps on one accelerator, model-only and end to end.

One prepared script of a few minutes that prints every figure of the GPU item of the performance
issue: on one GPU, DetCon-B with a ResNet-50 at 224 px (batch 128 by default) and BYOL in the
same harness, images/s model-only and end to end, peak memory, the DetCon-B / BYOL ratio, each
under a ladder of speed variants:

* ``fp32`` -- the loop's defaults; ``bf16`` -- bf16 autocast (``train.precision``);
* ``+cl`` -- channels_last model and inputs (``train.channels_last``);
* ``+bench`` -- ``torch.backends.cudnn.benchmark`` (not a config field; see the report);
* ``+foreach`` -- LARS and the target EMA with multi-tensor kernels (``SpeedOptions.foreach``,
  identical arithmetic);
* ``+compile`` -- ``torch.compile`` of the backbones (``SpeedOptions.compile``); a compile
  failure becomes a row saying so, the script goes on;
* ``nodedup`` -- the heads without the distinct-mask saving, to show what it is worth.

What is timed: :func:`detcon.train.train_step`, the step of the one training loop (lr, the
step's random draws, photometric augmentation of both views on the device, forward of online and
target networks, masks, loss, backward, LARS, EMA).

* **model-only**: two batches made by the real pipeline are held on the device (uint8 views,
  masks) and cycled; DetCon-B and BYOL run in alternating blocks of steps (A, B, B, A, ...),
  timed between ``torch.cuda.synchronize`` calls; images/s is the median over blocks, the ratio
  the median over rounds of the per-round ratio.
* **end to end**: the real data loader of the training loop (:func:`detcon.train.build_loader`,
  ``--workers`` processes, pinned memory) feeding the same step, one method after the other:
  an ImageNet-like folder of 400x350 JPEGs (synthetic scenes) with FH masks precomputed into a
  mask store, as the paper profile reads them.
* **peak memory**: ``torch.cuda.max_memory_allocated`` during a method's warm-up, minus what was
  allocated before its model was built (weights, optimiser state and activations of that method).

Targets (one H100): DetCon-B model-only >= 1,000 img/s (aim 1,500) and >= 0.9x BYOL.

Run on a GPU machine (about 3-5 minutes including compilation)::

    .venv/bin/python benchmarks/bench_gpu.py [--batch 128] [--size 224] [--workers 15]

Verify anywhere, at toy sizes in seconds (``--quick`` also skips the compile variant)::

    .venv/bin/python benchmarks/bench_gpu.py --tiny --device cpu [--quick]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import at_least, format_table, given, machine_header, median, verdict  # noqa: E402

from detcon.config import PretrainConfig, load_pretrain_config, merge  # noqa: E402
from detcon.train import (  # noqa: E402
    SpeedOptions,
    StepContext,
    build_loader,
    build_model,
    build_optimizer,
    retain_freed_host_memory,
    train_step,
)

TARGET_IMG_S = 1000.0
AIM_IMG_S = 1500.0
TARGET_VS_BYOL = 0.9
METHODS = ("detcon_b", "byol")
T0 = time.perf_counter()


@dataclass(frozen=True)
class Variant:
    """One rung of the speed ladder."""

    name: str
    precision: str = "bf16"
    channels_last: bool = True
    cudnn_benchmark: bool = True
    foreach: bool = True
    compile: bool = False
    dedup_heads: bool = True


VARIANTS = (
    Variant("fp32", "fp32", False, False, False),
    Variant("bf16", "bf16", False, False, False),
    Variant("bf16+cl", "bf16", True, False, False),
    Variant("bf16+cl+bench", "bf16", True, True, False),
    Variant("bf16+cl+bench+foreach"),
    Variant("bf16+cl+bench+foreach nodedup", dedup_heads=False),
    Variant("bf16+cl+bench+foreach+compile", compile=True),
)
E2E_VARIANTS = ("bf16+cl+bench+foreach", "bf16+cl+bench+foreach+compile")


@dataclass(frozen=True)
class Sizes:
    """Problem and measurement sizes (``--tiny`` shrinks every one)."""

    backbone: str
    size: int
    batch: int
    head_hidden: int
    head_out: int
    small_width: int
    jpeg_hw: tuple[int, int]
    unique_images: int
    num_images: int
    fh_min_size: int
    warmup: int
    rounds: int
    block: int
    e2e_warmup: int
    e2e_steps: int


@dataclass
class Row:
    """The figures of one variant (``None`` where not measured)."""

    variant: str
    kind: str  # "model-only" or "end to end"
    img_s: dict[str, float] = field(default_factory=dict)
    ratio: float | None = None
    peak_gib: dict[str, float] = field(default_factory=dict)
    note: str = ""


def log(msg: str) -> None:
    """A progress line with the elapsed time (flushed: the run may be cut off by a timeout)."""
    print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- data


def write_jpeg_folder(root: Path, sizes: Sizes) -> Path:
    """``unique_images`` synthetic scenes as ``root/c0/<i>.JPEG`` (q=90), hard-linked (or
    copied) up to ``num_images`` files: an ImageNet-like folder without a download."""
    from PIL import Image

    from detcon.data.synthetic import generate_scene

    folder = root / "c0"
    folder.mkdir(parents=True, exist_ok=True)
    h, w = sizes.jpeg_hw
    for i in range(sizes.unique_images):
        image = generate_scene(i, seed=0, split="train", size=max(h, w)).image[:h, :w]
        Image.fromarray(np.ascontiguousarray(image)).save(folder / f"{i:05d}.JPEG", quality=90)
    for i in range(sizes.unique_images, sizes.num_images):
        src, dst = folder / f"{i % sizes.unique_images:05d}.JPEG", folder / f"{i:05d}.JPEG"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    return root


def base_overrides(sizes: Sizes, root: Path, store: Path, workers: int, device: str) -> dict:
    """Paper-profile overrides shared by every method and variant."""
    return {
        "data": {"dataset": "imagefolder", "root": str(root), "num_workers": workers},
        "masks": {"source": "fh", "store": str(store), "fh_min_size": sizes.fh_min_size},
        "augment": {"crop_size": sizes.size},
        "model": {
            "backbone": sizes.backbone,
            "small_width": sizes.small_width,
            "head_hidden": sizes.head_hidden,
            "head_out": sizes.head_out,
        },
        # Enough epochs that the lr schedule is nowhere near its end during the benchmark.
        "optim": {"batch_size": sizes.batch, "epochs": 1000},
        "train": {"device": device},
    }


def method_config(method: str, base: dict, variant: Variant) -> PretrainConfig:
    """The config of ``method`` under ``variant`` (BYOL: one whole-image mask, no store)."""
    over = merge(
        base,
        {
            "method": method,
            "train": {"precision": variant.precision, "channels_last": variant.channels_last},
        },
    )
    if method in ("byol", "simclr"):
        over = merge(over, {"masks": {"source": "image", "num_samples": 1, "store": ""}})
    return load_pretrain_config(over, profile="paper")


def resident_batches(
    cfg: PretrainConfig, n: int, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` batches of the real pipeline, moved to ``device`` once."""
    from detcon.data.pretrain import build_pretrain_dataset

    dataset = build_pretrain_dataset(cfg)
    loader = build_loader(cfg, dataset, 0, n, torch.device("cpu"))
    return [{k: v.to(device) for k, v in batch.items()} for batch in loader]


# --------------------------------------------------------------------------- measurement


class Runner:
    """One method's model, optimiser, step context and resident batches under one variant."""

    def __init__(
        self,
        method: str,
        cfg: PretrainConfig,
        variant: Variant,
        batches: list[dict[str, torch.Tensor]],
        device: torch.device,
    ) -> None:
        self.method, self.cfg, self.device, self.batches = method, cfg, device, batches
        self.speed = SpeedOptions(
            foreach=variant.foreach, compile=variant.compile, dedup_heads=variant.dedup_heads
        )
        self.base_bytes = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        self.model = build_model(cfg, device, speed=self.speed)
        self.optimizer = build_optimizer(cfg, self.model, self.speed)
        num_images = cfg.optim.batch_size * 64  # only sets where the schedule is
        self.ctx = StepContext.for_run(cfg, device, num_images, speed=self.speed)
        self.step_index = 0
        self.peak_gib = math.nan

    def step(self, batch: dict[str, torch.Tensor] | None = None) -> None:
        if batch is None:
            batch = self.batches[self.step_index % len(self.batches)]
        train_step(self.model, self.optimizer, batch, self.step_index, self.ctx)
        self.step_index += 1

    def warm_up(self, steps: int) -> None:
        """``steps`` untimed steps (compilation happens here); records the peak memory."""
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        for _ in range(steps):
            self.step()
        sync(self.device)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) - self.base_bytes
            self.peak_gib = peak / 2**30

    def block(self, steps: int) -> float:
        """Images/s over ``steps`` steps, between device synchronisations."""
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return steps * self.cfg.optim.batch_size / (time.perf_counter() - t0)


def measure_model_only(
    runners: Sequence[Runner], rounds: int, block: int
) -> tuple[dict[str, float], float]:
    """Alternating blocks (A, B, B, A, ...): median images/s per method, median paired ratio of
    the first method's images/s to the second's."""
    rates: dict[str, list[float]] = {r.method: [] for r in runners}
    for k in range(rounds):
        order = runners if k % 2 == 0 else list(reversed(runners))
        for r in order:
            rates[r.method].append(r.block(block))
    a, b = (rates[r.method] for r in runners)
    ratio = median([x / y for x, y in zip(a, b)])
    return {m: median(v) for m, v in rates.items()}, ratio


def measure_end_to_end(runner: Runner, warmup: int, steps: int) -> float:
    """Images/s of ``steps`` steps fed by the real loader, after ``warmup`` steps of it."""
    from detcon.data.pretrain import build_pretrain_dataset

    cfg = runner.cfg
    dataset = build_pretrain_dataset(cfg)
    start = runner.step_index
    loader = build_loader(cfg, dataset, start, start + warmup + steps, runner.device)
    it = iter(loader)
    for _ in range(warmup):
        runner.step(next(it))
    sync(runner.device)
    t0 = time.perf_counter()
    for batch in it:
        runner.step(batch)
    sync(runner.device)
    return steps * cfg.optim.batch_size / (time.perf_counter() - t0)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _failure(exc: BaseException) -> str:
    """One line naming an exception, its full traceback on stderr for the log."""
    traceback.print_exception(exc, file=sys.stderr)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"failed: {type(exc).__name__}: {first[:160]}"


def run_variant(
    variant: Variant,
    base: dict,
    batches: dict[str, list[dict[str, torch.Tensor]]],
    device: torch.device,
    sizes: Sizes,
    e2e: bool,
    out: list[Row],
) -> None:
    """Model-only (and, if asked, end-to-end) rows of ``variant``; failures become rows."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    row = Row(variant.name, "model-only")
    runners: list[Runner] = []
    try:
        for method in METHODS:
            cfg = method_config(method, base, variant)
            runner = Runner(method, cfg, variant, batches[method], device)
            slow = " with torch.compile: may take minutes" if variant.compile else ""
            log(f"{variant.name}: {method} warm-up ({sizes.warmup} steps{slow})")
            runner.warm_up(sizes.warmup)
            row.peak_gib[method] = runner.peak_gib
            runners.append(runner)
        log(f"{variant.name}: timing {sizes.rounds} rounds x {sizes.block} steps per method")
        row.img_s, row.ratio = measure_model_only(runners, sizes.rounds, sizes.block)
    except Exception as exc:  # noqa: BLE001 - a failed variant (compile, OOM) is a result
        row.note = _failure(exc)
    out.append(row)
    print_row(row)
    if e2e and not row.note:
        e2e_row = Row(variant.name, "end to end")
        try:
            for r in runners:
                log(f"{variant.name}: {r.method} end to end ({r.cfg.data.num_workers} workers)")
                e2e_row.img_s[r.method] = measure_end_to_end(r, sizes.e2e_warmup, sizes.e2e_steps)
            e2e_row.ratio = e2e_row.img_s["detcon_b"] / e2e_row.img_s["byol"]
        except Exception as exc:  # noqa: BLE001
            e2e_row.note = _failure(exc)
        out.append(e2e_row)
        print_row(e2e_row)
    del runners
    free(device)


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, spec: str) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (format(value, spec))
    )


def table_rows(rows: Sequence[Row]) -> list[list[str]]:
    return [
        [
            f"{r.variant} ({r.kind})",
            _fmt(r.img_s.get("detcon_b"), ".1f"),
            _fmt(r.img_s.get("byol"), ".1f"),
            _fmt(r.ratio, ".3f"),
            _fmt(r.peak_gib.get("detcon_b"), ".2f"),
            _fmt(r.peak_gib.get("byol"), ".2f"),
            r.note,
        ]
        for r in rows
    ]


HEADER = ["variant", "DetCon-B img/s", "BYOL img/s", "img/s D/B", "peak GiB D", "peak GiB B"]


def print_row(row: Row) -> None:
    print(format_table(table_rows([row]), [*HEADER, "note"]), flush=True)


def print_summary(rows: Sequence[Row], tiny: bool) -> None:
    print(
        "\nall figures (model-only img/s: median over blocks, D/B: median over rounds of "
        "DetCon-B / BYOL images/s; end to end: one run per method after its warm-up, D/B their "
        "ratio; peak: GiB allocated by each method, D = DetCon-B, B = BYOL):"
    )
    print(format_table(table_rows(rows), [*HEADER, "note"]))
    measured = [r for r in rows if r.kind == "model-only" and "detcon_b" in r.img_s]
    targets = []
    if measured:
        best = max(measured, key=lambda r: r.img_s["detcon_b"])
        fp32 = next((r for r in measured if r.variant == "fp32"), None)
        rate, ratio = best.img_s["detcon_b"], best.ratio or math.nan

        def result(value: float, target: float) -> str:
            return "n/a (tiny)" if tiny else verdict(value, target)

        targets += [
            [
                f"DetCon-B model-only img/s (best: {best.variant})",
                f"{rate:.1f}",
                f">= {TARGET_IMG_S:.0f} (aim {AIM_IMG_S:.0f})",
                result(rate, TARGET_IMG_S),
            ],
            [
                f"DetCon-B / BYOL model-only ({best.variant})",
                f"{ratio:.3f}",
                f">= {TARGET_VS_BYOL}",
                result(ratio, TARGET_VS_BYOL),
            ],
        ]
        if fp32 is not None:
            targets.append(
                ["speed-up of best over fp32", f"{rate / fp32.img_s['detcon_b']:.2f}x", "", ""]
            )
        eager = next((r for r in measured if r.variant == "bf16+cl+bench+foreach"), None)
        comp = next((r for r in measured if r.variant.endswith("+compile")), None)
        if eager is not None and comp is not None:
            gain = comp.img_s["detcon_b"] / eager.img_s["detcon_b"]
            targets.append(["torch.compile speed-up (DetCon-B)", f"{gain:.2f}x", "", ""])
    e2e = [r for r in rows if r.kind == "end to end" and "detcon_b" in r.img_s]
    for r in e2e:
        targets.append([f"DetCon-B end to end ({r.variant})", f"{r.img_s['detcon_b']:.1f}", "", ""])
    print("\ntargets:")
    print(format_table(targets, ["what", "value", "target", "result"]))


# --------------------------------------------------------------------------- main


def make_sizes(args: argparse.Namespace, workers: int = 1) -> Sizes:
    """Sizes of ``args``; the end-to-end lengths follow the ``workers`` loader processes."""
    if args.tiny:
        return Sizes(
            backbone=given(args.backbone, "small"),
            size=given(args.size, 32),
            batch=given(args.batch, 4),
            head_hidden=32,
            head_out=16,
            small_width=8,
            jpeg_hw=(40, 48),
            unique_images=4,
            num_images=16,
            fh_min_size=16,
            warmup=given(args.warmup, 2),
            rounds=given(args.rounds, 2),
            block=given(args.block, 1),
            e2e_warmup=1,
            e2e_steps=given(args.e2e_steps, 2),
        )
    return Sizes(
        backbone=given(args.backbone, "resnet50"),
        size=given(args.size, 224),
        batch=given(args.batch, 128),
        head_hidden=4096,
        head_out=256,
        small_width=32,
        jpeg_hw=(350, 400),
        unique_images=64,
        num_images=512,
        fh_min_size=1000,
        warmup=given(args.warmup, 4),
        rounds=given(args.rounds, 4),
        block=given(args.block, 4),
        # Each worker keeps two batches ready (the loader's prefetch), all made in one burst at
        # the start: the warm-up uses that burst up and the timed steps are several rounds of
        # every worker, so the figure is the loader's steady rate, not its head start.
        e2e_warmup=max(3, 2 * workers),
        e2e_steps=given(args.e2e_steps, max(12, 4 * workers)),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [v.name for v in VARIANTS]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="toy sizes (small backbone, 32 px)")
    p.add_argument("--quick", action="store_true", help="skip the compile variant (smoke test)")
    p.add_argument("--backbone", default=None, help="default resnet50 (tiny: small)")
    p.add_argument("--size", type=at_least(1), default=None, help="view size in px (default 224)")
    p.add_argument("--batch", type=at_least(1), default=None, help="batch per GPU (default 128)")
    p.add_argument(
        "--workers", type=at_least(0), default=None, help="loader workers (default cores-1)"
    )
    p.add_argument("--warmup", type=at_least(0), default=None, help="untimed steps per method")
    p.add_argument(
        "--rounds", type=at_least(1), default=None, help="timed rounds (A,B / B,A blocks)"
    )
    p.add_argument("--block", type=at_least(1), default=None, help="steps per timed block")
    p.add_argument(
        "--e2e-steps",
        type=at_least(1),
        default=None,
        help="timed end-to-end steps (default: 4 per loader worker, at least 12)",
    )
    p.add_argument("--variants", default=",".join(names), help=f"comma list of: {names}")
    p.add_argument("--e2e-variants", default=",".join(E2E_VARIANTS), help="'' for none")
    p.add_argument(
        "--budget-s", type=float, default=290.0, help="skip variants that would start later"
    )
    args = p.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v and v not in names]
    unknown += [v for v in args.e2e_variants.split(",") if v and v not in names]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; expected names from {names}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "bench_gpu: --device cuda but no CUDA device is available; on a machine without a "
            "GPU verify the script with --tiny --device cpu"
        )
    workers = args.workers
    if workers is None:
        workers = 1 if args.tiny else max(1, min(16, (os.cpu_count() or 2) - 1))
    sizes = make_sizes(args, workers)
    if device.type == "cpu":
        torch.set_num_threads(1)
    retain_freed_host_memory()  # as pretrain() does
    chosen = [v for v in VARIANTS if v.name in args.variants.split(",")]
    if args.quick:
        chosen = [v for v in chosen if not v.compile]
    e2e_names = set(filter(None, args.e2e_variants.split(",")))

    print(machine_header("bench_gpu: DetCon-B vs BYOL training steps (model-only, end to end)"))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(
            f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA "
            f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; TF32: matmul "
            f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32} "
            "(torch defaults, as the training loop leaves them)"
        )
    else:
        print("device: cpu (a check of the script, not a GPU measurement)")
    print(
        f"sizes: {sizes.backbone} at {sizes.size} px, batch {sizes.batch}, heads "
        f"{sizes.head_hidden}->{sizes.head_out}, K=16 FH masks (BYOL: one whole-image mask); "
        f"{sizes.warmup} warm-up steps, {sizes.rounds} rounds x {sizes.block} steps; end to end: "
        f"{workers} workers, {sizes.e2e_steps} steps; variants: {[v.name for v in chosen]}",
        flush=True,
    )

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        from detcon.data.readers import ImageFolderDataset
        from detcon.masks.store import precompute_store

        root, store = Path(tmp) / "images", Path(tmp) / "store"
        log(f"writing {sizes.num_images} JPEGs ({sizes.jpeg_hw[1]}x{sizes.jpeg_hw[0]})")
        write_jpeg_folder(root, sizes)
        base = base_overrides(sizes, root, store, workers, args.device)
        mask_cfg = method_config("detcon_b", base, VARIANTS[0]).masks
        log(f"precomputing FH masks into a store ({max(1, workers)} processes)")
        precompute_store(
            ImageFolderDataset(root), mask_cfg, store, workers=max(1, workers), progress=False
        )
        log("making the resident batches")
        batches = {
            m: resident_batches(method_config(m, base, VARIANTS[0]), 2, device) for m in METHODS
        }
        for variant in chosen:
            if time.perf_counter() - T0 > args.budget_s:
                rows.append(Row(variant.name, "model-only", note="skipped: --budget-s reached"))
                print_row(rows[-1])
                continue
            run_variant(variant, base, batches, device, sizes, variant.name in e2e_names, rows)
        del batches
    print_summary(rows, args.tiny)
    log("done")
    if not any(r.kind == "model-only" and r.img_s for r in rows):
        print("bench_gpu: no variant was measured (see the notes above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
