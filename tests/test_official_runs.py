"""Official checkpoints evaluated like our runs: ``import_run`` writes a run directory whose
encoder is built with TF-SAME padding wherever evaluation builds ours, and an ablation point can
import a checkpoint instead of training (``notebook.official_checkpoint``)."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from haiku_files import haiku_modules, save_release_file, trunk

from detcon.cli import main
from detcon.config import load_pretrain_config, to_dict
from detcon.evaluate import backbone_from_run, evaluate_run, make_backbone
from detcon.evaluate.backbones import weights_need_tf_same
from detcon.official import import_official, import_run, official_resnet
from detcon.results import scan_ablation

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def release_r18(tmp_path_factory) -> Path:
    """A ResNet-18 (a depth model.backbone can name) in the release's format, with random
    weights and BatchNorm statistics."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("official") / "resnet18_detcon_b_test.npy"
    return save_release_file(path, haiku_modules(net.state_dict()), "res_net18")


def _cfg(backbone: str = "resnet18"):
    return load_pretrain_config({"model": {"backbone": backbone}}, profile="cpu")


def test_import_run_writes_an_evaluation_only_run_directory(release_r18, tmp_path):
    cfg = import_run(release_r18, tmp_path / "run", _cfg())
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text()) == to_dict(cfg)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["official"] is True and summary["architecture"] == "resnet18"
    assert summary["source"] == release_r18.name and len(summary["source_sha256"]) == 64
    assert json.loads((run / "backbone.json").read_text())["padding"] == "tf_same"
    state = torch.load(run / "backbone.pt", weights_only=True)
    assert not any(k.startswith("fc.") for k in state)
    assert weights_need_tf_same(run) and not weights_need_tf_same(run, "random")


def test_evaluation_builds_the_imported_encoder_with_tf_same_padding(release_r18, tmp_path):
    """The run's encoder computes the official network's features (TF-SAME), not stock ones."""
    import_run(release_r18, tmp_path / "run", _cfg())
    ours = backbone_from_run(tmp_path / "run").eval()
    official = official_resnet(release_r18)
    stock = official_resnet(release_r18, tf_same=False)
    x = torch.randn(2, 3, 64, 48)  # even sizes: the paddings differ
    want, wrong = trunk(official, x), trunk(stock, x)
    with torch.no_grad():
        got = ours(x)
    assert torch.equal(got, want)
    assert (wrong - want).abs().max() / want.abs().max() > 0.05
    # Dense tasks trade layer4's stride for dilation: the padding hooks follow.
    state = torch.load(tmp_path / "run" / "backbone.pt", weights_only=True)
    dilated = make_backbone(_cfg().model, state, dilate_last_stage=True, tf_same=True).eval()
    with torch.no_grad():
        assert dilated(x).shape == (2, 512, 4, 3)


def test_import_run_refuses_weights_of_another_depth(release_r18, tmp_path):
    with pytest.raises(ValueError, match=r"holds a resnet18 .*model.backbone='resnet50'"):
        import_run(release_r18, tmp_path / "run", _cfg("resnet50"))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_evaluate_takes_an_imported_checkpoint_like_ours(release_r18, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["import-official", str(release_r18), "--run-dir", str(run), "--profile", "cpu"]) == 0
    )
    assert "model.backbone=resnet18" in capsys.readouterr().out
    results = evaluate_run(run, tasks=["segmentation", "linear"], quick=True, device="cpu")
    assert set(results) == {"segmentation", "linear"}
    assert 0.0 <= results["segmentation"]["miou"] <= 1.0
    stored = json.loads((run / "eval.json").read_text())
    assert stored["linear"] == results["linear"]
    # backbone.json holds the import's padding, no pretraining step: the step comes from
    # train_summary.json (none trained), the run counts as finished, and nothing is warned.
    assert stored["encoder"] == {"step": 0, "planned_steps": 0, "finished": True}
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,match",
    [
        ([], "exactly one of --out FILE or --run-dir DIR"),
        (["--run-dir", "r", "--with-classifier"], "--with-classifier applies to --out only"),
        (["--out", "m.pt", "--set", "data.dataset=coco"], "use them with --run-dir, not --out"),
    ],
)
def test_cli_import_rejects_options_that_do_not_apply(release_r18, tmp_path, capsys, args, match):
    args = [a if a not in ("r", "m.pt") else str(tmp_path / a) for a in args]
    assert main(["import-official", str(release_r18), *args]) == 2
    assert match in capsys.readouterr().err.replace("\n", " ")
    assert not any(tmp_path.iterdir())


