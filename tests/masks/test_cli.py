import csv

from detcon.cli import main


def test_masks_quality_writes_the_table_in_the_expected_order(tmp_path, capsys):
    out = tmp_path / "mask_quality.csv"
    assert (
        main(
            [
                "masks",
                "quality",
                "--profile",
                "cpu",
                "--num-images",
                "16",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert [r["source"] for r in rows] == ["grid", "fh", "mcg", "ground_truth"]
    assert {"source", "mean_best_iou", "coverage_at_50"} <= rows[0].keys()
    iou = [float(r["mean_best_iou"]) for r in rows]
    # docs/design.md §6: the synthetic scenes are tuned so that mask quality orders the sources
    assert iou[0] < iou[1] < iou[2] < iou[3] == 1.0
    assert "wrote" in capsys.readouterr().out


def test_masks_quality_paper_profile_needs_a_coco_root(tmp_path, capsys):
    assert main(["masks", "quality", "--profile", "paper", "--out", str(tmp_path / "q.csv")]) == 2
    assert "--root" in capsys.readouterr().err
    assert not (tmp_path / "q.csv").exists()


def test_masks_precompute_builds_a_complete_store(tmp_path):
    out = tmp_path / "store"
    assert (
        main(
            [
                "masks",
                "precompute",
                "--profile",
                "cpu",
                "--source",
                "grid",
                "--quiet",
                "--set",
                "data.num_images=8",
                "--set",
                "data.scene_size=32",
                "--shard-size",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from detcon.masks.store import MaskStore

    store = MaskStore(out)
    assert len(store) == 8 and store.complete and store[3].shape == (32, 32)
