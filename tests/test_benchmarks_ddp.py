"""Smoke test of benchmarks/bench_ddp.py: ``--quick`` trains 1 process and 2 gloo processes
(launched as a submitit multi-task SLURM job would be) and prints its table.

No timing is asserted. The equality of the 2-process run with the 1-process run is a result the
table reports; tests/test_train.py asserts it (mp.spawn launcher).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_ddp_quick_prints_table():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_ddp.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for needle in ("machine:", "date:", "what", "target", "scaling efficiency", "img/s"):
        assert needle in out, (needle, out)
    rows = [line for line in out.splitlines() if line.startswith("|1p - 2p submitit env|")]
    assert len(rows) == 4, out
    for row in rows:
        assert row.rstrip().endswith(("pass", "miss")), row