def test_import_run_takes_an_imported_state_dict_but_not_our_own_weights(release_r18, tmp_path):
    """A .pt from `import-official --out` keeps its provenance; stock-padded weights (one of our
    backbone.pt files) would be evaluated with the wrong padding, so they are refused."""
    import_official(release_r18, tmp_path / "r18.pt")
    import_run(tmp_path / "r18.pt", tmp_path / "run", _cfg())
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["source"] == release_r18.name  # the release file, not the .pt
    ours = tmp_path / "ours.pt"
    torch.save(torchvision.models.resnet18().state_dict(), ours)
    with pytest.raises(ValueError, match=r"without a sidecar ours.json"):
        import_run(ours, tmp_path / "run2", _cfg())
    assert not (tmp_path / "run2").exists()


@pytest.mark.slow
def test_an_ablation_point_imports_instead_of_training(release_r18, tmp_path, capsys):
    """Through the launcher and both real notebooks: the official point trains nothing, is
    evaluated like ours, and its summary says where its weights came from."""
    path = tmp_path / "official.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: official
        description: test
        base: {{model.backbone: resnet18}}
        grid:
          point: {{notebook.official_checkpoint: {release_r18}}}
        evaluate: [linear]
        parameters:
          evaluate: {{quick: true, device: cpu}}
        """)
    )
    runs = tmp_path / "runs"
    assert main(["run", str(path), "--runs-dir", str(runs)]) == 0
    (run,) = (runs / "official").iterdir()
    assert run.name.startswith("resnet18_detcon_b_test-s0-")
    assert not (run / "checkpoint.pt").exists() and not (run / "metrics.jsonl").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["pretrain.official"] is True and "eval.linear.top1" in summary
    assert summary["notebook.official_checkpoint"] == str(release_r18)
    scan = scan_ablation(path, profile="cpu", runs_dir=runs)  # what the report plots
    assert list(scan.status["notebook.official_checkpoint"]) == ["official resnet18_detcon_b_test"]


def test_launcher_checks_the_checkpoint_exists_before_running(tmp_path, capsys):
    path = tmp_path / "official.yaml"
    path.write_text(
        "name: official\ndescription: test\n"
        "grid: {point: {notebook.official_checkpoint: nowhere/r50.npy}}\n"
    )
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "imports the official checkpoint 'nowhere/r50.npy'" in err and "does not exist" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "key,match",
    [
        ("notebook.run_dir", r"grid key notebook.run_dir is a parameter the launcher sets"),
        ("notebook.oficial_checkpoint", r"no parameter 'oficial_checkpoint' \(did you mean"),
    ],
)
def test_bad_notebook_grid_keys_are_rejected(tmp_path, capsys, key, match):
    path = tmp_path / "official.yaml"
    path.write_text(f"name: official\ndescription: test\ngrid: {{point: {{{key}: x}}}}\n")
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 2
    assert re.search(match, capsys.readouterr().err.replace("\n", " "))


@pytest.mark.parametrize("ours", ["checkpoint.pt", "metrics.jsonl", "train_summary.json"])
def test_an_import_into_one_of_our_pretraining_runs_is_refused(tmp_path, ours):
    # It replaced config.json, backbone.pt and train_summary.json and left the run's checkpoint,
    # metrics and eval.json beside the official weights.
    from detcon.official.importing import import_run

    run = tmp_path / "run"
    run.mkdir()
    (run / ours).write_text('{"steps": 8}')
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(FileExistsError, match=f"holds a pretraining run \\({ours}\\)"):
        import_run(tmp_path / "release.npy", run)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_an_import_into_an_earlier_imports_run_directory_goes_on(tmp_path):
    from detcon.official.importing import import_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "train_summary.json").write_text('{"official": true, "steps": 0}')
    with pytest.raises(FileNotFoundError):  # past the check: the release file is missing
        import_run(tmp_path / "release.npy", run)


def test_a_reimport_of_another_checkpoint_drops_the_earlier_ones_evaluation(
    release_r18, tmp_path, monkeypatch
):
    # The second import's weights stood beside the first one's eval.json and summary.json, read
    # as theirs by a report or a later partial evaluation.
    run = tmp_path / "run"
    import_run(release_r18, run, _cfg())
    for name in ("eval.json", "eval_random.json", "summary.json"):
        (run / name).write_text('{"segmentation": {"miou": 0.5}}')
    import_run(release_r18, run, _cfg())  # the same file: its evaluation still holds
    assert {p.name for p in run.glob("*.json")} >= {"eval.json", "summary.json"}
    torch.manual_seed(1)
    other = save_release_file(
        tmp_path / "other.npy",
        haiku_modules(torchvision.models.resnet18().state_dict()),
        "res_net18",
    )
    import_run(other, run, _cfg())
    # every eval file goes: the floor too (another import may be another architecture)
    assert not any((run / n).exists() for n in ("eval.json", "eval_random.json", "summary.json"))
    # the same file taken otherwise (its inputs in [0, 1]: a COCO config) is evaluated anew too
    (run / "eval.json").write_text('{"segmentation": {"miou": 0.5}}')
    coco = load_pretrain_config(
        {"model": {"backbone": "resnet18"}, "data": {"dataset": "coco"}}, profile="cpu"
    )
    import_run(other, run, coco)
    assert not (run / "eval.json").exists()
    # a full disk while writing the new weights leaves the directory as it was: the old
    # weights, their sidecar, config and evaluation
    from detcon.official import importing

    (run / "eval.json").write_text('{"segmentation": {"miou": 0.5}}')
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(importing, "atomic_write", full)
    with pytest.raises(OSError, match="No space left"):
        import_run(release_r18, run, _cfg())
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    monkeypatch.undo()
    # interrupted once the new weights are staged: the old evaluation is gone already, so the
    # rerun (which finds the new sidecar and nothing changed) cannot keep it beside them
    real_write_json = importing.write_json

    def interrupted(path, data):
        if Path(path).name == "backbone.json":
            raise KeyboardInterrupt
        return real_write_json(path, data)

    monkeypatch.setattr(importing, "write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_run(release_r18, run, _cfg())
    assert not (run / "eval.json").exists()


def test_a_coco_checkpoint_sees_the_unnormalised_images_it_was_trained_on(release_r18, tmp_path):
    # The release applies ImageNet's mean and std to ImageNet images only: its COCO encoders
    # took RGB in [0, 1]. Evaluation feeds every encoder normalised images; an import whose
    # config says data.dataset: coco maps them back in front of conv1, before the TF-SAME pad.
    from detcon.augment import normalize
    from detcon.evaluate.backbones import weights_take_unit_range

    coco = load_pretrain_config(
        {"model": {"backbone": "resnet18"}, "data": {"dataset": "coco"}}, profile="cpu"
    )
    import_run(release_r18, tmp_path / "coco", coco)
    import_run(release_r18, tmp_path / "imagenet", _cfg())
    assert weights_take_unit_range(tmp_path / "coco")
    assert not weights_take_unit_range(tmp_path / "coco", "random")
    assert not weights_take_unit_range(tmp_path / "imagenet")
    official = official_resnet(release_r18)
    unit = torch.rand(2, 3, 64, 48)
    normalised = normalize(unit)
    want = trunk(official, unit)
    with torch.no_grad():
        got = backbone_from_run(tmp_path / "coco").eval()(normalised)
        imagenet = backbone_from_run(tmp_path / "imagenet").eval()(normalised)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert (imagenet - want).abs().max() / want.abs().max() > 0.05
    state = torch.load(tmp_path / "coco" / "backbone.pt", weights_only=True)
    with pytest.raises(ValueError, match="unit_range applies to imported official weights"):
        make_backbone(coco.model, state, unit_range=True)


def test_the_floor_of_a_wider_import_is_refused_not_built_at_another_width(release_r18, tmp_path):
    # The floor was a stock-width network beside a width-x2 import: another architecture.
    from detcon.evaluate.backbones import backbone_state

    run = tmp_path / "run"
    import_run(release_r18, run, _cfg())
    assert backbone_state(run, _cfg().model, backbone="random")  # the same shape: built
    meta = json.loads((run / "backbone.json").read_text())
    (run / "backbone.json").write_text(json.dumps({**meta, "architecture": "resnet18 (width x2)"}))
    with pytest.raises(ValueError, match=r"imported resnet18 \(width x2\): the random floor"):
        backbone_state(run, _cfg().model, backbone="random")


def test_a_null_notebook_parameter_is_refused_by_its_type(tmp_path, capsys):
    # A null notebook value beside a real one crashed the run id's token (TypeError) before
    # the parameter's type was checked.
    path = tmp_path / "official.yaml"
    path.write_text(
        "name: official\ndescription: test\ngrid:\n  union:\n"
        "    - point: {notebook.official_checkpoint: null}\n"
        "    - point: {notebook.official_checkpoint: data/r50.npy}\n"
    )
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "parameter official_checkpoint=None has type NoneType, expected str" in err
