"""scripts/fh_granularity.py: how finely FH partitions the cpu scenes (docs/cpu-miniature.md)."""

from __future__ import annotations

import numpy as np
import pytest

from detcon.config import load_pretrain_config
from detcon.data.synthetic import SceneSpec, SyntheticScenes
from detcon.masks.sources import felzenszwalb_masks


def test_a_row_per_setting_then_the_ground_truth(script, capsys):
    assert script("fh_granularity").main(["1000:64", "10:8", "--images", "3", "--seed", "1"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == [
        "| FH scale 1000, min_size 64",
        "| FH scale 10, min_size 8",
        "| ground truth",
    ]
    cfg = load_pretrain_config({}, profile="cpu")
    scenes = SyntheticScenes(
        "val", num_images=3, size=64, seed=1, difficulty=SceneSpec.from_config(cfg.data)
    )
    counts = [
        len(
            np.unique(
                felzenszwalb_masks(image, scale=1000.0, sigma=cfg.masks.fh_sigma, min_size=64)
            )
        )
        for image in (scenes[i]["image"].permute(1, 2, 0).numpy() for i in range(3))
    ]
    assert rows[0].split(" | ")[1] == f"{np.mean(counts):.1f} ({min(counts)}-{max(counts)})"
    assert rows[2].endswith("| 1.000 | 1.000 |")  # the objects are their own best masks


@pytest.mark.parametrize(
    "args, message",
    [
        (["100"], "'100': expected SCALE:MIN_SIZE"),
        (["0:8"], "'0:8': expected SCALE:MIN_SIZE with a scale > 0"),
        (["100:0"], "'100:0': expected SCALE:MIN_SIZE with a scale > 0 and a minimum size >= 1"),
        (["100:64", "--images", "0"], "--images 0: expected at least 1 scene"),
    ],
)
def test_a_bad_setting_or_count_is_refused(script, capsys, args, message):
    with pytest.raises(SystemExit):
        script("fh_granularity").main(args)
    assert message in capsys.readouterr().err
