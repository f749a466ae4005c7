"""Smoke test of benchmarks/bench_loss.py: ``--quick`` runs and prints its table.

No timing is asserted (timings belong in the benchmark's output, not in tests). The script exits
1 if ``detcon_loss`` and lightly's ``DetConBLoss`` disagree in value or gradient; without
lightly installed it still times ``detcon_loss`` and marks the comparison skipped.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_loss_quick_prints_table():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_loss.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for needle in ("detcon_loss", "speedup", "target", "cpu profile", "machine:", "date:"):
        assert needle in out, (needle, out)
    rows = [line for line in out.splitlines() if line.startswith(("cpu profile", "small"))]
    assert len(rows) == 2, out
    for row in rows:
        assert "ms" in row and ("pass" in row or "MISS" in row or "skip" in row), row
