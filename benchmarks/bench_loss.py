"""Benchmark: ``detcon_loss`` forward+backward against lightly's ``DetConBLoss``.

    .venv/bin/python benchmarks/bench_loss.py            # ~1 minute on a 2-core machine
    .venv/bin/python benchmarks/bench_loss.py --quick    # seconds: the smoke test's run

lightly is a benchmark-only extra (``pip install -e '.[bench]' -c constraints.txt``), never a
runtime dependency; without it the table shows our timings and marks the comparison skipped.

Both losses get the same DetCon-B inputs: predictions that require grad, detached targets, one
id array per view (lightly takes one mask per view: ``pred_ids == target_ids``), temperature 0.1,
same-image negatives on, one negative group, one process. There both compute the release's
``byol_nce_detcon`` (lightly ports it; ours is checked against a float64 oracle in
tests/test_losses.py), so the values and the gradients must agree to float32 rounding: the
table gives the max abs differences and checks them against 1e-5 * max(1, |loss|).

Timing: one intra-op thread, a warm-up call of each, then repeats in which the two run
back to back (alternating which goes first), so machine contention hits both; medians, and the
ratio of the medians. The sizes are the issue's B=256, K=16, D=256 and the cpu profile's
(batch size, masks.num_samples, model.head_out from detcon/profiles/cpu.yaml).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, too

from _report import cpu_model  # noqa: E402

from detcon.config import load_pretrain_config  # noqa: E402
from detcon.losses import detcon_loss  # noqa: E402

TARGET_SPEEDUP = 1.5
TEMPERATURE = 0.1
NUM_IDS = 8  # ids drawn from [0, 8) per view: duplicates, and slots without a positive


@dataclass(frozen=True)
class Case:
    """One benchmarked size: name, batch B, masks per view K, embedding width D, repeats."""

    name: str
    b: int
    k: int
    d: int
    repeats: int


def make_inputs(case: Case, seed: int = 0) -> dict[str, Tensor]:
    """DetCon-B inputs: (B, K, D) predictions with grad, detached targets, (B, K) ids per view."""
    gen = torch.Generator().manual_seed(seed)
    shape = (case.b, case.k, case.d)
    out = {n: torch.randn(shape, generator=gen) for n in ("pred1", "pred2", "target1", "target2")}
    out["pred1"].requires_grad_()
    out["pred2"].requires_grad_()
    out["ids1"] = torch.randint(0, NUM_IDS, (case.b, case.k), generator=gen)
    out["ids2"] = torch.randint(0, NUM_IDS, (case.b, case.k), generator=gen)
    return out


def ours(x: dict[str, Tensor]) -> Tensor:
    """``detcon_loss`` in lightly's configuration (see the module docstring)."""
    return detcon_loss(
        pred1=x["pred1"],
        pred2=x["pred2"],
        target1=x["target1"],
        target2=x["target2"],
        pred_ids1=x["ids1"],
        pred_ids2=x["ids2"],
        target_ids1=x["ids1"],
        target_ids2=x["ids2"],
        temperature=TEMPERATURE,
        same_image_negatives=True,
        negative_groups=1,
        gather_targets=False,
    )


def lightly_loss() -> Callable[[dict[str, Tensor]], Tensor] | None:
    """lightly's ``DetConBLoss`` as a function of the inputs, or None if lightly is missing."""
    try:
        from lightly.loss.detcon_loss import DetConBLoss
    except ImportError:
        return None
    module = DetConBLoss(temperature=TEMPERATURE, gather_distributed=False)
    return lambda x: module(
        x["pred1"], x["pred2"], x["target1"], x["target2"], x["ids1"], x["ids2"]
    )


def loss_and_grads(fn: Callable[[dict[str, Tensor]], Tensor], x: dict[str, Tensor]):
    """The loss value and the gradients of the two predictions."""
    x["pred1"].grad = x["pred2"].grad = None
    loss = fn(x)
    loss.backward()
    return loss.item(), x["pred1"].grad.clone(), x["pred2"].grad.clone()


