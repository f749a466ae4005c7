"""Import the official DetCon release's pretrained checkpoints into torchvision ResNets, exactly.

The release (google-deepmind/detcon, README "Pre-trained checkpoints") publishes Haiku ResNet
weights as ``.npy`` files in its bucket https://storage.googleapis.com/dm-detcon/ (e.g.
``resnet50_detcon_b_imagenet_1k.npy``, ``resnet200_detcon_b_imagenet_1k.npy`` and COCO-pretrained
ResNet-50s). A file is ``np.save`` of a pickled dict; files written with old Haiku versions name
Haiku's own mapping class (``haiku._src.data_structures.FlatMapping``) in the pickle.

This module

- opens such a file without JAX and without executing arbitrary pickles
  (:func:`load_release_file`: a restricted unpickler that allows numpy arrays, plain builtins and
  Haiku's mapping classes, the latter read as ``dict``);
- finds the encoder by its Haiku module names anywhere in the tree (the top-level layout is not
  documented) and maps Haiku's ResNet v1 names and layouts to torchvision's
  (:func:`convert_haiku_resnet`);
- rebuilds a torchvision :class:`~torchvision.models.resnet.ResNet` of whatever depth and width
  the weights describe (:func:`resnet_from_state_dict`: ResNet-50/101/152/200, any width
  multiplier, basic or bottleneck blocks);
- adds TensorFlow "SAME" padding to it (:func:`use_tf_same_padding`): Haiku pads asymmetrically
  (one extra row/column at the bottom/right) wherever a stride-2 window meets an even input size,
  which torchvision's symmetric padding does not reproduce. Imported weights are only exact with
  it; evaluation and export of imported weights use it.

Name mapping (Haiku ``ResNetTorso`` of the release's ``utils/networks.py`` and Haiku's
``hk.nets.ResNet.BlockV1`` -> torchvision):

==============================================================  =================================
``<enc>/~/initial_conv``                                         ``conv1``
``<enc>/~/initial_batchnorm``                                    ``bn1``
``<enc>/~/block_group_{g}/~/block_{b}/~/conv_{k}``               ``layer{g+1}.{b}.conv{k+1}``
``<enc>/~/block_group_{g}/~/block_{b}/~/batchnorm_{k}``          ``layer{g+1}.{b}.bn{k+1}``
``<enc>/~/block_group_{g}/~/block_{b}/~/shortcut_conv``          ``layer{g+1}.{b}.downsample.0``
``<enc>/~/block_group_{g}/~/block_{b}/~/shortcut_batchnorm``     ``layer{g+1}.{b}.downsample.1``
``classifier`` (beside the encoder; optional)                    ``fc``
==============================================================  =================================

``<enc>`` is ``res_net50``, ``res_net200``, ... (a ``_1`` suffix may appear). Conv kernels are
HWIO in Haiku and OIHW in torch; BatchNorm ``scale``/``offset`` are (1, 1, 1, C) and become
``weight``/``bias`` (C,); the moving statistics are the ``average`` of the states
``<bn>/~/mean_ema`` and ``<bn>/~/var_ema`` (Haiku's BatchNorm uses exactly those at test time).
Both libraries put the stride of a bottleneck on its 3x3 conv (ResNet v1.5) and use eps 1e-5
(release ``detcon_b_config.py``).
"""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import hashlib
import importlib
import json
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from detcon.atomic import atomic_write, write_json
from detcon.config import Backbone, PretrainConfig, load_pretrain_config, merge, to_dict

__all__ = [
    "HaikuResNet",
    "ImportSummary",
    "RELEASE_URL",
    "backbone_from_state",
    "backbone_name",
    "check_backbone",
    "convert_haiku_resnet",
    "describe_resnet",
    "import_official",
    "import_run",
    "load_official_backbone",
    "load_release_file",
    "needs_tf_same_padding",
    "official_resnet",
    "register_cli",
    "resnet_from_state_dict",
    "tf_same_pads",
    "use_tf_same_padding",
]

RELEASE_URL = "https://storage.googleapis.com/dm-detcon/"
# The ResNets a config can name (model.backbone); the release's files are among them.
_STANDARD_DEPTHS = tuple(b for b in get_args(Backbone) if b.startswith("resnet"))

# ---------------------------------------------------------------------------------------------
# Safe loading of the release's .npy files
# ---------------------------------------------------------------------------------------------


