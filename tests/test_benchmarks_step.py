"""Smoke test of the training-step benchmarks: both scripts run at toy sizes and print their
tables. No timing is asserted (the figures come from running the scripts by hand)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_bench_step_quick_prints_the_table():
    out = _run("bench_step.py", "--quick", "--rounds", "2")
    assert "machine:" in out and "time / byol" in out
    for method in ("detcon_b", "byol", "detcon_s", "simclr"):
        assert f"{method} step" in out


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
