"""Smoke test of benchmarks/bench_masks.py: ``--quick`` runs and prints its tables.

No timing is asserted (timings belong in the benchmark's output, not in tests); the script itself
checks that the store holds exactly skimage's labels and prints "NO" when it does not.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_masks_quick_prints_table():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_masks.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for needle in ("machine:", "date:", "what", "ratio", "target", "array workers N", "2-3 days"):
        assert needle in out, (needle, out)
    assert out.count("store holds skimage's labels exactly: yes") == 2, out
    rows = [line for line in out.splitlines() if line.startswith(("imagenet store", "cpu store"))]
    assert len(rows) == 4, out
    for row in rows:
        assert row.rstrip().endswith(("pass", "miss")), row