class _HaikuMapping(dict):
    """Stand-in for Haiku's mapping classes (``FlatMapping``/``FlatMap``/``frozendict``).

    Their pickles call the class with a plain mapping (``FlatMap.__reduce__`` returns
    ``(FlatMapping, (mapping,))``; ``frozendict`` likewise), which a ``dict`` accepts. A pickle
    that instead restores slot state gets it through :meth:`__setstate__`.
    """

    def __setstate__(self, state: Any) -> None:
        slots = state[1] if isinstance(state, tuple) and len(state) == 2 else state
        for key in ("_mapping", "_storage"):
            if isinstance(slots, Mapping) and isinstance(slots.get(key), Mapping):
                self.update(slots[key])
                return
        keys = sorted(slots) if isinstance(slots, Mapping) else type(slots).__name__
        raise pickle.UnpicklingError(
            f"a Haiku mapping was pickled as internal state {keys}, which cannot be read without "
            "JAX; re-save it with a current Haiku (jax.device_get, then np.save of plain dicts)"
        )


# (module, name) -> the object to hand to the unpickler. ``numpy.core`` became ``numpy._core``
# in numpy 2: files written with either name load with either numpy.
_NUMPY_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
}
_BUILTINS_ALLOWED = {
    "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str",
    "bytes", "bytearray",
}  # fmt: skip
_HAIKU_MAPPINGS = {"FlatMapping", "FlatMap", "frozendict"}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of bytes use it (latin-1 only)."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


class _ReleaseUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction, plain builtins and Haiku's
    mapping classes (as :class:`_HaikuMapping`): nothing in a downloaded file can run code."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("haiku.") and name in _HAIKU_MAPPINGS:
            return _HaikuMapping
        if module == "builtins" and name in _BUILTINS_ALLOWED:
            return getattr(builtins, name)
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "_codecs" and name == "encode":  # bytes in protocol-2 pickles
            return _latin1_encode
        legacy = module.replace("numpy._core", "numpy.core", 1)
        if (legacy, name) in _NUMPY_ALLOWED:
            for candidate in (legacy.replace("numpy.core", "numpy._core", 1), legacy):
                try:
                    return getattr(importlib.import_module(candidate), name)
                except (ImportError, AttributeError):
                    continue
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a release checkpoint may only hold numpy "
            "arrays, Python builtins and Haiku mappings (FlatMapping/FlatMap/frozendict)"
        )


def load_release_file(path: str | Path) -> dict[str, Any]:
    """Read a release ``.npy`` checkpoint into nested plain dicts of numpy arrays, without JAX.

    The file must be an ``.npy`` holding one pickled object (``np.save`` of a dict). Only numpy
    arrays/scalars, Python builtins and Haiku's mapping classes are reconstructed; anything else
    is refused with a ValueError naming the class.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not an ``.npy`` file, not a pickled object array, a refused class, or not a
            mapping at the top.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected a checkpoint of the official release, e.g. "
            f"{RELEASE_URL}resnet50_detcon_b_imagenet_1k.npy"
        )
    with path.open("rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as exc:
            raise ValueError(
                f"{path} is not a readable .npy file ({exc}); expected a checkpoint of the "
                "official release (np.save of a pickled dict)"
            ) from exc
        if dtype != np.dtype(object) or shape != ():
            raise ValueError(
                f"{path} holds a plain {dtype} array of shape {shape}, not a pickled dict: "
                "expected a checkpoint of the official release"
            )
        try:
            obj = _ReleaseUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: cannot read the pickled checkpoint: {exc}") from exc
    if isinstance(obj, np.ndarray) and obj.shape == () and obj.dtype == object:
        obj = obj.item()
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a pickled dict at the top, found {type(obj).__name__}")
    return _plain(obj)


def _plain(obj: Any) -> Any:
    """Nested mappings as plain dicts with string keys."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    return obj


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a/b/c": leaf}`` for every non-mapping leaf; Haiku names already contain ``/~/``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        if isinstance(value, Mapping):
            out.update(_flatten(value, path))
        else:
            out[path] = value
    return out


# ---------------------------------------------------------------------------------------------
# Finding the encoder in the tree and mapping its names
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Found:
    """One network candidate: where its params (and state) live in the file."""

    role: str  # container path with "params"/"state" removed: pairs params with their state
    encoder: str  # Haiku module name, e.g. "res_net50" or "res_net200_1"
    label: str  # params container + encoder, shown to the user and matched by ``network``


def _role(container: str) -> str:
    return re.sub(r"params|state", "", container)


_CONV_LEAF = "/~/initial_conv/w"


