"""scripts/queues/*.txt: every line of a prepared experiment queue is a valid cpu-profile config."""

from __future__ import annotations

from pathlib import Path

import pytest

from detcon.config import load_pretrain_config, parse_dotted

QUEUES = sorted((Path(__file__).resolve().parents[1] / "scripts" / "queues").glob("*.txt"))


def _lines(queue: Path) -> list[list[str]]:
    lines = (line.split() for line in queue.read_text().splitlines())
    return [fields for fields in lines if fields and not fields[0].startswith("#")]


def _branch_fields(queue: Path) -> set[str]:
    """Keys a queue that ran on an experimental branch declares with ``# branch-field: KEY``:
    fields main does not have, left out when its lines are resolved here."""
    marker = "# branch-field:"
    return {
        line[len(marker) :].strip()
        for line in queue.read_text().splitlines()
        if line.startswith(marker)
    }


@pytest.mark.parametrize("queue", QUEUES, ids=[q.name for q in QUEUES])
def test_every_queue_line_resolves(queue):
    names = set()
    branch = _branch_fields(queue)
    for name, seed, *assignments in _lines(queue):
        assignments = [a for a in assignments if a.split("=", 1)[0] not in branch]
        assert (name, seed) not in names, f"{queue.name}: {name} seed {seed} twice"
        names.add((name, seed))
        assert seed.isdigit(), f"{queue.name}: {name}: seed {seed!r} is not a number"
        if name.split("_", 1)[0] in ("random", "supervised"):
            continue  # a reference: evaluated, not pretrained
        cfg = load_pretrain_config(parse_dotted(assignments), profile="cpu")
        assert cfg.profile == "cpu"


def test_there_is_a_queue():
    assert QUEUES, "scripts/queues/ holds no queue"
