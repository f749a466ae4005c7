"""The official-checkpoint importer (detcon.official) against Haiku's own outputs, without JAX.

The fixture under tests/fixtures/official was written by scripts/make_official_fixture.py with
JAX and dm-haiku: two tiny Haiku ResNets named as the release names its encoder, with random
weights and BatchNorm statistics, saved in the release's format (np.save of a pickled dict naming
Haiku's FlatMapping), and Haiku's eval-mode outputs on 33x33, 32x32 and 32x40 inputs.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from haiku_files import haiku_modules, trunk
from torch import nn

from detcon.cli import main as cli_main
from detcon.models import Backbone
from detcon.official import (
    HaikuResNet,
    backbone_from_state,
    convert_haiku_resnet,
    describe_resnet,
    import_official,
    load_official_backbone,
    load_release_file,
    needs_tf_same_padding,
    official_resnet,
    resnet_from_state_dict,
    tf_same_pads,
    use_tf_same_padding,
)

torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures" / "official"
NETWORKS = ("bottleneck", "basic")
INPUTS = ("input_33x33", "input_32x32", "input_32x40")
EVEN = ("input_32x32", "input_32x40")  # even at the stride-2 layers: TF-SAME pads asymmetrically


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference.npz") as data:
        return dict(data)


def _image(ref: dict[str, np.ndarray], name: str, dtype: torch.dtype) -> torch.Tensor:
    """(B, 3, H, W) from the fixture's NHWC int8 codes k (values k / scale, exact in float32)."""
    x = torch.from_numpy(ref[name].astype(np.float64) / float(ref["input_scale"]))
    return x.permute(0, 3, 1, 2).to(dtype)


def _rel_err(got: torch.Tensor, want: np.ndarray) -> float:
    """max |got - want| / max |want|, with want NHWC from Haiku."""
    w = torch.from_numpy(want).to(torch.float64)
    if w.dim() == 4:
        w = w.permute(0, 3, 1, 2)
    assert got.shape == w.shape
    return float((got.double() - w).abs().max() / w.abs().max())


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("inp", INPUTS)
def test_float64_matches_haiku(ref, network, inp):
    net = official_resnet(FIXTURES / f"{network}.npy").double()
    got = trunk(net, _image(ref, inp, torch.float64))
    assert _rel_err(got, ref[f"{network}/{inp}/features_f64"]) < 1e-10


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("inp", INPUTS)
def test_float32_matches_haiku(ref, network, inp):
    net = official_resnet(FIXTURES / f"{network}.npy")
    got = trunk(net, _image(ref, inp, torch.float32))
    assert got.dtype == torch.float32
    assert _rel_err(got, ref[f"{network}/{inp}/features_f64"]) < 1e-4
    assert _rel_err(got, ref[f"{network}/{inp}/features_f32"]) < 1e-4


@pytest.mark.parametrize("inp", INPUTS)
def test_classifier_becomes_fc(ref, inp):
    net = official_resnet(FIXTURES / "bottleneck.npy").double()
    with torch.no_grad():
        logits = net(_image(ref, inp, torch.float64))  # torchvision forward: avgpool, fc
    assert _rel_err(logits, ref[f"bottleneck/{inp}/logits_f64"]) < 1e-10


@pytest.mark.parametrize("network", NETWORKS)
def test_stock_torchvision_padding_does_not_match_on_even_sizes(ref, network):
    """Negative control: without TF-SAME padding only the all-odd size (33 = 1 mod 32) agrees."""
    net = official_resnet(FIXTURES / f"{network}.npy", tf_same=False).double()
    odd = trunk(net, _image(ref, "input_33x33", torch.float64))
    assert _rel_err(odd, ref[f"{network}/input_33x33/features_f64"]) < 1e-10
    for inp in EVEN:
        got = trunk(net, _image(ref, inp, torch.float64))
        assert _rel_err(got, ref[f"{network}/{inp}/features_f64"]) > 0.1