def _candidates(flat: Mapping[str, Any]) -> list[_Found]:
    """Every ``<container>/<encoder>/~/initial_conv/w`` in the file, as a network candidate.

    The encoder's submodules are built in its ``__init__``, so Haiku names them
    ``<encoder>/~/<module>`` (modules built inside ``__call__``, like the heads' Linear layers,
    have no ``~``: ``projector/linear``).
    """
    found: dict[tuple[str, str], _Found] = {}
    for path in flat:
        if path.endswith(_CONV_LEAF):
            container, _, encoder = path[: -len(_CONV_LEAF)].rpartition("/")
            label = f"{container}/{encoder}" if container else encoder
            role = _role(container)
            found.setdefault((role, encoder), _Found(role, encoder, label))
    return sorted(found.values(), key=lambda c: c.label)


def _select(cands: list[_Found], network: str | None, flat: Mapping[str, Any]) -> _Found:
    if not cands:
        paths = sorted(flat)
        raise ValueError(
            "no Haiku ResNet found: expected a module '<encoder>/~/initial_conv' with a 'w' "
            f"(e.g. 'params/res_net50/~/initial_conv/w'); the file holds {len(paths)} arrays: "
            f"{paths[:10]}{' ...' if len(paths) > 10 else ''}"
        )
    labels = [c.label for c in cands]
    if network is not None:
        hits = [c for c in cands if c.label == network] or [c for c in cands if network in c.label]
        if len(hits) != 1:
            raise ValueError(f"network={network!r} matches {len(hits)} of the networks {labels}")
        return hits[0]
    if len(cands) == 1:
        return cands[0]
    # The release's state holds online and target (EMA) networks; the paper evaluates the
    # online encoder (as BYOL does).
    online = [c for c in cands if "online" in c.label.lower() and "target" not in c.label.lower()]
    if len(online) == 1:
        return online[0]
    raise ValueError(f"the file holds several ResNets {labels}: choose one with network=...")


def _network_tree(
    flat: Mapping[str, Any], chosen: _Found
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray], list[str]]:
    """The chosen encoder's ``{module: {leaf: array}}`` (params and state of every container of
    its role), the ``classifier`` beside it (if any), and the other top-level modules there
    (heads, step counters), which are left out."""
    modules: dict[str, dict[str, np.ndarray]] = {}
    where: dict[tuple[str, str], str] = {}
    containers: set[str] = set()
    anchor = f"{chosen.encoder}/~/"
    for path, value in flat.items():
        i = path.find(anchor)
        if i < 0 or (i > 0 and path[i - 1] != "/"):
            continue
        container = path[: max(i - 1, 0)]
        if _role(container) != chosen.role:
            continue
        inner, _, leaf = path[i + len(anchor) :].rpartition("/")
        if (inner, leaf) in where:
            raise ValueError(
                f"'{anchor}{inner}/{leaf}' appears twice, in {where[inner, leaf]!r} and "
                f"{container!r}: choose the network with network=..."
            )
        where[inner, leaf] = container
        containers.add(container)
        modules.setdefault(inner, {})[leaf] = np.asarray(value)
    classifier: dict[str, np.ndarray] = {}
    ignored: set[str] = set()
    for container in containers:
        start = f"{container}/" if container else ""
        for path, value in flat.items():
            if not path.startswith(start) or path[len(start) :].startswith(anchor):
                continue
            rest = path[len(start) :]
            if rest in ("classifier/w", "classifier/b"):
                classifier[rest[-1]] = np.asarray(value)
            else:
                ignored.add(rest.split("/")[0])
    return modules, classifier, sorted(ignored)


_BLOCK = re.compile(
    r"block_group_([0-3])/~/block_(\d+)/~/"
    r"(?:(?P<conv>conv)_(?P<ck>\d)|(?P<bn>batchnorm)_(?P<bk>\d)|shortcut_(?P<short>conv|batchnorm))"
)


def _torch_name(module: str) -> tuple[str, bool] | None:
    """(torchvision module name, is_conv) of a Haiku encoder module, or None if unknown."""
    if module == "initial_conv":
        return "conv1", True
    if module == "initial_batchnorm":
        return "bn1", False
    m = _BLOCK.fullmatch(module)
    if m is None:
        return None
    prefix = f"layer{int(m[1]) + 1}.{int(m[2])}"
    if m["conv"]:
        return f"{prefix}.conv{int(m['ck']) + 1}", True
    if m["bn"]:
        return f"{prefix}.bn{int(m['bk']) + 1}", False
    is_conv = m["short"] == "conv"
    return f"{prefix}.downsample.{0 if is_conv else 1}", is_conv