def time_once(fn: Callable[[dict[str, Tensor]], Tensor], x: dict[str, Tensor]) -> float:
    """Seconds for one forward + backward."""
    x["pred1"].grad = x["pred2"].grad = None
    start = time.perf_counter()
    fn(x).backward()
    return time.perf_counter() - start


def run_case(case: Case, theirs: Callable | None) -> dict[str, object]:
    """Value agreement and interleaved medians for one size."""
    x = make_inputs(case)
    value, g1, g2 = loss_and_grads(ours, x)  # also the warm-up of ours
    row: dict[str, object] = {"case": case, "loss": value}
    fns = {"ours": ours}
    if theirs is not None:
        value_l, g1_l, g2_l = loss_and_grads(theirs, x)  # and of theirs
        row["value_diff"] = abs(value - value_l)
        row["grad_diff"] = max((g1 - g1_l).abs().max().item(), (g2 - g2_l).abs().max().item())
        fns["lightly"] = theirs
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(case.repeats):
        order = list(fns) if rep % 2 == 0 else list(reversed(fns))
        for name in order:
            times[name].append(time_once(fns[name], x))
    for name, ts in times.items():
        row[name] = statistics.median(ts)
    return row


def fmt_ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f} ms"


def print_table(rows: list[dict[str, object]], lightly_version: str | None, quick: bool) -> bool:
    """Print the figures; returns whether the values agreed wherever lightly was compared."""
    head = (
        f"{'case':<22} {'B,K,D':<12} {'|dL|':>9} {'max|dgrad|':>11} {'detcon_loss':>12} "
        f"{'lightly':>12} {'speedup':>8} {'target':>7}  result"
    )
    print("detcon_loss vs lightly DetConBLoss: forward+backward, median over interleaved repeats")
    print(head)
    print("-" * len(head))
    all_agree = True
    for row in rows:
        case = row["case"]
        dims = f"{case.b},{case.k},{case.d}"
        theirs = row.get("lightly")
        if theirs is None:
            result, diff, gdiff, ratio = "skip (lightly not installed)", "n/a", "n/a", "n/a"
        else:
            tol = 1e-5 * max(1.0, abs(row["loss"]))
            values_ok = row["value_diff"] <= tol and row["grad_diff"] <= tol
            speedup = theirs / row["ours"]
            fast = speedup >= TARGET_SPEEDUP
            result = ("pass" if fast else "MISS") + ("" if values_ok else " (VALUES DIFFER)")
            all_agree &= values_ok
            diff, gdiff = f"{row['value_diff']:.1e}", f"{row['grad_diff']:.1e}"
            ratio = f"{speedup:.2f}x"
        print(
            f"{case.name:<22} {dims:<12} {diff:>9} {gdiff:>11} {fmt_ms(row['ours']):>12} "
            f"{fmt_ms(theirs):>12} {ratio:>8} {TARGET_SPEEDUP:>6.1f}x  {result}"
        )
    print(
        f"repeats: {', '.join(str(r['case'].repeats) for r in rows)}; values must agree to "
        "1e-5 * max(1, |loss|)"
        + ("; --quick: smoke-test sizes, timings not meaningful" if quick else "")
    )
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} thread), lightly {lightly_version or 'not installed'}, "
        f"python {platform.python_version()}"
    )
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    return all_agree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    cpu = load_pretrain_config(profile="cpu")
    profile = ("cpu profile", cpu.optim.batch_size, cpu.masks.num_samples, cpu.model.head_out)
    if args.quick:
        cases = [Case(*profile, repeats=3), Case("small", 8, 4, 16, repeats=3)]
    else:
        cases = [Case("issue size", 256, 16, 256, repeats=7), Case(*profile, repeats=41)]

    theirs = lightly_loss()
    version = None
    if theirs is not None:
        import lightly

        version = lightly.__version__
    rows = [run_case(case, theirs) for case in cases]
    # A speed miss is a figure to report; values that disagree are an error (exit status 1).
    return 0 if print_table(rows, version, args.quick) else 1


if __name__ == "__main__":
    raise SystemExit(main())
