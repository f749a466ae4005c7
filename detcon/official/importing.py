"""The entry points: import a release checkpoint to a state dict file (:func:`import_official`)
or to an evaluation-only run directory (:func:`import_run`), and load one as a torchvision ResNet
or an evaluation encoder, with TF-SAME padding."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detcon.atomic import atomic_write, load_torch, write_json
from detcon.config import PretrainConfig, load_pretrain_config, merge, to_dict
from detcon.evaluate.backbones import UNIT_RANGE
from detcon.official.convert import _state_from_release
from detcon.official.padding import use_tf_same_padding
from detcon.official.release import RELEASE_URL, _is_release_file, load_release_file
from detcon.official.resnet import (
    HaikuResNet,
    backbone_name,
    check_backbone,
    describe_resnet,
    resnet_from_state_dict,
)


@dataclasses.dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_official` read and wrote."""

    architecture: str  # e.g. "resnet50", "resnet200 (width x2)"
    network: str  # where in the file the encoder was found, e.g. "params/res_net50"
    tensors: int  # entries of the written state dict
    classifier: bool  # whether the file had a classifier (written only with_classifier)
    ignored: tuple[str, ...]  # other top-level Haiku modules (projector, predictor, ...)
    out: Path


def _read_state(path: Path, network: str | None) -> dict[str, Tensor]:
    """torchvision keys -> tensors from a release ``.npy`` or an imported ``.pt``."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} {'is a folder' if path.is_dir() else 'not found'}: expected an official "
            f"checkpoint file ({RELEASE_URL}...npy) or the "
            "model.pt that `detcon import-official` wrote"
        )
    if _is_release_file(path):
        return _state_from_release(path, network)[0]
    with path.open("rb") as f:
        head = f.read(6)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: a zip, or a bare pickle
        raise ValueError(
            f"{path}: neither a release .npy (they start with b'\\x93NUMPY') nor a torch state "
            f"dict; it starts with {head!r} (a failed download saves the server's error page "
            "under the file's name)"
        )
    try:
        state = load_torch(path)
    except ValueError as exc:
        raise ValueError(f"{path}: neither a release .npy nor a torch state dict ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return state


def official_resnet(
    path: str | Path, *, network: str | None = None, tf_same: bool = True
) -> HaikuResNet:
    """The official checkpoint as a torchvision ResNet in eval mode, TF-SAME padded.

    Args:
        path: a release ``.npy`` file, or the ``.pt`` state dict ``detcon import-official``
            wrote from one.
        network: which network of a file holding several (a substring of the label the error
            lists, e.g. ``"online"``); default: the only one, else the online network.
        tf_same: install TF "SAME" padding (:func:`use_tf_same_padding`). Leave True for
            official weights; False is the stock-torchvision negative control.

    Returns:
        A :class:`HaikuResNet` (``isinstance(net, torchvision.models.ResNet)``), float32; ``fc``
        is the release's classifier when present, else the identity.
    """
    state = _read_state(Path(path), network)
    if tf_same:
        _warn_if_stock_weights(Path(path))
    net = resnet_from_state_dict(state)
    return use_tf_same_padding(net) if tf_same else net


def _warn_if_stock_weights(path: Path) -> None:
    """A state dict without the sidecar that marks Haiku weights is one of ours (or another
    torchvision model's): TF-SAME padding would shift its features. Said, not refused."""
    if path.is_file() and not _is_release_file(path) and _tf_same_sidecar(path) is None:
        warnings.warn(
            f'{path} has no {path.with_suffix(".json").name} saying "padding": "tf_same": '
            "weights trained with stock padding (e.g. one of our backbone.pt) get TF-SAME "
            "padding here; load them with detcon.evaluate.load_torchvision_resnet instead",
            stacklevel=3,
        )


def backbone_from_state(state: Mapping[str, Tensor]) -> nn.Module:
    """An evaluation encoder from imported (Haiku-trained) torchvision-keyed weights.

    Returns :class:`detcon.models.Backbone` (eval mode) around :func:`resnet_from_state_dict`
    with TF-SAME padding and without ``fc``: ``forward`` maps (B, 3, H, W) float ImageNet-
    normalised images to the final feature map (B, C, ceil(H/32), ceil(W/32)); attributes
    ``out_channels`` (2048 for the ResNet-50) and ``stride`` (32); ``.net`` is the torchvision
    ResNet (for FPN stages). Evaluation code may then trade layer4's stride for dilation, as for
    our encoders: the padding hooks follow the new stride. ``.train()`` it for fine-tuning.
    """
    from detcon.models import Backbone

    net = use_tf_same_padding(resnet_from_state_dict(state))
    return Backbone(net, net.out_channels, 32).eval()


def load_official_backbone(path: str | Path, *, network: str | None = None) -> nn.Module:
    """An official checkpoint (release ``.npy`` or imported ``.pt``) as an evaluation encoder,
    like our own run's backbone: :func:`backbone_from_state` of its weights."""
    state = _read_state(Path(path), network)
    _warn_if_stock_weights(Path(path))
    return backbone_from_state(state)


def needs_tf_same_padding(path: str | Path) -> bool:
    """Whether the weights file holds Haiku-trained weights that need :func:`use_tf_same_padding`:
    a release ``.npy``, or a state dict whose ``.json`` sidecar (written by
    :func:`import_official`) says ``"padding": "tf_same"``. False for our own ``backbone.pt``."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise FileNotFoundError(f"{path} {what}: expected a weights file")
    return _is_release_file(path) or _tf_same_sidecar(path) is not None


def _tf_same_sidecar(path: Path) -> dict[str, Any] | None:
    """The ``.json`` sidecar :func:`import_official` wrote beside ``path`` when it says
    ``"padding": "tf_same"``; None when there is no such sidecar."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{sidecar} is not valid JSON: {exc}") from exc
    return meta if isinstance(meta, dict) and meta.get("padding") == "tf_same" else None


