"""Shared printing for the benchmark scripts: the machine header and the results table.

Every benchmark prints the machine (CPU model, cores, torch version) and the date first, then a
small table ``what | median | ratio | target | result`` so runs on different days can be compared.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
from collections.abc import Sequence


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_header(title: str) -> str:
    """``title`` plus the machine, load average, python/torch versions and the date."""
    import torch

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{title}\n"
        f"machine: {cpu_model()}, {os.cpu_count()} cores, load average {load}; "
        f"python {platform.python_version()}, torch {torch.__version__}\n"
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"
    )


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence (ValueError naming the problem otherwise)."""
    if not values:
        raise ValueError("median of no measurements: expected at least one repeat")
    return float(statistics.median(values))


def format_table(
    rows: Sequence[Sequence[object]], header: Sequence[str], numbers_right: bool = False
) -> str:
    """A plain text table (columns as wide as their widest cell), left-aligned, or with every
    column after the first right-aligned (``numbers_right``: columns of figures)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def cell(i: int, c: str, w: int) -> str:
        return c.rjust(w) if numbers_right and i > 0 else c.ljust(w)

    lines = [
        "  ".join(cell(i, c, w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    """``pass`` when ``value`` meets ``target`` in the stated direction, else ``miss``."""
    ok = value >= target if higher_is_better else value <= target
    return "pass" if ok else "miss"


def at_least(minimum: int):
    """An argparse ``type``: an integer >= ``minimum``, or an error naming the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= {minimum}")
        return value

    return parse


def given(value, default):
    """``value`` unless it was not given (``None``): an explicit 0 stays 0."""
    return default if value is None else value
