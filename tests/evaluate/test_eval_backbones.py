"""Run-directory loading, random-vs-pretrained weights, torchvision export/import, stages."""

from __future__ import annotations

import pytest
import torch

from detcon.atomic import save_torch, write_json
from detcon.config import ModelConfig, load_pretrain_config, to_dict
from detcon.evaluate import (
    BackboneStages,
    backbone_from_run,
    backbone_state,
    load_run_config,
    load_torchvision_resnet,
    make_backbone,
)
from detcon.evaluate.backbones import fpn_stage_indices
from detcon.models import build_backbone

torch.set_num_threads(1)

SMALL = {"model": {"backbone": "small", "small_width": 8}}


def _run_dir(tmp_path, overrides=SMALL, seed=1):
    cfg = load_pretrain_config(overrides, profile="cpu")
    write_json(tmp_path / "config.json", to_dict(cfg))
    torch.manual_seed(seed)
    save_torch(tmp_path / "backbone.pt", build_backbone(cfg.model).state_dict())
    return cfg


def test_run_config_round_trips(tmp_path):
    cfg = _run_dir(tmp_path)
    assert load_run_config(tmp_path) == cfg


def test_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run_config(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run_config(tmp_path)
    cfg = _run_dir(tmp_path)
    (tmp_path / "backbone.pt").unlink()
    with pytest.raises(FileNotFoundError, match="backbone.pt"):
        backbone_state(tmp_path, cfg.model)
    # The random baseline needs no weights file.
    assert backbone_state(tmp_path, cfg.model, backbone="random")
    with pytest.raises(ValueError, match="pretrained"):
        backbone_state(tmp_path, cfg.model, backbone="imagenet")


def test_bad_config_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"method": "detcon_z"}')
    with pytest.raises(ValueError, match="config.json.*detcon_z"):
        load_run_config(tmp_path)


def test_pretrained_loads_the_file_and_random_is_seeded(tmp_path):
    cfg = _run_dir(tmp_path)
    saved = torch.load(tmp_path / "backbone.pt", weights_only=True)
    loaded = backbone_from_run(tmp_path).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    r0 = backbone_state(tmp_path, cfg.model, backbone="random", seed=0)
    r0_again = backbone_state(tmp_path, cfg.model, backbone="random", seed=0)
    r1 = backbone_state(tmp_path, cfg.model, backbone="random", seed=1)
    key = "stem.0.weight"
    assert torch.equal(r0[key], r0_again[key]) and not torch.equal(r0[key], r1[key])
    assert not torch.equal(r0[key], saved[key])


def test_random_backbone_leaves_the_global_rng_alone(tmp_path):
    cfg = _run_dir(tmp_path)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    backbone_state(tmp_path, cfg.model, backbone="random", seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_resnet_export_loads_into_plain_torchvision_resnet(tmp_path):
    model_cfg = ModelConfig(backbone="resnet18")
    ours = build_backbone(model_cfg).eval()
    state = ours.net.state_dict()
    save_torch(tmp_path / "backbone.pt", state)
    tv = load_torchvision_resnet(tmp_path / "backbone.pt", "resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        trunk = torch.nn.Sequential(*list(tv.children())[:-2])  # without avgpool and fc
        assert torch.allclose(trunk(x), ours(x))
    with pytest.raises(ValueError, match="do not fit"):
        load_torchvision_resnet(
            build_backbone(ModelConfig(backbone="small")).state_dict(), "resnet18"
        )
    with pytest.raises(FileNotFoundError, match="backbone.pt"):
        load_torchvision_resnet(tmp_path / "missing" / "backbone.pt")


def test_dilated_last_stage_keeps_weights_and_halves_the_stride():
    model_cfg = ModelConfig(backbone="resnet18")
    state = build_backbone(model_cfg).net.state_dict()
    plain, dilated = (
        make_backbone(model_cfg, state),
        make_backbone(model_cfg, state, dilate_last_stage=True),
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert plain.eval()(x).shape[-1] == 2 and dilated.eval()(x).shape[-1] == 4
    assert dilated.stride == 16
    assert all(
        torch.equal(a, b)
        for a, b in zip(plain.state_dict().values(), dilated.state_dict().values())
    )
    with pytest.raises(ValueError, match="do not fit"):
        make_backbone(ModelConfig(backbone="small"), state)


@pytest.mark.parametrize(
    "model_cfg,strides,fpn",
    [
        (ModelConfig(backbone="small", small_width=8, small_stride=8), [2, 4, 8, 8], [1, 3]),
        (ModelConfig(backbone="small", small_width=8, small_stride=16), [2, 4, 8, 16], [1, 2, 3]),
        (
            ModelConfig(backbone="small", small_width=8, small_stride=8, small_stem_stride=1),
            [1, 2, 4, 8],
            [2, 3],
        ),
        (ModelConfig(backbone="resnet18"), [4, 8, 16, 32], [0, 1, 2, 3]),
    ],
)
def test_stages_expose_channels_strides_and_end_at_the_backbone_output(model_cfg, strides, fpn):
    net = build_backbone(model_cfg).eval()
    stages = BackboneStages(net)
    assert stages.strides == strides
    assert fpn_stage_indices(stages.strides, 4) == fpn
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outs = stages(x)
        assert torch.equal(outs[-1], net(x))
    assert [o.shape[1] for o in outs] == stages.channels
    assert stages.channels[-1] == net.out_channels


def test_stages_leave_every_module_in_its_mode():
    net = build_backbone(ModelConfig(backbone="small", small_width=8)).eval()
    stages = BackboneStages(net)
    assert not stages.training and not any(m.training for m in net.modules())
    net.train()
    frozen = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)).eval()
    stages = BackboneStages(net)
    assert stages.training and not frozen.training
    assert all(m.training for m in net.modules() if m is not frozen)


def test_dilation_matches_torchvision_for_bottleneck_resnets():
    from torchvision.models.resnet import Bottleneck, ResNet

    from detcon.evaluate.backbones import _dilate_last_stage

    torch.manual_seed(0)
    ours = ResNet(Bottleneck, [1, 1, 1, 2])
    tv = ResNet(Bottleneck, [1, 1, 1, 2], replace_stride_with_dilation=[False, False, True])
    tv.load_state_dict(ours.state_dict())
    _dilate_last_stage(ours)
    ours.eval(), tv.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))


def test_a_corrupt_backbone_file_names_the_file_and_the_fix(tmp_path):
    cfg = _run_dir(tmp_path)
    path = tmp_path / "backbone.pt"
    good = bytearray(path.read_bytes())
    path.write_bytes(good[:200])
    with pytest.raises(ValueError, match=rf"{path} is truncated or corrupt.*detcon pretrain"):
        backbone_state(tmp_path, cfg.model)
    with pytest.raises(ValueError, match=rf"{path} is truncated or corrupt"):
        load_torchvision_resnet(path)
    good[len(good) // 2] ^= 0xFF  # one byte of a tensor: torch.load alone would read it
    path.write_bytes(good)
    with pytest.raises(ValueError, match=r"truncated or corrupt \(Bad CRC-32 for file"):
        backbone_state(tmp_path, cfg.model)
    # an encoder that diverged in training: every probe scored NaN features (the linear probe's
    # L-BFGS as numbers that reports read as real)
    state = build_backbone(cfg.model).state_dict()
    name = next(n for n in state if n.endswith("running_var"))
    state[name].view(-1)[0] = float("nan")
    save_torch(path, state)
    with pytest.raises(ValueError, match=rf"{name} holds NaN or infinite values: the encoder"):
        backbone_state(tmp_path, cfg.model)