def test_online_network_is_chosen_over_the_target(ref):
    """basic.npy holds online and target (EMA) networks with the same Haiku names."""
    x = _image(ref, "input_32x32", torch.float64)
    want = ref["basic/input_32x32/features_f64"]
    online = official_resnet(FIXTURES / "basic.npy", network="online").double()
    target = official_resnet(FIXTURES / "basic.npy", network="target").double()
    assert _rel_err(trunk(online, x), want) < 1e-10
    assert _rel_err(trunk(target, x), want) > 0.1
    with pytest.raises(ValueError, match="matches 2 of the networks"):
        official_resnet(FIXTURES / "basic.npy", network="res_net18_1")


def test_load_official_backbone_is_an_evaluation_encoder(ref):
    bb = load_official_backbone(FIXTURES / "bottleneck.npy")
    assert isinstance(bb, Backbone) and isinstance(bb.net, torchvision.models.ResNet)
    assert (bb.out_channels, bb.stride) == (32, 32)
    assert not bb.training
    with torch.no_grad():
        out = bb(_image(ref, "input_32x40", torch.float32))
    assert out.shape == (1, 32, 1, 2)
    assert _rel_err(out, ref["bottleneck/input_32x40/features_f64"]) < 1e-4


def test_cli_import_writes_a_torchvision_state_dict_and_sidecar(ref, tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert cli_main(["import-official", str(FIXTURES / "bottleneck.npy"), "--out", str(out)]) == 0
    assert "imported" in capsys.readouterr().out
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert "conv1.weight" in state and not any(k.startswith("fc.") for k in state)
    assert state["layer2.1.conv2.weight"].shape == (4, 4, 3, 3)  # OIHW
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["padding"] == "tf_same" and meta["network"] == "params/res_net50"
    assert meta["ignored_modules"] == ["projector"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    # The converted file evaluates exactly like the original.
    x = _image(ref, "input_32x32", torch.float64)
    got = trunk(load_official_backbone(out).net.double(), x)
    assert _rel_err(got, ref["bottleneck/input_32x32/features_f64"]) < 1e-10

    # What the evaluation checks before building an encoder from a weights file.
    assert needs_tf_same_padding(out) and needs_tf_same_padding(FIXTURES / "bottleneck.npy")
    ours = tmp_path / "backbone.pt"
    torch.save(state, ours)
    assert not needs_tf_same_padding(ours)
    with torch.no_grad():
        got = backbone_from_state(state).double()(x)
    assert _rel_err(got, ref["bottleneck/input_32x32/features_f64"]) < 1e-10

    summary = import_official(FIXTURES / "bottleneck.npy", out, with_classifier=True)
    assert summary.classifier and summary.architecture.startswith("resnet17-like")
    assert torch.load(out, weights_only=True)["fc.weight"].shape == (5, 32)


def test_cli_reports_bad_input_as_one_paragraph(tmp_path, capsys):
    # A path longer than any wrap width, with hyphens: it must come out whole, whatever the
    # length of pytest's temporary directory (a 100-column wrap used to split it).
    deep = tmp_path / ("a-very-long-directory-name-" * 5) / "sub-dir"
    missing = deep / "nope.npy"
    assert cli_main(["import-official", str(missing), "--out", "x.pt"]) == 2
    err = capsys.readouterr().err
    assert f"{missing} not found" in err
    assert "https://storage.googleapis.com/dm-detcon/" in err
    assert err.count("\n") == 1  # one paragraph, one line
    deep.mkdir(parents=True)  # a folder given for the file: said so ("not found" before)
    assert cli_main(["import-official", str(deep), "--out", "x.pt"]) == 2
    assert f"{deep} is a folder: expected a checkpoint file" in capsys.readouterr().err


def test_refuses_pickles_that_would_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.getpid, ())  # harmless, but not an allowed class

    path = tmp_path / "evil.npy"
    np.save(path, {"params": {"x": Evil()}}, allow_pickle=True)
    with pytest.raises(ValueError, match=r"refusing to load .*getpid"):
        load_release_file(path)


def test_reads_files_written_with_numpy_1_names(tmp_path):
    """Pickles from numpy < 2 name numpy.core.multiarray (numpy 2: numpy._core.multiarray)."""
    arr = np.empty((), dtype=object)
    arr[()] = {"params": {"res_net50/~/initial_conv": {"w": np.arange(6.0).reshape(1, 1, 2, 3)}}}
    body = pickle.dumps(arr, protocol=2)  # protocol 2 names globals as text lines
    body = body.replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in body
    path = tmp_path / "old.npy"
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|O", "fortran_order": False, "shape": ()}
        )
        f.write(body)
    tree = load_release_file(path)
    assert tree["params"]["res_net50/~/initial_conv"]["w"].shape == (1, 1, 2, 3)


