"""scripts/seg_probe.py: the linear and fine-tuned segmentation probes, added to a run's eval
file."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from detcon.atomic import save_torch, write_json
from detcon.config import load_pretrain_config, to_dict
from detcon.models import build_backbone

torch.set_num_threads(1)


def _run_dir(path):
    cfg = load_pretrain_config({"model": {"small_width": 8}}, profile="cpu")
    path.mkdir(parents=True)
    write_json(path / "config.json", to_dict(cfg))
    save_torch(path / "backbone.pt", build_backbone(cfg.model).state_dict())
    return path


def test_the_probe_is_a_standardised_linear_head_next_to_the_fcn_entry(tmp_path, script):
    module = script("seg_probe")
    settings = module.probe_settings(module.cpu_settings(), "linear")
    (probe,) = settings.segmentation
    assert (probe.name, probe.head_convs, probe.standardize) == ("segmentation_linear", 0, True)
    assert settings.depth == module.cpu_settings().depth

    run = _run_dir(tmp_path / "lr8-s1")
    (run / "eval.json").write_text(json.dumps({"depth": {"delta1": 0.5}}))
    floor = _run_dir(tmp_path / "random-s1")
    assert module.main([str(run), str(floor), "--quick", "--split", "val"]) == 0
    kept = json.loads((run / "eval.json").read_text())
    assert kept["depth"] == {"delta1": 0.5}  # the other probes' entries stay
    assert 0.0 <= kept["segmentation_linear"]["miou"] <= 1.0
    assert "segmentation_linear" in json.loads((floor / "eval_random.json").read_text())


def test_a_directory_not_named_like_a_miniature_run_is_refused(tmp_path, script, capsys):
    with pytest.raises(SystemExit):
        script("seg_probe").main([str(_run_dir(tmp_path / "lr8"))])
    assert (
        "expected a scripts/miniature.sh run directory named NAME-sSEED" in capsys.readouterr().err
    )


def test_a_bad_second_argument_is_refused_before_the_first_is_probed(tmp_path, script, capsys):
    run = _run_dir(tmp_path / "lr8-s1")
    with pytest.raises(SystemExit):
        script("seg_probe").main([str(run), str(tmp_path / "missing-s0"), "--quick"])
    assert "missing-s0: no config.json" in capsys.readouterr().err
    assert not (run / "eval.json").exists()


def test_the_entry_joins_an_eval_file_that_records_its_probe(tmp_path, script):
    """The linear head is another head on the same data: it does not replace the FCN probes an
    eval file with a probe record holds (only another split, seed or data would)."""
    from detcon.evaluate import cpu_settings, evaluate_run

    run = _run_dir(tmp_path / "lr8-s0")
    evaluate_run(run, settings=cpu_settings(quick=True), tasks=("linear",), split="val")
    before = json.loads((run / "eval.json").read_text())
    assert script("seg_probe").main([str(run), "--quick", "--split", "val"]) == 0
    after = json.loads((run / "eval.json").read_text())
    assert after["linear"] == before["linear"] and "segmentation_linear" in after


def test_an_eval_file_probed_on_another_split_is_refused_not_emptied(tmp_path, script, capsys):
    # The probe replaced it with its one entry: the run's FCN, depth and linear results were
    # gone, and scripts/miniature.sh took the point for finished.
    from detcon.evaluate import cpu_settings, evaluate_run

    run = _run_dir(tmp_path / "lr8-s0")
    evaluate_run(run, settings=cpu_settings(quick=True), tasks=("linear",), split="test")
    before = (run / "eval.json").read_bytes()
    assert script("seg_probe").main([str(run), "--quick", "--split", "val"]) == 2
    assert "holds results probed otherwise" in capsys.readouterr().err
    assert (run / "eval.json").read_bytes() == before


def test_the_finetune_probe_trains_the_encoder_with_the_fcn_head(tmp_path, script):
    module = script("seg_probe")
    fcn = module.cpu_settings().segmentation[0]
    (probe,) = module.probe_settings(module.cpu_settings(), "finetune").segmentation
    assert probe == dataclasses.replace(
        fcn, name="segmentation_finetune", train_backbone=True, flip=True
    )
    run = _run_dir(tmp_path / "lr8-s0")
    assert module.main([str(run), "--probe", "finetune", "--quick", "--split", "val"]) == 0
    assert 0.0 <= json.loads((run / "eval.json").read_text())["segmentation_finetune"]["miou"] <= 1


def test_an_unknown_probe_is_refused_by_name(script):
    module = script("seg_probe")
    with pytest.raises(ValueError, match="unknown probe 'mlp': expected one of linear, finetune"):
        module.probe_settings(module.cpu_settings(), "mlp")
