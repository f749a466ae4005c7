import csv

import pytest

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


TINY_SETTINGS = {
    "data.num_images": 8,
    "data.scene_size": 32,
    "masks.fh_min_size": 16,
    "augment.crop_size": 32,
    "model.small_width": 4,
    "model.head_hidden": 32,
    "model.head_out": 16,
    "optim.batch_size": 4,
    "train.max_steps": 2,
    "train.threads": 1,
}


def _pretrain(store, out, **extra) -> int:
    """`detcon pretrain` of a tiny config from the mask store ``store`` into ``out``."""
    settings = {**TINY_SETTINGS, "masks.source": "grid", "masks.store": store, **extra}
    sets = [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
    return main(["pretrain", "--quiet", *sets, "--out", str(out)])


STORE_DATA = [
    "--set",
    "data.num_images=8",
    "--set",
    "data.scene_size=32",
    "--set",
    "masks.fh_min_size=16",
]


def _precompute(source, out, *extra):
    argv = [
        "masks",
        "precompute",
        "--profile",
        "cpu",
        "--source",
        source,
        "--quiet",
        *STORE_DATA,
        *extra,
        "--shard-size",
        "4",
        "--out",
        str(out),
    ]
    return main(argv)


def test_pretrain_refuses_a_store_of_another_source(tmp_path, capsys):
    """`precompute --source fh` then `pretrain --set masks.source=grid --set masks.store=...`
    used to train on the FH masks while config.json said grid."""
    store = tmp_path / "store"
    assert _precompute("fh", store) == 0
    capsys.readouterr()
    rc = _pretrain(store, tmp_path / "run")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "source: store has 'fh', asked for 'grid'" in err and str(store) in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_precompute_redoes_a_truncated_shard_and_pretrain_names_it(tmp_path, capsys):
    store = tmp_path / "store"
    assert _precompute("grid", store) == 0
    shard = store / "shard-00001.npz"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    capsys.readouterr()
    assert _pretrain(store, tmp_path / "run") == 2
    err = capsys.readouterr().err
    repair = (
        "detcon masks precompute --profile cpu --source grid --set data.num_images=8 --set "
        f"data.scene_size=32 --set masks.fh_min_size=16 --out {store} --shard-size 4"
    )
    assert str(shard) in err and f"run `{repair}` again" in err and err.count("\n") == 1
    # The named command repairs the store (it used to say "complete" and change nothing).
    assert _precompute("grid", store) == 0
    out = capsys.readouterr().out
    assert "shard-00001.npz: " in out and "computing it again" in out and "complete" in out
    assert shard.read_bytes() == good
    assert _pretrain(store, tmp_path / "run") == 0


def test_a_damaged_shard_read_in_a_loader_worker_is_one_paragraph(tmp_path, capsys):
    store = tmp_path / "store"
    assert _precompute("grid", store) == 0
    shard = store / "shard-00001.npz"
    flipped = bytearray(shard.read_bytes())
    at = flipped.index(b"00001.npy") + len("00001.npy") + 100  # inside a member's data
    flipped[at] ^= 0xFF
    shard.write_bytes(bytes(flipped))  # same size: only reading it finds the damage
    capsys.readouterr()
    rc = _pretrain(store, tmp_path / "run", **{"data.num_workers": 1})
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "DataLoader worker" not in err and "Traceback" not in err
    assert f"mask store shard {str(shard)!r}: " in err and "masks precompute" in err


def test_a_set_masks_source_that_contradicts_source_is_refused(tmp_path, capsys):
    # `--source grid --set masks.source=fh` built an fh store (and `=image` an 'image' one)
    out = tmp_path / "store"
    argv = ["masks", "precompute", "--source", "grid", "--out", str(out), "--quiet"]
    assert main([*argv, "--set", "masks.source=fh"]) == 2
    assert "masks.source='fh' contradicts --source grid" in capsys.readouterr().err
    assert not out.exists()


def test_an_out_that_is_a_file_is_named(tmp_path, capsys):
    (tmp_path / "afile").write_text("kept")  # "[Errno 17] File exists: 'afile'" before
    argv = ["masks", "precompute", "--source", "grid", "--out", str(tmp_path / "afile")]
    assert main([*argv, "--quiet"]) == 2
    assert "is a file: expected a store directory" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "kept"


def test_masks_quality_checks_its_out_before_computing(tmp_path, capsys, monkeypatch):
    from detcon.masks import cli as masks_cli

    monkeypatch.setattr(masks_cli, "mask_quality_table", lambda *a, **k: pytest.fail("computed"))
    (tmp_path / "afile").write_text("kept")
    for out in (tmp_path / "afile" / "q.csv", tmp_path):
        assert main(["masks", "quality", "--out", str(out), "--quiet"]) == 2
        assert "expected a file path in a folder" in capsys.readouterr().err
