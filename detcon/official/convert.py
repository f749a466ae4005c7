"""Finding the encoder in a release file's tree and mapping Haiku's ResNet v1 names and layouts
to torchvision's (:func:`convert_haiku_resnet`).

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

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detcon.official.release import load_release_file


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