def _release_source(path: Path) -> dict[str, str]:
    """Which release file imported weights came from: its name and sha256."""
    return {"source": path.name, "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _weights_meta(source: Mapping[str, str], network: str, arch: str, **extra: Any) -> dict:
    """The ``.json`` sidecar of imported weights: where they came from and that they need
    TF-SAME padding (:func:`needs_tf_same_padding` reads it)."""
    return {
        **source,
        "network": network,
        "architecture": arch,
        "padding": "tf_same",
        "note": "Haiku weights: load with detcon.official.load_official_backbone (or apply "
        "detcon.official.use_tf_same_padding to a torchvision ResNet) for exact features",
        **extra,
    }


def _check_weights_path(out: Path) -> None:
    """``out`` can take the weights: not a folder, not a name their ``.json`` sidecar takes."""
    if out.is_dir():
        raise IsADirectoryError(
            f"{out} is a folder: expected the path of the weights file to write, e.g. "
            f"{out / 'model.pt'}"
        )
    if out.suffix == ".json":
        raise ValueError(
            f"{out}: the weights cannot be a .json file, their sidecar is {out.name}: expected "
            "a name such as model.pt"
        )


def _write_weights(
    out: Path,
    state: Mapping[str, Tensor],
    meta: Mapping[str, Any],
    staged_hook: Callable[[], Any] | None = None,
) -> None:
    """``out`` (torch state dict) and its ``.json`` sidecar. The weights are written beside
    ``out`` first (a full disk or a crash there leaves whatever ``out`` held as it was), then
    ``staged_hook`` runs, then the sidecar, which marks them as needing TF-SAME padding, then they
    move into place: Haiku weights never stand at ``out`` without it."""
    _check_weights_path(out)
    staged = atomic_write(out.with_name(f".{out.name}.new"), lambda f: torch.save(dict(state), f))
    try:
        if staged_hook is not None:
            staged_hook()
        write_json(out.with_suffix(".json"), dict(meta))
        os.replace(staged, out)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def import_official(
    path: str | Path, out: str | Path, *, network: str | None = None, with_classifier: bool = False
) -> ImportSummary:
    """Convert a release ``.npy`` checkpoint to a torchvision state dict file, atomically.

    Writes ``out`` (``torch.save`` of a dict of tensors with plain torchvision ResNet keys, like
    ``backbone.pt`` of our runs: no ``fc`` unless ``with_classifier``) and ``out`` with suffix
    ``.json`` (architecture, source file and its sha256, ``"padding": "tf_same"``: the weights
    need :func:`use_tf_same_padding`, which :func:`load_official_backbone` applies).
    """
    path, out = Path(path), Path(out)
    _check_weights_path(out)  # before the conversion's work
    if not path.is_file():
        load_release_file(path)  # raises the FileNotFoundError with the download hint
    state, chosen, ignored = _state_from_release(path, network)
    net = resnet_from_state_dict(state)  # validates the whole state before anything is written
    has_fc = "fc.weight" in state
    if not with_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    arch = describe_resnet(net)
    meta = _weights_meta(
        _release_source(path),
        chosen.label,
        arch,
        classifier=has_fc and with_classifier,
        ignored_modules=ignored,
    )
    _write_weights(out, state, meta)
    return ImportSummary(arch, chosen.label, len(state), has_fc, tuple(ignored), out)


def _refuse_trained_run(run_dir: Path) -> None:
    """An import goes into a new run directory or one an earlier import made, never into one of
    our pretraining runs."""
    ours = [n for n in ("checkpoint.pt", "metrics.jsonl") if (run_dir / n).exists()]
    summary = run_dir / "train_summary.json"
    if summary.is_file():
        try:
            official = bool(json.loads(summary.read_text()).get("official"))
        except (ValueError, AttributeError):
            official = False
        if not official:
            ours.append(summary.name)
    if ours:
        raise FileExistsError(
            f"{run_dir} holds a pretraining run ({', '.join(ours)}): the imported weights would "
            "replace its encoder beside its checkpoint and evaluations; import into a new run "
            "directory"
        )


def _imported_before(run_dir: Path) -> Any:
    """The ``backbone.json`` of weights imported into ``run_dir`` before (None if none)."""
    try:
        return json.loads((run_dir / "backbone.json").read_text())
    except (OSError, ValueError):
        return None


def _forget_evaluations(run_dir: Path) -> None:
    """Remove what was measured on other imported weights: every eval file (the floor and the
    ceiling too: another import may be another architecture) and the launcher's summary."""
    for name in ("eval.json", "eval_random.json", "eval_supervised.json", "summary.json"):
        (run_dir / name).unlink(missing_ok=True)


def import_run(
    path: str | Path,
    run_dir: str | Path,
    cfg: PretrainConfig | None = None,
    *,
    network: str | None = None,
    profile: str = "paper",
    overrides: Mapping[str, Any] | None = None,
) -> PretrainConfig:
    """Make ``run_dir`` a run directory holding an official checkpoint, evaluated like ours.

    Writes what ``detcon evaluate`` and the launcher read from a pretraining run
    (docs/run-directory.md): ``backbone.pt`` (torchvision keys, no ``fc``) with its
    ``backbone.json`` sidecar (``"padding": "tf_same"``: evaluation then builds the encoder with
    TF-SAME padding), ``config.json`` and ``train_summary.json`` (``"official": true``, the
    release file, its sha256 and the architecture; no training happened).

    Args:
        path: a release ``.npy`` file, or the ``.pt`` that :func:`import_official` wrote from
            one (its ``.json`` sidecar must say ``"padding": "tf_same"``: a state dict of
            stock-padded weights, e.g. one of our ``backbone.pt``, is refused).
        run_dir: created if needed.
        cfg: the config that describes the checkpoint (what the release trained: method, data,
            ``model.backbone``); its ``model.backbone`` must be the weights' depth.
        network: as for :func:`import_official`.
        profile, overrides: without ``cfg``: the profile's defaults, then the (nested) overrides;
            ``model.backbone`` is read from the weights unless the overrides set it.

    Returns:
        The config written to ``config.json``.

    Raises:
        FileNotFoundError: no such file (with where the release's files are).
        ValueError: an unknown layout, a ``.pt`` without the TF-SAME sidecar, or weights whose
            depth is not ``model.backbone``.
        FileExistsError: ``run_dir`` holds a pretraining run of ours (its checkpoint, metrics
            and evaluations would stay beside the imported weights).
    """
    path, run_dir = Path(path), Path(run_dir)
    _refuse_trained_run(run_dir)
    if path.is_file() and _is_release_file(path):
        state, chosen, _ = _state_from_release(path, network)
        source = _release_source(path)
        label = chosen.label
    else:
        state = _read_state(path, network)  # FileNotFoundError / not a checkpoint
        meta = _tf_same_sidecar(path)
        if meta is None:
            raise ValueError(
                f"{path} is a state dict without a sidecar {path.with_suffix('.json').name} saying "
                '"padding": "tf_same": expected a release .npy file or the .pt that `detcon '
                "import-official --out` wrote from one (our own backbone.pt needs no import)"
            )
        label = meta.get("network", "state dict")
        source = {k: meta.get(k, "") for k in ("source", "source_sha256")}
    net = resnet_from_state_dict(state)
    if cfg is None:
        default = {"model": {"backbone": backbone_name(net, path)}}
        cfg = load_pretrain_config(merge(default, overrides or {}), profile=profile)
    check_backbone(net, cfg.model.backbone, path)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    # The release normalises ImageNet's images only (A8): a COCO checkpoint saw [0, 1] RGB
    inputs = {"inputs": UNIT_RANGE} if cfg.data.dataset == "coco" else {}
    meta = _weights_meta(source, label, describe_resnet(net), **inputs)
    run_dir.mkdir(parents=True, exist_ok=True)
    # another file, or the same taken otherwise: the earlier weights' evaluations go once the
    # new weights are staged (a full disk there leaves the directory as it was) and before their
    # sidecar is written (after it, an interrupted import's rerun would find nothing changed)
    changed = _imported_before(run_dir) != json.loads(json.dumps(meta))
    _write_weights(
        run_dir / "backbone.pt",
        state,
        meta,
        staged_hook=(lambda: _forget_evaluations(run_dir)) if changed else None,
    )
    write_json(run_dir / "config.json", to_dict(cfg))
    write_json(
        run_dir / "train_summary.json",
        {
            "official": True,
            **source,
            "architecture": meta["architecture"],
            "steps": 0,
            "method": cfg.method,
            "mask_source": cfg.masks.source,
        },
    )
    return cfg
