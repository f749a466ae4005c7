"""Smoke tests of the benchmark scripts under benchmarks/: each runs at toy size (``--quick`` /
``--tiny``) and prints its tables. No timing is asserted: the figures belong in the scripts'
output (docs/performance.md), not in tests. Where a script checks a result itself it exits 1 on
a mismatch, so a zero exit status also means that check held:

- bench_augment: the optimised ``TwoViewGeometry`` gives the views and masks of the plain tv2
  ``Compose`` reference it is timed against;
- bench_loss: ``detcon_loss`` and lightly's ``DetConBLoss`` agree in value and gradient (without
  lightly installed it still times ``detcon_loss`` and marks the comparison skipped);
- bench_masks prints "NO" when the store does not hold exactly skimage's labels;
- bench_ddp reports the 2-process vs 1-process equality (tests/test_train.py asserts it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, timeout: float = 120) -> str:
    """stdout of ``benchmarks/<script> <args>``, which must exit 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def test_bench_augment_quick_prints_tables():
    out = _run("bench_augment.py", "--quick")
    for needle in (
        "machine:",
        "date:",
        "== paper profile sizes",
        "== cpu profile sizes",
        "== batched photometric",
        "x16 cores",
        "identical views and masks to the tv2 reference on the inputs checked: yes",
    ):
        assert needle in out, (needle, out)
    verdicts = [line for line in out.splitlines() if line.rstrip().endswith(("pass", "miss"))]
    ratios = [line for line in verdicts if ">= 0.8x" in line]
    assert len(ratios) == 10, out  # 7 paper-size + 3 cpu-profile comparisons against BYOL tv2
    assert len(verdicts) - len(ratios) == 5, out  # can 16 cores feed the GPU: 4 loader rows + 1


def test_bench_ddp_quick_prints_table():
    out = _run("bench_ddp.py", "--quick", timeout=180)
    for needle in ("machine:", "date:", "what", "target", "scaling efficiency", "img/s"):
        assert needle in out, (needle, out)
    rows = [line for line in out.splitlines() if line.startswith("|1p - 2p submitit env|")]
    assert len(rows) == 4, out
    for row in rows:
        assert row.rstrip().endswith(("pass", "miss")), row


def test_bench_loss_quick_prints_table():
    out = _run("bench_loss.py", "--quick")
    for needle in ("detcon_loss", "speedup", "target", "cpu profile", "machine:", "date:"):
        assert needle in out, (needle, out)
    rows = [line for line in out.splitlines() if line.startswith(("cpu profile", "small"))]
    assert len(rows) == 2, out
    for row in rows:
        assert "ms" in row and ("pass" in row or "MISS" in row or "skip" in row), row


def test_bench_masks_quick_prints_table():
    out = _run("bench_masks.py", "--quick")
    for needle in ("machine:", "date:", "what", "ratio", "target", "array workers N", "2-3 days"):
        assert needle in out, (needle, out)
    assert out.count("store holds skimage's labels exactly: yes") == 2, out
    rows = [line for line in out.splitlines() if line.startswith(("imagenet store", "cpu store"))]
    assert len(rows) == 4, out
    for row in rows:
        assert row.rstrip().endswith(("pass", "miss")), row


def test_bench_step_quick_prints_the_table():
    out = _run("bench_step.py", "--quick", "--rounds", "2")
    assert "machine:" in out and "time / byol" in out and "fp32;" in out
    for method in ("detcon_b", "byol", "detcon_s", "simclr"):
        assert f"{method} step" in out


def test_bench_step_set_overrides_every_method(monkeypatch):
    args = ("--set", "train.precision=bf16", "--set", "train.channels_last=true")
    out = _run("bench_step.py", "--quick", "--rounds", "1", *args)
    assert "bf16, channels_last;" in out and "simclr step" in out
    # the sizes line prints the first method's config only: every method's, checked directly
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_step

    from detcon.config import parse_dotted

    base = parse_dotted(["train.precision=bf16", "train.channels_last=true"])
    configs = [bench_step.method_config(m, base) for m in bench_step.METHODS]
    assert len(configs) == 4 and len({c.method for c in configs}) == 4
    assert all(c.train.precision == "bf16" and c.train.channels_last for c in configs)


def test_bench_step_compile_compiles_every_method_before_timing(monkeypatch, capsys):
    # compiling for real takes ~40 s a method: what is checked is that each model is compiled
    # and its first step reported before the timed rounds
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_step

    from detcon.models import PretrainModel

    compiled = []
    monkeypatch.setattr(PretrainModel, "compile_networks", lambda self: compiled.append(self))
    assert bench_step.main(["--quick", "--rounds", "1", "--compile"]) == 0
    out = capsys.readouterr().out
    assert len(compiled) == 4 and out.count("first step, compilation included") == 4
    assert ", torch.compile;" in out


def test_benchmark_counts_are_checked_and_an_explicit_zero_kept(monkeypatch):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), "--rounds", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "'0': expected an integer >= 1" in proc.stderr
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_gpu

    sizes = bench_gpu.make_sizes(bench_gpu.parse_args(["--tiny", "--warmup", "0"]))
    assert sizes.warmup == 0 and sizes.rounds == 2
    # end to end, the warm-up uses up the workers' first burst of prefetched batches (two each)
    # and the timed steps outlast it, so a slow loader shows
    sizes = bench_gpu.make_sizes(bench_gpu.parse_args([]), workers=15)
    assert sizes.e2e_warmup == 30 and sizes.e2e_steps == 60


def test_bench_gpu_fails_when_nothing_was_measured():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--tiny", "--device", "cpu",
         "--variants", "fp32", "--e2e-variants", "", "--budget-s", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "skipped: --budget-s reached" in proc.stdout
    assert "no variant was measured" in proc.stderr


def test_bench_gpu_tiny_on_cpu_prints_every_figure():
    variant = "bf16+cl+bench+foreach"
    out = _run(
        "bench_gpu.py", "--tiny", "--device", "cpu", "--quick",
        "--variants", f"fp32,{variant}", "--e2e-variants", variant,
    )  # fmt: skip
    assert "machine:" in out and "img/s D/B" in out
    assert f"{variant} (end to end)" in out and "fp32 (model-only)" in out
    assert "targets:" in out and "n/a (tiny)" in out
    assert "failed" not in out
