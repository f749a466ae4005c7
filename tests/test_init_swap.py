"""scripts/init_swap.py: pretraining with another seed's initial weights (RESULTS.md)."""

from __future__ import annotations

import json

import pytest
import torch

import detcon.train
from detcon.cli import main


def _initial_weights(tmp_path, name: str, pretrain, seed: int) -> dict[str, torch.Tensor]:
    out = tmp_path / name
    argv = ["--profile", "cpu", "--out", str(out), "--set", f"seed={seed}"]
    assert pretrain([*argv, "--stop-after", "0", "--quiet"]) == 0
    return torch.load(out / "backbone.pt", weights_only=True)


def test_the_initial_weights_are_the_other_seeds_and_the_patch_is_undone(tmp_path, script):
    swap = script("init_swap")
    before = detcon.train.derive_seed
    swapped = _initial_weights(tmp_path, "swap", lambda a: swap.run(["0", *a]), seed=1)
    assert detcon.train.derive_seed is before
    assert json.loads((tmp_path / "swap" / "init_swap.json").read_text()) == {"init_seed": 0}
    plain = lambda a: main(["pretrain", *a])  # noqa: E731
    seed0 = _initial_weights(tmp_path, "s0", plain, seed=0)
    seed1 = _initial_weights(tmp_path, "s1", plain, seed=1)
    assert swapped.keys() == seed0.keys()
    assert all(torch.equal(swapped[k], seed0[k]) for k in seed0)
    assert not all(torch.equal(swapped[k], seed1[k]) for k in seed1)


def test_a_run_started_otherwise_is_refused_not_labelled_swapped(tmp_path, script, capsys):
    # init_swap.json was written first: a rerun with another INIT_SEED, or on an unswapped run,
    # resumed its checkpoint under the new label.
    swap = script("init_swap")
    plain, swapped = tmp_path / "plain", tmp_path / "swapped"
    argv = ["--profile", "cpu", "--stop-after", "0", "--quiet", "--out"]
    assert main(["pretrain", *argv, str(plain)]) == 0
    assert swap.run(["1", *argv, str(plain)]) == 2
    assert "started without the swap" in capsys.readouterr().err
    assert not (plain / "init_swap.json").exists()
    assert swap.run(["1", *argv, str(swapped)]) == 0
    assert swap.run(["2", *argv, str(swapped)]) == 2
    assert "started with INIT_SEED 1, not 2" in capsys.readouterr().err
    assert swap.run(["1", *argv, str(swapped)]) == 0  # the same swap resumes


@pytest.mark.parametrize("argv", [[], ["--out"], ["x", "--out", "y"]])
def test_without_an_init_seed_it_prints_the_usage(argv, script, capsys):
    assert script("init_swap").run(argv) == 2
    assert "INIT_SEED" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["0"], ["0", "--out"], ["0", "--out=run"]])
def test_without_out_as_two_arguments_it_refuses(argv, script, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert script("init_swap").run(argv) == 2
    assert "expected --out RUN_DIR" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing recorded