def _vector(name: str, leaf: str, value: np.ndarray) -> Tensor:
    """A BatchNorm (1, 1, 1, C) array as a (C,) tensor."""
    if value.ndim == 0 or any(d != 1 for d in value.shape[:-1]):
        raise ValueError(f"{name}/{leaf}: expected shape (1, 1, 1, C) or (C,), got {value.shape}")
    return torch.from_numpy(np.ascontiguousarray(value.reshape(-1)))


def convert_haiku_resnet(
    modules: Mapping[str, Mapping[str, np.ndarray]],
    classifier: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Tensor]:
    """Map a Haiku ResNet v1 encoder's params and BN state to a torchvision ResNet state dict.

    Args:
        modules: ``{module inside the encoder: {leaf: array}}``, params and state together, e.g.
            ``{"initial_conv": {"w": (7, 7, 3, 64)}, "initial_batchnorm": {"scale": (1, 1, 1,
            64), "offset": ...}, "initial_batchnorm/~/mean_ema": {"average": ..., "counter":
            ...}, ...}``.
        classifier: the ``classifier`` Linear's ``{"w": (C, N), "b": (N,)}``, or None.

    Returns:
        torchvision keys (``conv1.weight``, ``layer1.0.bn1.running_mean``, ``fc.weight``...) ->
        tensors in the file's dtype (float32 for the release); ``num_batches_tracked`` is the EMA
        ``counter`` where present, else 0.

    Raises:
        ValueError: unknown modules (e.g. ResNet v2's ``final_batchnorm``), missing leaves or
            statistics, or shapes that are not Haiku's; the message lists what was found.
    """
    state: dict[str, Tensor] = {}
    unknown: list[str] = []
    stats: dict[str, dict[str, Mapping[str, np.ndarray]]] = {}  # Haiku BN -> {"mean_ema": ...}
    batchnorms: dict[str, str] = {}  # Haiku BN module -> torchvision BN module
    for module, leaves in modules.items():
        base, sep, ema = module.rpartition("/~/")
        if sep and ema in ("mean_ema", "var_ema"):
            stats.setdefault(base, {})[ema] = leaves
            continue
        if module == "logits" and not classifier:  # ResNetTorso's own head, if it was built
            classifier = dict(leaves)
            continue
        target = _torch_name(module)
        if target is None:
            unknown.append(module)
            continue
        name, is_conv = target
        if is_conv:
            w = np.asarray(leaves.get("w"))
            if set(leaves) != {"w"} or w.ndim != 4:
                shapes = {k: np.shape(v) for k, v in leaves.items()}
                raise ValueError(
                    f"{module}: expected a bias-free conv, w (H, W, I, O); got {shapes}"
                )
            # HWIO (Haiku) -> OIHW (torch)
            state[f"{name}.weight"] = torch.from_numpy(
                np.ascontiguousarray(w.transpose(3, 2, 0, 1))
            )
        else:
            if set(leaves) != {"scale", "offset"}:
                raise ValueError(
                    f"{module}: expected BatchNorm leaves offset, scale; got {sorted(leaves)}"
                )
            state[f"{name}.weight"] = _vector(module, "scale", leaves["scale"])
            state[f"{name}.bias"] = _vector(module, "offset", leaves["offset"])
            batchnorms[module] = name
    if unknown:
        hint = ""
        if "final_batchnorm" in unknown:
            hint = " (final_batchnorm: a ResNet v2, which the release's DetCon-B does not use)"
        raise ValueError(
            f"unknown modules in the Haiku ResNet: {sorted(unknown)[:10]}{hint}; expected "
            "initial_conv, initial_batchnorm and block_group_{0-3}/~/block_{b}/~/{conv_k, "
            "batchnorm_k, shortcut_conv, shortcut_batchnorm}"
        )
    orphans = sorted(set(stats) - set(batchnorms))
    if orphans:
        raise ValueError(f"BatchNorm statistics without BatchNorm parameters: {orphans[:10]}")
    for module, name in batchnorms.items():
        found = stats.get(module, {})
        missing = [
            f"{module}/~/{e}/average"
            for e in ("mean_ema", "var_ema")
            if "average" not in found.get(e, {})
        ]
        if missing:
            raise ValueError(
                f"no BatchNorm statistics {missing}: a release checkpoint keeps them in the "
                "network state (mean_ema/var_ema) beside the params"
            )
        state[f"{name}.running_mean"] = _vector(module, "mean_ema", found["mean_ema"]["average"])
        state[f"{name}.running_var"] = _vector(module, "var_ema", found["var_ema"]["average"])
        counter = found["mean_ema"].get("counter")
        state[f"{name}.num_batches_tracked"] = torch.tensor(
            0 if counter is None else int(np.asarray(counter)), dtype=torch.long
        )
    if classifier:
        w, b = np.asarray(classifier.get("w")), np.asarray(classifier.get("b"))
        if set(classifier) != {"w", "b"} or w.ndim != 2 or b.shape != w.shape[1:]:
            shapes = {k: np.shape(v) for k, v in classifier.items()}
            raise ValueError(f"classifier: expected Linear w (C, N) and b (N,), got {shapes}")
        state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(w.T))  # (in, out) -> (out, in)
        state["fc.bias"] = torch.from_numpy(np.ascontiguousarray(b))
    return state


