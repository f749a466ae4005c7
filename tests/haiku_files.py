"""Write checkpoints in the official release's format from torchvision-keyed weights (tests only).

The inverse of ``detcon.official.convert_haiku_resnet``, written independently from the mapping
table of the issue (Haiku ``ResNet`` module names, HWIO kernels, (1, 1, 1, C) BatchNorm vectors,
moving statistics under ``<bn>/~/mean_ema`` / ``var_ema`` as ``average``), so a test can build a
release-format file for a standard-depth ResNet without JAX.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["haiku_modules", "save_release_file", "trunk"]


def trunk(net: nn.Module, x: Tensor) -> Tensor:
    """A torchvision ResNet's final feature map (the release's encoder output,
    ``final_mean_pool=False``), without gradient."""
    with torch.no_grad():
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def haiku_modules(
    state: dict[str, Tensor], *, mean_shift: float = 0.0, var_scale: float = 1.0
) -> dict[str, dict[str, np.ndarray]]:
    """Haiku module name (without the encoder prefix) -> its parameters/states, from a
    torchvision ResNet state dict. ``mean_shift``/``var_scale`` alter the moving statistics in
    the Haiku tree only (to check that they, not torchvision's, are what gets imported)."""
    out: dict[str, dict[str, np.ndarray]] = {}

    def haiku_name(tv: str) -> str:
        if tv in ("conv1", "bn1"):
            return "initial_conv" if tv == "conv1" else "initial_batchnorm"
        g, b, rest = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", tv).groups()
        block = f"block_group_{int(g) - 1}/~/block_{b}/~/"
        if rest == "downsample.0":
            return block + "shortcut_conv"
        if rest == "downsample.1":
            return block + "shortcut_batchnorm"
        kind, k = re.fullmatch(r"(conv|bn)(\d)", rest).groups()
        return block + ("conv" if kind == "conv" else "batchnorm") + f"_{int(k) - 1}"

    modules = sorted({k.rsplit(".", 1)[0] for k in state if not k.startswith("fc.")})
    for tv in modules:
        hk = haiku_name(tv)
        if f"{tv}.running_mean" in state:
            vec = {
                k: state[f"{tv}.{k}"].double().numpy().reshape(1, 1, 1, -1)
                for k in ("weight", "bias", "running_mean", "running_var")
            }
            out[hk] = {"scale": vec["weight"], "offset": vec["bias"]}
            out[f"{hk}/~/mean_ema"] = {"average": vec["running_mean"] + mean_shift}
            out[f"{hk}/~/var_ema"] = {"average": vec["running_var"] * var_scale}
        else:
            out[hk] = {"w": state[f"{tv}.weight"].double().permute(2, 3, 1, 0).numpy()}
    return out


def save_release_file(path: Path, modules: dict[str, dict[str, np.ndarray]], encoder: str) -> Path:
    """``np.save`` of a pickled dict, as the release stores its checkpoints: parameters under
    ``params``, BatchNorm moving averages under ``state``, names prefixed ``<encoder>/~/``."""
    params, state = {}, {}
    for name, leaves in modules.items():
        target = state if name.endswith(("mean_ema", "var_ema")) else params
        target[f"{encoder}/~/{name}"] = {k: v.astype(np.float32) for k, v in leaves.items()}
    arr = np.empty((), dtype=object)
    arr[()] = {"params": params, "state": state}
    np.save(path, arr, allow_pickle=True)
    return path
