"""scripts/feature_spread.py: how a frozen encoder's features spread (RESULTS.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from detcon.config import load_pretrain_config, to_dict
from detcon.evaluate.backbones import encoder_module
from detcon.models import build_backbone


def test_spread_counts_directions_dead_channels_and_image_variation(script):
    spread = script("feature_spread").spread
    gen = torch.Generator().manual_seed(0)
    iso = torch.randn(64, 4, 6, 6, generator=gen)
    s = spread(iso)
    assert s["channels"] == 4 and s["dead"] == 0 and 3.5 < s["PR"] <= 4.0
    one = (
        torch.randn(64, 1, 6, 6, generator=gen) * torch.tensor([1.0, 2.0, -1.0, 0.0])[:, None, None]
    )
    s = spread(one)  # every channel a multiple of one map, the last constant
    assert s["PR"] == pytest.approx(1.0) and s["dead"] == 1
    flat = torch.randn(64, 4, 1, 1, generator=gen).expand(64, 4, 6, 6)
    assert spread(flat)["within"] == 0.0 and spread(flat)["across"] > 0.5


def test_main_prints_a_row_per_stage_of_a_random_encoder(tmp_path, script, capsys):
    cfg = load_pretrain_config({}, profile="cpu")
    (tmp_path / "config.json").write_text(json.dumps(to_dict(cfg)))
    assert script("feature_spread").main([f"{tmp_path}:random", "--images", "4"]) == 0
    out = capsys.readouterr().out
    assert "(random, seed 0 from config.json, 4 scenes)" in out and "| 3 | 128 |" in out
    assert "BatchNorm running_var min/max per layer: 1/1" in out


def test_seg_sets_the_last_stage_against_each_runs_miou(tmp_path, script, capsys):
    cfg = load_pretrain_config({}, profile="cpu")
    runs, mious = [], [0.30, 0.20, 0.25]
    for seed, miou in enumerate(mious):
        run = tmp_path / f"s{seed}"
        run.mkdir()
        (run / "config.json").write_text(json.dumps(to_dict(cfg)))
        (run / "eval.json").write_text(json.dumps({"segmentation": {"miou": miou}}))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            state = encoder_module(build_backbone(cfg.model)).state_dict()
            for k, v in state.items():  # three different encoders, every BatchNorm scale nonzero
                if k.endswith(("weight", "bias")):
                    v += 0.5 * torch.randn(v.shape)
        torch.save(state, run / "backbone.pt")
        runs.append(str(run))
    assert script("feature_spread").main([*runs, "--images", "4", "--seg"]) == 0
    out = capsys.readouterr().out
    table = [line.split(" | ") for line in out.splitlines() if line.startswith(f"| {tmp_path}")]
    assert [float(r[-1].rstrip(" |")) for r in table] == mious
    pr = [float(r[1]) for r in table]
    assert len(set(pr)) == 3
    assert f"PR against seg mIoU: {spearmanr(pr, mious).statistic:.2f}" in out


def test_seg_without_an_eval_file_says_which_file(tmp_path, script):
    cfg = load_pretrain_config({}, profile="cpu")
    (tmp_path / "config.json").write_text(json.dumps(to_dict(cfg)))
    with pytest.raises(SystemExit, match="eval.json"):
        script("feature_spread").main([str(tmp_path), "--images", "4", "--seg"])


def test_scenes_and_random_seed_are_the_runs_own_as_evaluate_uses_them(
    tmp_path, script, capsys, monkeypatch
):
    from detcon.data.synthetic import SceneSpec
    from detcon.evaluate.data import DataStore

    cfg = load_pretrain_config(
        {"seed": 3, "data": {"scene_classes": 2, "scene_objects": [1, 2]}}, profile="cpu"
    )
    (tmp_path / "config.json").write_text(json.dumps(to_dict(cfg)))
    mod = script("feature_spread")
    specs, seeds = [], []
    get, from_run = DataStore.get, mod.backbone_from_run
    monkeypatch.setattr(
        DataStore, "get", lambda self, spec, w: specs.append(spec) or get(self, spec, w)
    )
    monkeypatch.setattr(
        mod, "backbone_from_run", lambda run, **kw: seeds.append(kw["seed"]) or from_run(run, **kw)
    )
    assert mod.main([f"{tmp_path}:random", "--images", "2"]) == 0
    assert [s.difficulty for s in specs] == [SceneSpec.from_config(cfg.data)]
    assert SceneSpec.from_config(cfg.data).num_object_classes == 2
    assert seeds == [3]


@pytest.mark.parametrize(
    "args, message",
    [
        (["{run}:rnadom"], "not the suffix 'rnadom'"),
        (["{run}:random", "--images", "1"], "--images 1: expected at least 2"),
        (["{run}:random", "{run}/missing"], "does not exist"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, script, capsys, args, message):
    cfg = load_pretrain_config({}, profile="cpu")
    (tmp_path / "config.json").write_text(json.dumps(to_dict(cfg)))
    with pytest.raises(SystemExit):
        script("feature_spread").main([a.format(run=tmp_path) for a in args])
    captured = capsys.readouterr()
    assert message in captured.err and "| stage |" not in captured.out


def test_random_takes_the_seed_its_floor_was_probed_at(tmp_path, script, capsys):
    cfg = load_pretrain_config({"seed": 2}, profile="cpu")
    (tmp_path / "config.json").write_text(json.dumps(to_dict(cfg)))
    module = script("feature_spread")
    assert module.random_seed(str(tmp_path), cfg.seed) == (2, "config.json")  # no record
    (tmp_path / "eval_random.json").write_text(json.dumps({"probe": {"seed": 0}}))
    assert module.random_seed(str(tmp_path), cfg.seed) == (0, "eval_random.json")
    assert module.main([f"{tmp_path}:random", "--images", "2"]) == 0
    assert "(random, seed 0 from eval_random.json, 2 scenes)" in capsys.readouterr().out


def test_ridge_r2_is_near_one_for_a_linear_map_and_near_zero_for_noise(script):
    mod = script("feature_spread")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = x @ rng.normal(size=(3, 5)) + 0.01 * rng.normal(size=(200, 5))
    assert mod.ridge_cv_r2(x, y) > 0.97
    assert abs(mod.ridge_cv_r2(x, rng.normal(size=(200, 5)))) < 0.1
    with pytest.raises(ValueError, match="9 samples; expected at least 10"):
        mod.ridge_cv_r2(x[:9], y[:9])


def test_per_scene_share_separates_a_code_per_scene_from_pixel_variation(script):
    share = script("feature_spread").per_scene_share
    gen = torch.Generator().manual_seed(0)
    per_scene = torch.randn(64, 4, 1, 1, generator=gen).expand(64, 4, 6, 6)
    assert share(per_scene) == pytest.approx(1.0, abs=0.02)
    assert share(torch.randn(64, 4, 6, 6, generator=gen)) < 0.1


def test_background_prints_share_and_r2_of_each_run(tmp_path, script, capsys):
    cfg = load_pretrain_config({}, profile="cpu")
    (tmp_path / "config.json").write_text(json.dumps(to_dict(cfg)))
    mod = script("feature_spread")
    assert mod.main([f"{tmp_path}:random", "--images", "12", "--background"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.endswith(" |")][-1]
    share, r2 = (float(v) for v in row.strip("| ").split(" | ")[1:])
    assert row.startswith(f"| {tmp_path}:random") and 0 < share < 1 and r2 <= 1
    with pytest.raises(SystemExit):
        mod.main([f"{tmp_path}:random", "--images", "4", "--background"])
