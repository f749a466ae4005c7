"""Regenerate ``tests/fixtures/results_study/``: a tiny study, run for real and exported.

    PYTHONPATH=. python scripts/make_results_fixture.py     # about a minute on two cores

The fixture is what ``results/`` holds after ``detcon run`` and ``detcon export``: its
``ablations/tiny.yaml`` (four points: grid vs FH masks, two seeds, trained for 2 steps and probed at
smoke-test sizes, with the floor and the ceiling) is run through the local executor and the real
notebooks in a temporary runs folder, then exported into ``results/`` without notebooks (their
HTML is a few hundred kilobytes a point; the fixture stays tens of kilobytes).
``ablations/unexported.yaml`` is never run. ``tests/test_figures.py`` regenerates the figures from
the fixture alone.

Run ids end with the digest of the resolved config, so a change to a cpu-profile default (a new
config field) orphans the exported points; the test then says to run this script again.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from detcon.cli import main as detcon
from detcon.export import tree_size

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "results_study"
ABLATION = FIXTURE / "ablations" / "tiny.yaml"


def main(argv: list[str] | None = None) -> int:
    # no options: a parser so that --help (or a typo) says so instead of rewriting the fixture
    argparse.ArgumentParser(
        description=f"Regenerate {FIXTURE.relative_to(REPO)} (a tiny study, run and exported)."
    ).parse_args(argv)
    results = FIXTURE / "results"
    # beside the fixture: a rename from a tmpfs /tmp to the checkout crosses file systems
    with tempfile.TemporaryDirectory(prefix=".results-fixture-", dir=FIXTURE) as tmp:
        runs = Path(tmp) / "runs"
        common = [str(ABLATION), "--profile", "cpu", "--runs-dir", str(runs)]
        if detcon(["run", *common, "--executor", "local"]) != 0:
            return 1
        fresh = Path(tmp) / "results"  # exported aside, swapped in only once complete
        if detcon(["export", *common, "--to", str(fresh), "--notebook-seeds"]) != 0:
            return 1
        old = Path(tmp) / "old"
        if results.exists():
            results.rename(old)
        shutil.move(str(fresh), results)
    size = tree_size(FIXTURE)
    print(f"{FIXTURE.relative_to(REPO)}: {size / 1e3:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