def test_reads_haiku_mappings_as_plain_dicts():
    tree = load_release_file(FIXTURES / "bottleneck.npy")
    assert type(tree) is dict and type(tree["params"]) is dict
    conv = tree["params"]["res_net50/~/initial_conv"]
    assert type(conv) is dict and conv["w"].shape == (7, 7, 3, 8)  # HWIO
    mean = tree["state"]["res_net50/~/initial_batchnorm/~/mean_ema"]["average"]
    assert mean.shape == (1, 1, 1, 8)


@pytest.mark.parametrize(
    "content,match",
    [
        ({"foo": {"bar": np.zeros(3)}}, r"no Haiku ResNet found.*'foo/bar'"),
        ("drop_state", r"no BatchNorm statistics.*initial_batchnorm/~/mean_ema/average"),
        ("add_final_bn", r"unknown modules.*final_batchnorm.*ResNet v2"),
    ],
)
def test_unknown_layouts_get_clear_errors(tmp_path, content, match):
    if isinstance(content, str):
        tree = load_release_file(FIXTURES / "bottleneck.npy")
        if content == "drop_state":
            del tree["state"]
        else:
            tree["params"]["res_net50/~/final_batchnorm"] = {"scale": np.ones((1, 1, 1, 32))}
        content = tree
    path = tmp_path / "ckpt.npy"
    np.save(path, content, allow_pickle=True)
    with pytest.raises(ValueError, match=match):
        official_resnet(path)


def test_not_a_checkpoint(tmp_path):
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros(3))
    with pytest.raises(ValueError, match="plain float64 array"):
        load_release_file(plain)
    text = tmp_path / "x.npy"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_release_file(text)


def test_deep_groups_map_multi_digit_block_indices():
    """Haiku names written from a torchvision net (block_11 etc.) convert back to the same net."""
    torch.manual_seed(0)
    src = HaikuResNet(stem_width=4, widths=(8, 8, 16, 16), blocks=(1, 1, 12, 1), bottleneck=True)
    sd = src.state_dict()
    modules = haiku_modules(sd, mean_shift=0.5, var_scale=2.0)
    state = convert_haiku_resnet(modules)
    assert set(state) == set(sd)
    net = resnet_from_state_dict(state)
    assert torch.equal(net.layer3[11].conv2.weight, src.layer3[11].conv2.weight)
    assert torch.equal(net.layer3[11].bn3.running_mean, src.layer3[11].bn3.running_mean + 0.5)


def test_standard_widths_give_torchvision_resnet50_keys():
    widths, blocks = (256, 512, 1024, 2048), (3, 4, 6, 3)
    net = HaikuResNet(
        stem_width=64, widths=widths, blocks=blocks, bottleneck=True, num_classes=1000
    )
    ours = {k: v.shape for k, v in net.state_dict().items()}
    use_tf_same_padding(net)  # hooks leave the state dict alone
    assert {k: v.shape for k, v in net.state_dict().items()} == ours
    tv = {k: v.shape for k, v in torchvision.models.resnet50(weights=None).state_dict().items()}
    assert ours == tv
    assert describe_resnet(net) == "resnet50"


@pytest.mark.parametrize(
    "size,kernel,stride,want",
    [
        ((224, 224), (3, 3), (2, 2), (0, 1, 0, 1)),  # even: one extra at the bottom/right
        ((225, 225), (3, 3), (2, 2), (1, 1, 1, 1)),  # odd: symmetric, as torchvision
        ((224, 225), (7, 7), (2, 2), (3, 3, 2, 3)),  # stem conv, H even and W odd
        ((56, 56), (1, 1), (2, 2), (0, 0, 0, 0)),  # 1x1 shortcut: never padded
        ((7, 7), (3, 3), (1, 1), (1, 1, 1, 1)),
    ],
)
def test_tf_same_pads(size, kernel, stride, want):
    assert tf_same_pads(size, kernel, stride) == want