# ---------------------------------------------------------------------------------------------
# A torchvision ResNet of any Haiku ResNet's depth and width
# ---------------------------------------------------------------------------------------------


class HaikuResNet(ResNet):
    """A torchvision :class:`ResNet` with free stem width, group widths and block counts.

    ``ResNet.__init__`` hard-codes a 64-wide stem and widths 64..512 x expansion, so this sets up
    the same modules (same names, torchvision's own ``BasicBlock``/``Bottleneck`` and
    ``forward``) for any width multiplier the release used: ``stem_width = 64 m`` and
    ``widths = (256, 512, 1024, 2048) m`` give the release's ResNet-50/101/152/200 at width
    ``m``. For the standard widths the module tree and state-dict keys are torchvision's.

    Args:
        stem_width: output channels of ``conv1``.
        widths: output channels of each of the four groups (bottleneck: divisible by 4; the
            inner width is a quarter, as in Haiku's ``BlockV1`` and torchvision's Bottleneck).
        blocks: blocks per group.
        bottleneck: Bottleneck (1x1, 3x3, 1x1) or BasicBlock (3x3, 3x3) blocks.
        shortcuts: ``(group, block)`` pairs (0-based) with a projection shortcut (``downsample``).
            Default: the first block of every group (the release's ``use_projection=True``).
        num_classes: size of ``fc``; None for no classifier (``fc`` is the identity).
    """

    def __init__(
        self,
        *,
        stem_width: int,
        widths: tuple[int, int, int, int],
        blocks: tuple[int, int, int, int],
        bottleneck: bool,
        shortcuts: Iterable[tuple[int, int]] | None = None,
        num_classes: int | None = None,
    ) -> None:
        nn.Module.__init__(self)
        if len(widths) != 4 or len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"widths={widths}, blocks={blocks}: expected four groups, >= 1 block")
        if bottleneck and any(w % 4 for w in widths):
            raise ValueError(f"widths={widths}: bottleneck widths must be divisible by 4")
        shortcuts = set(shortcuts) if shortcuts is not None else {(g, 0) for g in range(4)}
        # Attributes torchvision's ResNet methods read.
        self._norm_layer = nn.BatchNorm2d
        self.groups, self.base_width, self.dilation = 1, 64, 1
        self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = stem_width
        for g, (width, n, stride) in enumerate(zip(widths, blocks, (1, 2, 2, 2))):
            layer = []
            for b in range(n):
                s = stride if b == 0 else 1
                down = None
                if (g, b) in shortcuts:
                    down = nn.Sequential(
                        nn.Conv2d(cin, width, kernel_size=1, stride=s, bias=False),
                        nn.BatchNorm2d(width),
                    )
                elif s != 1 or cin != width:
                    raise ValueError(
                        f"group {g} block {b} changes shape ({cin} -> {width} channels, stride "
                        f"{s}) but has no projection shortcut"
                    )
                if bottleneck:
                    layer.append(Bottleneck(cin, width // 4, stride=s, downsample=down))
                else:
                    layer.append(BasicBlock(cin, width, stride=s, downsample=down))
                cin = width
            setattr(self, f"layer{g + 1}", nn.Sequential(*layer))
        self.inplanes = cin
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes) if num_classes else nn.Identity()
        self.out_channels = cin


def _count_blocks(state: Mapping[str, Tensor], layer: str) -> int:
    idx = {int(m[1]) for k in state if (m := re.match(rf"{layer}\.(\d+)\.", k))}
    if not idx or idx != set(range(len(idx))):
        raise ValueError(f"{layer}: expected blocks 0..n-1, found {sorted(idx)}")
    return len(idx)


def resnet_from_state_dict(state: Mapping[str, Tensor]) -> HaikuResNet:
    """A :class:`HaikuResNet` shaped by a torchvision ResNet state dict, with it loaded.

    Depth, stem and group widths, block type, shortcuts and classifier are read from the keys and
    shapes (e.g. the release's ResNet-200 width comes from its weights, it is not stated).

    Raises:
        ValueError: the keys are not a torchvision ResNet's, or a tensor does not fit.
    """
    if "conv1.weight" not in state:
        raise ValueError(
            f"not a torchvision ResNet state dict: no 'conv1.weight' in {list(state)[:8]}"
        )
    b1, b2, b3, b4 = (_count_blocks(state, f"layer{g}") for g in range(1, 5))
    blocks = (b1, b2, b3, b4)
    bottleneck = "layer1.0.conv3.weight" in state
    last = "conv3" if bottleneck else "conv2"
    missing = [f"layer{g}.0.{last}.weight" for g in range(1, 5)]
    missing = [k for k in missing if k not in state]
    if missing:
        raise ValueError(f"not a torchvision ResNet state dict: no {missing}")
    w1, w2, w3, w4 = (int(state[f"layer{g}.0.{last}.weight"].shape[0]) for g in range(1, 5))
    shortcuts = {
        (g, b)
        for g in range(4)
        for b in range(blocks[g])
        if f"layer{g + 1}.{b}.downsample.0.weight" in state
    }
    num_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else None
    net = HaikuResNet(
        stem_width=int(state["conv1.weight"].shape[0]),
        widths=(w1, w2, w3, w4),
        blocks=blocks,
        bottleneck=bottleneck,
        shortcuts=shortcuts,
        num_classes=num_classes,
    )
    try:
        net.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the weights do not fit the ResNet their names describe: {exc}") from exc
    net.eval()
    return net


def describe_resnet(net: HaikuResNet) -> str:
    """``"resnet50"``, ``"resnet200 (width x2)"`` or a custom description of the architecture."""
    bottleneck = isinstance(net.layer1[0], Bottleneck)
    blocks = [len(getattr(net, f"layer{g}")) for g in range(1, 5)]
    depth = 2 + (3 if bottleneck else 2) * sum(blocks)
    stem = net.conv1.out_channels
    widths = [getattr(net, f"layer{g}")[-1].bn2.num_features for g in range(1, 5)]
    if bottleneck:
        widths = [getattr(net, f"layer{g}")[-1].bn3.num_features for g in range(1, 5)]
    base = (256, 512, 1024, 2048) if bottleneck else (64, 128, 256, 512)
    m, rem = divmod(stem, 64)
    if rem == 0 and m >= 1 and widths == [b * m for b in base]:
        return f"resnet{depth}" + (f" (width x{m})" if m > 1 else "")
    kind = "bottleneck" if bottleneck else "basic"
    return f"resnet{depth}-like ({kind} blocks {blocks}, stem {stem}, widths {widths})"


def backbone_name(net: HaikuResNet, where: str | Path) -> str:
    """The ``model.backbone`` value of the imported ResNet ``net`` (its depth: ``resnet50`` for
    any width), or a ValueError naming ``where`` when no config value describes it."""
    arch = describe_resnet(net)
    depth = arch.split()[0]
    if depth not in _STANDARD_DEPTHS:
        raise ValueError(
            f"{where}: the weights are a {arch}, which no model.backbone names (expected one of "
            f"{', '.join(_STANDARD_DEPTHS)})"
        )
    return depth


def check_backbone(net: HaikuResNet, backbone: str, where: str | Path) -> None:
    """Raise a ValueError naming ``where`` unless the imported ``net`` is ``model.backbone``."""
    depth = backbone_name(net, where)
    if depth != backbone:
        raise ValueError(
            f"{where} holds a {describe_resnet(net)} but the config says "
            f"model.backbone={backbone!r}; set model.backbone={depth!r} for this checkpoint"
        )


# ---------------------------------------------------------------------------------------------
# TensorFlow "SAME" padding on torch modules
# ---------------------------------------------------------------------------------------------


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def tf_same_pads(
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> tuple[int, int, int, int]:
    """TF/XLA "SAME" padding of a 2-D window op as ``F.pad`` wants it: (left, right, top, bottom).

    Output size ``ceil(n / s)``; total padding ``max((out - 1) s + (k - 1) d + 1 - n, 0)``, of
    which the smaller half goes before (``lax.padtype_to_pads``). E.g. a 3x3/2 window on 224 px:
    (0, 1) per axis, where torchvision pads (1, 1) and so samples shifted by one pixel.
    """
    pads = []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


def _tf_same_pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    x = args[0]
    if _pair(module.padding) != (0, 0):
        raise RuntimeError(
            f"{type(module).__name__} with TF-SAME padding had its padding set to "
            f"{module.padding} after use_tf_same_padding(); set it back to 0 (the hook pads)"
        )
    pads = tf_same_pads(
        tuple(x.shape[-2:]), _pair(module.kernel_size), _pair(module.stride), _pair(module.dilation)
    )
    if any(pads):
        # Max-pool pads with -inf as XLA's reduce_window does; convolutions with zeros.
        value = float("-inf") if isinstance(module, nn.MaxPool2d) else 0.0
        x = F.pad(x, pads, value=value)
    return (x, *args[1:])


def use_tf_same_padding(module: nn.Module) -> nn.Module:
    """Give every Conv2d / MaxPool2d of ``module`` TensorFlow "SAME" padding, in place.

    A forward pre-hook pads each input as TF/Haiku do (:func:`tf_same_pads`, computed from the
    input size and the layer's *current* stride and dilation) and the layer's own padding is set
    to 0. Parameters, buffers and state-dict keys are unchanged, so torchvision code keeps
    working. Layers whose symmetric padding already equals SAME at every input size (stride 1,
    odd effective kernel, padding (k - 1) d / 2) are left alone. Replacing a stride by dilation
    afterwards (FCN-style, stride 2 -> 1) stays correct: the hook then pads symmetrically.

    Needed for weights trained in Haiku: on even input sizes Haiku's stem conv, max-pool and
    stride-2 3x3 convs pad only bottom/right, and without this the features drift (cosine about
    0.5 at layer4 at 224 px). Sizes = 1 (mod 32) are unaffected.

    Returns ``module`` (with ``module.tf_same_padding = True``). Calling it twice is harmless.
    """
    for m in module.modules():
        if not isinstance(m, nn.Conv2d | nn.MaxPool2d) or getattr(m, "_tf_same", False):
            continue
        if isinstance(m.padding, str):
            continue  # "same"/"valid" were chosen explicitly; leave them
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            raise ValueError(f"{m}: TF-SAME padding needs padding_mode='zeros'")
        if isinstance(m, nn.MaxPool2d) and m.ceil_mode:
            raise ValueError(f"{m}: TF-SAME padding needs ceil_mode=False")
        k, s, d, p = (_pair(v) for v in (m.kernel_size, m.stride, m.dilation, m.padding))
        if s == (1, 1) and all((ki - 1) * di == 2 * pi for ki, di, pi in zip(k, d, p)):
            continue
        m.padding = (0, 0) if isinstance(m, nn.Conv2d) else 0
        m.register_forward_pre_hook(_tf_same_pre_hook)
        m._tf_same = True
    module.tf_same_padding = True
    return module


# ---------------------------------------------------------------------------------------------
# Entry points: import to a file, load for evaluation
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_official` read and wrote."""

    architecture: str  # e.g. "resnet50", "resnet200 (width x2)"
    network: str  # where in the file the encoder was found, e.g. "params/res_net50"
    tensors: int  # entries of the written state dict
    classifier: bool  # whether the file had a classifier (written only with_classifier)
    ignored: tuple[str, ...]  # other top-level Haiku modules (projector, predictor, ...)
    out: Path


def _state_from_release(
    path: Path, network: str | None
) -> tuple[dict[str, Tensor], _Found, list[str]]:
    flat = _flatten(load_release_file(path))
    chosen = _select(_candidates(flat), network, flat)
    modules, classifier, ignored = _network_tree(flat, chosen)
    try:
        state = convert_haiku_resnet(modules, classifier or None)
    except ValueError as exc:
        raise ValueError(f"{path} ({chosen.label}): {exc}") from exc
    return state, chosen, ignored


def _is_release_file(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(6) == b"\x93NUMPY"


def _read_state(path: Path, network: str | None) -> dict[str, Tensor]:
    """torchvision keys -> tensors from a release ``.npy`` or an imported ``.pt``."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected an official checkpoint ({RELEASE_URL}...npy) or the "
            "model.pt that `detcon import-official` wrote"
        )
    if _is_release_file(path):
        return _state_from_release(path, network)[0]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a non-checkpoint file
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
    net = resnet_from_state_dict(_read_state(Path(path), network))
    return use_tf_same_padding(net) if tf_same else net


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
    return backbone_from_state(_read_state(Path(path), network))


def needs_tf_same_padding(path: str | Path) -> bool:
    """Whether the weights file holds Haiku-trained weights that need :func:`use_tf_same_padding`:
    a release ``.npy``, or a state dict whose ``.json`` sidecar (written by
    :func:`import_official`) says ``"padding": "tf_same"``. False for our own ``backbone.pt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a weights file")
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


def _write_weights(out: Path, state: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    """``out`` (torch state dict) and its ``.json`` sidecar, each atomically; the sidecar, which
    marks the weights as needing TF-SAME padding, is written first, so a crash between the two
    never leaves Haiku weights that look like our own."""
    write_json(out.with_suffix(".json"), dict(meta))
    atomic_write(out, lambda f: torch.save(dict(state), f))


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
    """
    path, run_dir = Path(path), Path(run_dir)
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
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", to_dict(cfg))
    arch = describe_resnet(net)
    _write_weights(run_dir / "backbone.pt", state, _weights_meta(source, label, arch))
    write_json(
        run_dir / "train_summary.json",
        {
            "official": True,
            **source,
            "architecture": arch,
            "steps": 0,
            "method": cfg.method,
            "mask_source": cfg.masks.source,
        },
    )
    return cfg


def _cmd_import(args: argparse.Namespace) -> int:
    if (args.out is None) == (args.run_dir is None):
        raise ValueError("import-official: pass exactly one of --out FILE or --run-dir DIR")
    if args.run_dir is not None:
        if args.with_classifier:
            raise ValueError(
                "import-official: --with-classifier applies to --out only (a run directory's "
                "backbone.pt holds the encoder, like ours)"
            )
        from detcon.config import parse_dotted

        profile = args.profile or "paper"
        cfg = import_run(
            args.path,
            args.run_dir,
            network=args.network,
            profile=profile,
            overrides=parse_dotted(args.set),
        )
        print(
            f"imported {args.path} as an evaluation-only run in {args.run_dir} "
            f"(model.backbone={cfg.model.backbone}, TF-SAME padding recorded in backbone.json); "
            f"next: detcon evaluate {args.run_dir} --profile {profile}"
        )
        return 0
    if args.set or args.profile is not None:
        raise ValueError(
            "import-official: --profile and --set describe a run directory: use them with "
            "--run-dir, not --out"
        )
    s = import_official(
        args.path, args.out, network=args.network, with_classifier=args.with_classifier
    )
    dropped = s.classifier and not args.with_classifier
    print(
        f"imported {s.architecture} from {args.path} ({s.network}): {s.tensors} tensors -> "
        f"{s.out} (+ {s.out.with_suffix('.json').name}); ignored {list(s.ignored) or 'nothing'}"
        f"{'; classifier left out (--with-classifier keeps it)' if dropped else ''}. "
        "The weights need TF-SAME padding: evaluate them through "
        "detcon.official.load_official_backbone, not a stock torchvision ResNet."
    )
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detcon import-official`` (called by :mod:`detcon.cli`)."""
    p = subparsers.add_parser(
        "import-official",
        help="convert an official DetCon release checkpoint (.npy) to a torchvision state dict",
        description="Read a checkpoint of the official DetCon release (Haiku ResNet, "
        f"downloaded from {RELEASE_URL}) without JAX, map it to torchvision ResNet keys and "
        "write it as a torch state dict with a .json sidecar. The weights are exact only with "
        "TF-SAME padding (detcon.official.use_tf_same_padding).",
    )
    p.add_argument("path", type=Path, help="e.g. resnet50_detcon_b_imagenet_1k.npy")
    p.add_argument("--out", type=Path, help="output state dict, e.g. model.pt")
    p.add_argument(
        "--run-dir",
        type=Path,
        help="instead of --out: write an evaluation-only run directory (backbone.pt, "
        "config.json, train_summary.json) that `detcon evaluate` takes like one of ours",
    )
    p.add_argument(
        "--profile",
        choices=["cpu", "paper"],
        default=None,
        help="with --run-dir: the profile whose config describes the checkpoint (default paper)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --run-dir: config fields that describe the checkpoint, e.g. "
        "--set data.dataset=coco (model.backbone is read from the weights unless set)",
    )
    p.add_argument(
        "--network",
        default=None,
        help="which network, when the file holds several (a substring of the listed labels, "
        "e.g. 'online'); default: the only one, else the online network",
    )
    p.add_argument(
        "--with-classifier",
        action="store_true",
        help="also write the release's linear classifier as fc.* (default: backbone only, "
        "like our runs' backbone.pt)",
    )
    p.set_defaults(func=_cmd_import)
