"""Linear probe: logistic regression on global-average-pooled frozen features.

Targets on the synthetic scenes: the class of the largest visible object (``top1``), and a
multi-label "which classes are present" probe (one-vs-rest, ``presence_map``: mean average
precision over classes). On ImageNet: the image label (``top1``). The classifier is fitted
full-batch with L-BFGS on standardised features: deterministic, no learning rate to tune. This
stands in for the BYOL/DetCon linear protocol (SGD on augmented crops), which is far slower and
adds nothing at cpu scale; it is a deviation in the paper profile.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from detcon.evaluate.context import EvalContext
from detcon.evaluate.data import num_classes
from detcon.evaluate.metrics import mean_average_precision
from detcon.evaluate.settings import LinearSettings

__all__ = ["evaluate_linear", "fit_logistic", "largest_object_class", "present_classes"]


def largest_object_class(instances: Tensor, semantic: Tensor) -> int:
    """Class of the instance with the most visible pixels (ties: the lower id); 0 if none."""
    counts = torch.bincount(instances.flatten())
    counts[0] = 0
    if counts.sum() == 0:
        return 0
    biggest = int(counts.argmax())
    return int(semantic[instances == biggest][0])


def present_classes(semantic: Tensor, num_classes: int) -> Tensor:
    """bool ``(num_classes - 1,)``: which object classes ``1..C-1`` have a pixel."""
    hist = torch.bincount(semantic.flatten(), minlength=num_classes)
    return hist[1:num_classes] > 0


def fit_logistic(
    x: Tensor,
    y: Tensor,
    *,
    num_outputs: int,
    l2: float,
    max_iter: int,
    multilabel: bool = False,
) -> tuple[Tensor, Tensor]:
    """Fit ``logits = x @ W.T + b`` by L-BFGS on the mean cross-entropy (softmax over
    ``num_outputs`` classes; or independent sigmoids when ``multilabel``, ``y`` in {0, 1} of
    shape ``(N, num_outputs)``) plus ``l2 / 2 * |W|^2``. ``x``: float ``(N, D)``, on any device
    (the fit runs there; ``y`` is moved to it).
    Returns ``W (num_outputs, D)`` and ``b (num_outputs,)``."""
    w = torch.zeros(
        num_outputs, x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True
    )
    b = torch.zeros(num_outputs, dtype=torch.float64, device=x.device, requires_grad=True)
    x = x.double()
    target = (y.double() if multilabel else y.long()).to(x.device)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        logits = x @ w.T + b
        if multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, target)
        else:
            loss = F.cross_entropy(logits, target)
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _labels(dataset: Dataset) -> Tensor:
    """Image labels without decoding images where the dataset lists them (ImageFolder)."""
    if hasattr(dataset, "samples"):
        return torch.tensor([dataset.samples[i][1] for i in range(len(dataset))])
    return torch.tensor([int(dataset[i]["label"]) for i in range(len(dataset))])


def _on_train_classes(train: Dataset, val: Dataset, y_val: Tensor) -> Tensor:
    """``y_val`` as indices of the train split's classes: class folders are numbered per split
    (sorted names), so a val tree without one of train's classes was scored against the wrong
    ones. A val class the train split lacks is an error."""
    train_classes, val_classes = getattr(train, "classes", None), getattr(val, "classes", None)
    if train_classes is None or val_classes is None or list(val_classes) == list(train_classes):
        return y_val
    unknown = sorted(set(val_classes) - set(train_classes))
    if unknown:
        raise ValueError(
            f"the val split has classes the train split lacks ({', '.join(unknown[:5])}"
            f"{', ...' if len(unknown) > 5 else ''}): the probe cannot score them; expected the "
            "same class folders in both (or a subset in val)"
        )
    index = {name: i for i, name in enumerate(train_classes)}
    return torch.tensor([index[val_classes[int(y)]] for y in y_val], dtype=y_val.dtype)


def evaluate_linear(ctx: EvalContext, s: LinearSettings) -> dict[str, float]:
    """Fit the probe(s) on the train split's pooled features, score them on the val split."""
    t0 = time.perf_counter()
    train, val = ctx.store.get(s.data, "train"), ctx.store.get(s.data, "val")
    x_train, x_val = ctx.bank.pooled(s.data, "train"), ctx.bank.pooled(s.data, "val")
    if not (torch.isfinite(x_train).all() and torch.isfinite(x_val).all()):
        # L-BFGS does not stop on a NaN loss: its scores would be recorded as measurements
        raise FloatingPointError(f"{s.name}: the encoder's features hold NaN or infinite values")
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    ctx.log(f"{s.name}: features ready after {time.perf_counter() - t0:.1f} s")
    n_cls = num_classes(train)
    result: dict[str, float] = {}
    if s.target == "label":
        y_train, y_val = _labels(train), _labels(val)
        y_val = _on_train_classes(train, val, y_val)
    elif s.target == "largest_object":

        def largest(ds: Dataset) -> Tensor:
            return torch.tensor(
                [
                    largest_object_class(ds[i]["instances"], ds[i]["semantic"])
                    for i in range(len(ds))
                ]
            )

        y_train, y_val = largest(train), largest(val)
    else:
        raise ValueError(f"target={s.target!r}: expected 'label' or 'largest_object'")
    w, b = fit_logistic(x_train, y_train, num_outputs=n_cls, l2=s.l2, max_iter=s.max_iter)
    pred = (x_val.double() @ w.T + b).argmax(1).cpu()
    result["top1"] = float((pred == y_val).double().mean())
    if s.target == "largest_object":

        def presence(ds: Dataset) -> Tensor:
            return torch.stack([present_classes(ds[i]["semantic"], n_cls) for i in range(len(ds))])

        p_train, p_val = presence(train), presence(val)
        w, b = fit_logistic(
            x_train, p_train, num_outputs=n_cls - 1, l2=s.l2, max_iter=s.max_iter, multilabel=True
        )
        result["presence_map"] = mean_average_precision(x_val.double() @ w.T + b, p_val)
    ctx.log(f"{s.name}: {result} in {time.perf_counter() - t0:.1f} s")
    return result