def test_tf_same_hooks_follow_a_later_stride_to_dilation_change(ref):
    """FCN-style evaluation turns layer4's stride into dilation after loading: still SAME."""
    x = _image(ref, "input_32x32", torch.float64)
    net = official_resnet(FIXTURES / "bottleneck.npy").double()
    use_tf_same_padding(net)  # twice: no double padding
    assert _rel_err(trunk(net, x), ref["bottleneck/input_32x32/features_f64"]) < 1e-10
    plain = official_resnet(FIXTURES / "bottleneck.npy", tf_same=False).double()
    for n in (net, plain):  # layer4: stride 2 -> 1 (torchvision's replace_stride_with_dilation)
        for m in n.layer4.modules():
            if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                m.stride = (1, 1)
    assert trunk(net, x).shape[-2:] == (2, 2)  # output stride 16 now
    # Same input to both layer4s: the hooked stride-1 conv pads (1, 1) like the stock one.
    h = torch.randn(1, 32, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(net.layer4(h), plain.layer4(h), rtol=0, atol=1e-12)


@pytest.mark.parametrize("step", ["weights", "sidecar"])
def test_a_crash_while_importing_over_weights_keeps_the_old_ones(tmp_path, monkeypatch, step):
    # The old weights were removed before the new ones were written: a full disk lost them,
    # though the message said they were kept. Now nothing at the path moves until the new
    # weights are on disk, and Haiku weights never stand there without their sidecar.
    from detcon.official import importing

    out = tmp_path / "backbone.pt"
    torch.save({"w": torch.zeros(1)}, out)
    old = out.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(importing, "write_json" if step == "sidecar" else "atomic_write", crash)
    with pytest.raises(OSError, match="disk full"):
        importing._write_weights(out, {"w": torch.ones(1)}, {"padding": "tf_same"})
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.pt"]  # no sidecar, no temp


def test_weights_paths_that_cannot_take_the_weights_are_named(ref, tmp_path):
    release = FIXTURES / "bottleneck.npy"
    with pytest.raises(ValueError, match=r"w\.json: the weights cannot be a \.json file"):
        import_official(release, tmp_path / "w.json")
    with pytest.raises(IsADirectoryError, match="is a folder: expected the path of the weights"):
        import_official(release, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_saved_error_page_is_named_as_neither_kind_of_checkpoint(tmp_path):
    # torch's own message for it advised weights_only=False (running the file's code).
    page = tmp_path / "resnet50_detcon_b_imagenet_1k.pt"
    page.write_text("<?xml version='1.0'?><Error>NoSuchKey</Error>")
    with pytest.raises(ValueError, match=r"neither a release \.npy .* starts with b'<\?xml ") as e:
        load_official_backbone(page)
    assert "weights_only" not in str(e.value)
    # torch's pre-zip format (a bare pickle) is still read
    modern = tmp_path / "official.pt"
    import_official(FIXTURES / "bottleneck.npy", modern)
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.load(modern), legacy, _use_new_zipfile_serialization=False)
    (tmp_path / "legacy.json").write_text(modern.with_suffix(".json").read_text())
    assert legacy.read_bytes()[:1] == b"\x80"
    assert official_resnet(legacy).conv1.weight.equal(official_resnet(modern).conv1.weight)


def test_loaders_say_when_the_padding_does_not_fit_the_weights(tmp_path):
    # Each loader took the other kind of weights without a word: features shifted silently.
    from detcon.evaluate import load_torchvision_resnet

    imported = tmp_path / "official.pt"
    import_official(FIXTURES / "bottleneck.npy", imported)
    state = torch.load(imported, weights_only=True)
    with pytest.warns(UserWarning, match="Haiku-trained weights"):
        with pytest.raises(ValueError, match="do not fit torchvision resnet50"):
            load_torchvision_resnet(imported, "resnet50")  # the fixture is a tiny ResNet
    ours = tmp_path / "backbone.pt"
    torch.save(state, ours)  # the same tensors without the sidecar: read as ours
    with pytest.warns(UserWarning, match="no backbone.json saying"):
        load_official_backbone(ours)
    with pytest.warns(UserWarning, match="no backbone.json saying"):
        official_resnet(ours)
