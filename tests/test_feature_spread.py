"""scripts/feature_spread.py: how a frozen encoder's features spread (RESULTS.md)."""

from __future__ import annotations

import json

import pytest
import torch

from detcon.config import load_pretrain_config, to_dict


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
    assert "(random, 4 scenes)" in out and "| 3 | 128 |" in out
    assert "BatchNorm running_var min/max per layer: 1/1" in out
