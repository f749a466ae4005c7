"""Pretrain with the initial weights of another seed (a diagnostic; RESULTS.md, the MCG-style seed
that probes below the floor).

Usage: python scripts/init_swap.py INIT_SEED --out RUN_DIR [detcon pretrain arguments ...]

Runs ``detcon pretrain`` with everything the run's ``seed`` decides (scenes, masks, crops,
photometrics, data order) unchanged, except the networks' initial weights, which are those of
seed INIT_SEED. Swapping the two between a seed that fails and one that does not tells whether
the failure comes with the initialisation or with the data. The run's config.json does not
record the swap (its run id is that of the unswapped run); ``init_swap.json`` in the run
directory does (a run directory started with another INIT_SEED, or without the swap, is refused).
Keep such runs out of the study's results directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import detcon.train
from detcon.atomic import write_json
from detcon.cli import main

_derive_seed = detcon.train.derive_seed
USAGE = __doc__.split("\n\n")[1]


def _usage(problem: str) -> int:
    print(f"init_swap: {problem}\n{USAGE}", file=sys.stderr)
    return 2


def run(argv: list[str]) -> int:
    try:
        init_seed = int(argv[0])
    except (IndexError, ValueError):
        return _usage(f"expected INIT_SEED (an integer) first, got {argv[:1]!r}")
    # the swap is recorded before training starts, so an interrupted run says it too
    out = argv[argv.index("--out") + 1] if "--out" in argv[1:-1] else None
    if out is None:
        return _usage("expected --out RUN_DIR as two arguments (the swap is recorded there)")

    def derive_seed(*parts: int | str) -> int:
        # build_model seeds the initial weights with derive_seed(cfg.seed, "init")
        if len(parts) == 2 and parts[1] == "init":
            return _derive_seed(init_seed, "init")
        return _derive_seed(*parts)

    # a rerun resumes the run's checkpoint: only one trained with this very swap
    record, checkpoint = Path(out) / "init_swap.json", Path(out) / "checkpoint.pt"
    if record.exists():
        earlier = json.loads(record.read_text()).get("init_seed")
        if earlier != init_seed:
            return _usage(f"{out} was started with INIT_SEED {earlier}, not {init_seed}")
    elif checkpoint.exists():
        return _usage(f"{out} holds a run started without the swap ({checkpoint})")
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(record, {"init_seed": init_seed})
    detcon.train.derive_seed = derive_seed
    try:
        return main(["pretrain", *argv[1:]])
    finally:
        detcon.train.derive_seed = _derive_seed


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
