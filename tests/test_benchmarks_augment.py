"""Smoke test of benchmarks/bench_augment.py: ``--quick`` runs and prints its tables.

No timing is asserted (timings belong in the benchmark's output, not in tests). The script exits
1 if the optimised ``TwoViewGeometry`` ever gives views or masks that differ from the plain tv2
``Compose`` reference it is timed against, so a zero exit status also means "identical".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_augment_quick_prints_tables():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_augment.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
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
    verdicts = [line for line in out.splitlines() if line.rstrip().endswith(("pass", "MISS"))]
    ratios = [line for line in verdicts if ">= 0.8x" in line]
    assert len(ratios) == 10, out  # 7 paper-size + 3 cpu-profile comparisons against BYOL tv2
    assert len(verdicts) - len(ratios) == 5, out  # can 16 cores feed the GPU: 4 loader rows + 1
