"""TensorFlow "SAME" padding on torch modules (:func:`use_tf_same_padding`): Haiku pads
asymmetrically (one extra row/column at the bottom/right) wherever a stride-2 window meets an even
input size, which torchvision's symmetric padding does not reproduce."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn


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
