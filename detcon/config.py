"""Frozen, typed pretraining configuration, parsed strictly from dicts and YAML.

Each field carries a *why* in its ``help`` metadata (shown in errors and by ``detcon config
--explain``). Defaults are the paper profile (docs/design.md §4); the cpu profile is a set of
overrides in ``detcon/profiles/cpu.yaml``. Derived values (the batch-scaled learning rate, warmup
and total steps) are computed by functions below and never written back into a config.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "MaskConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "TrainConfig",
    "available_profiles",
    "from_dict",
    "load_pretrain_config",
    "merge",
    "profile_overrides",
    "to_dict",
]


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it and what is expected."""


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to a mistyped ``word``, else ``""``."""
    hint = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _f(default: Any, help: str, lo: float | None = None, hi: float | None = None) -> Any:
    """A dataclass field with a help string and an optional inclusive numeric range."""
    meta = {"help": help, "range": (lo, hi)}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults (configs are frozen)")
    return field(default=default, metadata=meta)


Method = Literal["detcon_b", "detcon_s", "byol", "simclr"]
MaskSource = Literal["grid", "fh", "mcg", "ground_truth", "external", "image"]
Backbone = Literal[
    "small", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200"
]
Dataset = Literal["synthetic", "imagefolder", "coco"]


@dataclass(frozen=True)
class DataConfig:
    dataset: Dataset = _f(
        "synthetic",
        "pretraining images: the generated scenes (no download), "
        "an ImageFolder tree (ImageNet) or COCO train2017",
    )
    root: str = _f("", "dataset root for real datasets (ignored for synthetic)")
    num_images: int = _f(2048, "synthetic: scenes in the pretraining split", 1, 10_000_000)
    scene_size: int = _f(
        96, "synthetic: side of a generated scene in pixels (before cropping)", 16, 4096
    )
    # Scene difficulty (detcon.data.synthetic.SceneSpec); evaluation scores a run on scenes made
    # the same way, so the probes measure what the pretraining data holds.
    scene_classes: int = _f(8, "synthetic: object classes (shape + texture), first n of 8", 1, 8)
    scene_objects: tuple[int, int] = _f(
        (5, 12), "synthetic: objects per scene, drawn uniformly in [min, max]", 1, 64
    )
    scene_radius: tuple[float, float] = _f(
        (0.05, 0.2),
        "synthetic: object radius (disc of equal area) as a fraction of the side, log-uniform",
        0.01,
        0.5,
    )
    scene_texture_contrast: tuple[float, float] = _f(
        (0.12, 0.3),
        "synthetic: RGB distance between an object's two texture colours, uniform in [lo, hi] "
        "(how visible the class-defining texture is)",
        0.0,
        1.0,
    )
    scene_texture_scale: float = _f(
        1.0,
        "synthetic: multiplies the period of the class-defining textures (1 = 3.5-8 px at 96 px)",
        0.25,
        16.0,
    )
    scene_background_texture: float = _f(
        0.0,
        "synthetic: amplitude of a class texture (random class, per-scene period and angle) over "
        "the background; 0 = none",
        0.0,
        1.0,
    )
    scene_background_color_spread: float = _f(
        1.0,
        "synthetic: spread of the background's base colour around mid-grey (1 = the full "
        "range, 0 = every background mid-grey; objects keep random colours)",
        0.0,
        1.0,
    )
    scene_classes_per_scene: int = _f(
        0,
        "synthetic: classes one scene's objects are drawn from (0 = any; 1 = every object of a "
        "scene shares one class, as in an object-centric photo)",
        0,
        8,
    )
    num_workers: int = _f(0, "DataLoader worker processes (0 = in the training process)", 0, 256)


@dataclass(frozen=True)
class MaskConfig:
    source: MaskSource = _f(
        "fh",
        "where pretraining masks come from (docs/design.md §4.10); 'image' is one "
        "mask covering the whole image (the SimCLR/BYOL special case)",
    )
    num_samples: int = _f(
        16, "K, masks sampled per view with replacement (release: n_random_vectors=16)", 1, 1024
    )
    grid_size: int = _f(4, "spatial-grid source: n for an n x n tiling", 1, 64)
    fh_scale: float = _f(1000.0, "Felzenszwalb scale (release: 1000)", 0.0, 1e6)
    fh_sigma: float = _f(0.8, "Felzenszwalb Gaussian pre-smoothing (release: 0.8)", 0.0, 100.0)
    fh_min_size: int = _f(
        1000,
        "Felzenszwalb minimum segment size in pixels (release: 1000 for "
        "ImageNet-sized photos; scale with image area for small images)",
        1,
        10_000_000,
    )
    mcg_num_proposals: int = _f(
        16,
        "MCG-style source: top proposals kept (paper: 16); also the top-K by score of "
        "external .npz masks",
        1,
        1024,
    )
    external_dir: str = _f(
        "",
        "external source: directory of <image key>.png id maps or .npz mask stacks (e.g. "
        "real MCG output converted)",
    )
    store: str = _f(
        "",
        "precomputed mask store directory (empty: compute on the fly, cached in memory); "
        "{source} in it becomes masks.source for fh and mcg, and no store for other sources",
    )


@dataclass(frozen=True)
class AugmentConfig:
    crop_size: int = _f(
        224, "output side of each view in pixels (paper: 224; 384/512 ablation)", 16, 4096
    )
    crop_scale: tuple[float, float] = _f(
        (0.08, 1.0), "random resized crop area range (fraction of the image)", 0.0, 1.0
    )
    crop_ratio: tuple[float, float] = _f(
        (3 / 4, 4 / 3), "random resized crop aspect range", 0.0, 100.0
    )
    flip_prob: float = _f(0.5, "horizontal flip probability (image and masks together)", 0.0, 1.0)
    color_jitter_prob: float = _f(0.8, "probability of colour jitter (release: 0.8)", 0.0, 1.0)
    brightness: float = _f(
        0.4, "additive brightness delta range, as tf/pix random_brightness", 0.0, 1.0
    )
    contrast: float = _f(0.4, "contrast factor in [1-c, 1+c]", 0.0, 1.0)
    saturation: float = _f(0.2, "saturation factor in [1-s, 1+s]", 0.0, 1.0)
    hue: float = _f(0.1, "hue delta in [-h, h] (fraction of a turn)", 0.0, 0.5)
    grayscale_prob: float = _f(0.2, "probability of converting to grayscale", 0.0, 1.0)
    blur_prob: tuple[float, float] = _f(
        (1.0, 0.1), "Gaussian blur probability for view 1, view 2", 0.0, 1.0
    )
    blur_sigma: tuple[float, float] = _f((0.1, 2.0), "blur sigma range", 0.0, 100.0)
    solarize_prob: tuple[float, float] = _f(
        (0.0, 0.2), "solarize probability for view 1, view 2", 0.0, 1.0
    )
    single_view: bool = _f(
        False,
        "one geometric augmentation shared by both branches (paper §5 "
        "ablation); photometrics still drawn per branch",
    )


@dataclass(frozen=True)
class ModelConfig:
    backbone: Backbone = _f("resnet50", "encoder; 'small' is a narrow ResNet for the cpu profile")
    small_width: int = _f(32, "small backbone: channels of the first stage", 4, 512)
    small_stride: int = _f(8, "small backbone: output stride (8 or 16; 32 for ResNets)", 8, 16)
    small_stem_stride: int = _f(
        2,
        "small backbone: stride of the 3x3 stem (2, or 1: the first stage at full resolution)",
        1,
        2,
    )
    head_hidden: int = _f(4096, "projector/predictor hidden width (paper: 4096)", 1, 65536)
    head_out: int = _f(256, "projector/predictor output width (paper: 256)", 1, 65536)
    bn_momentum: float = _f(
        0.1,
        "the backbone's BatchNorm momentum, torch convention (release decay 0.9; the heads run "
        "in train mode only and keep torch's 0.1)",
        0.0,
        1.0,
    )
    target_init: Literal["independent", "copy"] = _f(
        "independent",
        "BYOL/DetCon-B target network at step 0: its own random weights (the BYOL and DetCon "
        "releases) or a copy of the online backbone and projector",
    )


@dataclass(frozen=True)
class LossConfig:
    temperature: float = _f(
        0.1, "softmax temperature of the contrastive loss (paper: 0.1)", 1e-4, 100.0
    )
    same_image_negatives: bool = _f(
        True, "other masks of the same image are negatives (release: local_negatives=True)"
    )
    negative_groups: int = _f(
        1,
        "split the global batch into G groups that only see their own "
        "negatives (negatives ÷128 ablation: G=128 at batch 4096)",
        1,
        65536,
    )


@dataclass(frozen=True)
class OptimConfig:
    optimizer: Literal["lars", "adamw"] = _f(
        "lars",
        "lars (the release) or adamw (torch's AdamW, betas 0.9/0.999, decoupled weight decay; "
        "momentum and trust_coefficient then unused), both on the release's lr schedule",
    )
    batch_size: int = _f(4096, "global batch size (paper: 4096)", 1, 1_000_000)
    epochs: float = _f(1000.0, "pretraining epochs (paper main results: 1000)", 0.0, 100_000.0)
    # The bound leaves room for small batches at the paper's per-step lr (3.2 at batch 8: 102.4).
    base_lr: float = _f(
        0.2, "learning rate per 256 images: lr = base_lr * batch / 256", 0.0, 1000.0
    )
    weight_decay: float = _f(
        1.5e-6, "weight decay, LARS or AdamW (not on biases and norm parameters)", 0.0, 1.0
    )
    momentum: float = _f(0.9, "LARS momentum", 0.0, 1.0)
    trust_coefficient: float = _f(1e-3, "LARS eta", 0.0, 1.0)
    warmup_epochs: float = _f(
        -1.0,
        "linear warmup epochs; -1 means int(epochs // 100) as the release (resolved to that "
        "number when the config is made, so equal schedules have equal configs)",
        -1.0,
        100_000.0,
    )
    base_ema: float = _f(0.996, "target EMA base tau (BYOL/DetCon-B)", 0.0, 1.0)

    def __post_init__(self) -> None:
        # The range above is inclusive; 0 epochs would still train one step (a schedule has at
        # least one), so it is refused here.
        if self.epochs <= 0:
            raise ConfigError(
                f"optim.epochs={self.epochs!r}: expected a number > 0 (pretraining epochs; "
                "for a quick look use train.max_steps or --stop-after)"
            )
        if self.momentum >= 1 and self.optimizer == "lars":  # the range above is inclusive
            raise ConfigError(
                f"optim.momentum={self.momentum:g}: expected a number in [0, 1) (LARS's "
                "momentum; the release's 0.9)"
            )
        if -1 < self.warmup_epochs < 0:
            raise ConfigError(
                f"optim.warmup_epochs={self.warmup_epochs:g}: expected -1 (the release's "
                "int(epochs // 100)) or a number of epochs >= 0"
            )
        if self.warmup_epochs < 0:
            object.__setattr__(self, "warmup_epochs", float(int(self.epochs // 100)))
        if self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"optim.warmup_epochs={self.warmup_epochs:g} is longer than "
                f"optim.epochs={self.epochs:g}: expected a warmup within the run (set both; the "
                "cpu profile warms up for 2 of its 24 epochs)"
            )


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = _f(
        0,
        "stop after this many steps (0: train for all epochs); the schedule still spans all epochs",
        0,
        1_000_000_000,
    )
    log_every: int = _f(1, "write a metrics.jsonl line every N steps", 1, 1_000_000)
    checkpoint_every: int = _f(50, "write an atomic checkpoint every N steps", 1, 1_000_000)
    device: Literal["auto", "cpu", "cuda"] = _f(
        "auto", "'auto' (cuda if available), 'cpu' or 'cuda' (each process its local rank's GPU)"
    )
    precision: Literal["fp32", "bf16"] = _f(
        "fp32", "bf16 autocast (GPU; on a CPU only with bf16 units: docs/performance.md §1)"
    )
    channels_last: bool = _f(
        False, "channels_last memory format (speed: GPU; 1.2x on an AVX2 CPU: docs/performance.md)"
    )
    threads: int = _f(0, "torch intra-op threads (0: leave torch's default)", 0, 1024)


@dataclass(frozen=True)
class PretrainConfig:
    method: Method = _f(
        "detcon_b", "detcon_b | detcon_s | byol | simclr (docs/design.md §4, §4.11)"
    )
    profile: Literal["paper", "cpu", "custom"] = _f(
        "custom",
        "which profile the defaults came from; `detcon evaluate` probes a run at this profile "
        "unless told otherwise",
    )
    seed: int = _f(
        0, "seeds data order, augmentation, mask sampling and initialisation", 0, 2**31 - 1
    )
    data: DataConfig = field(default_factory=DataConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        # Cross-field rules, with messages that name the fields.
        if self.method in ("byol", "simclr") and self.masks.source != "image":
            raise ConfigError(
                f"method={self.method!r} is the image-level baseline and needs "
                f"masks.source='image' (got {self.masks.source!r})"
            )
        if self.method in ("byol", "simclr") and self.masks.num_samples != 1:
            raise ConfigError(
                f"method={self.method!r} uses one whole-image mask: masks.num_samples must be 1 "
                f"(got {self.masks.num_samples})"
            )
        if self.masks.source == "ground_truth" and self.data.dataset == "imagefolder":
            raise ConfigError(
                "masks.source='ground_truth' needs instance annotations: expected "
                "data.dataset 'synthetic' or 'coco' (an ImageFolder tree has none)"
            )
        if self.optim.batch_size % self.loss.negative_groups:
            raise ConfigError(
                f"loss.negative_groups={self.loss.negative_groups} must divide "
                f"optim.batch_size={self.optim.batch_size}"
            )
        pairs = [(f"augment.{n}", getattr(self.augment, n)) for n in ("crop_scale", "crop_ratio")]
        pairs += [("augment.blur_sigma", self.augment.blur_sigma)]
        pairs += [
            (f"data.{n}", getattr(self.data, n))
            for n in ("scene_objects", "scene_radius", "scene_texture_contrast")
        ]
        for name, (lo, hi) in pairs:
            if lo > hi:
                raise ConfigError(f"{name}=({lo}, {hi}): the first value must be <= the second")
        for name in ("crop_scale", "crop_ratio"):
            if getattr(self.augment, name)[0] <= 0:
                raise ConfigError(
                    f"augment.{name}={getattr(self.augment, name)}: expected a first value > 0 "
                    "(a crop of no area or no width)"
                )
        if self.data.scene_classes_per_scene > self.data.scene_classes:
            raise ConfigError(
                f"data.scene_classes_per_scene={self.data.scene_classes_per_scene}: expected at "
                f"most data.scene_classes={self.data.scene_classes} (0 = any class)"
            )
        if self.model.backbone == "small" and self.model.small_stride not in (8, 16):
            raise ConfigError(f"model.small_stride={self.model.small_stride}: expected 8 or 16")


# --------------------------------------------------------------------------- derived values


def scaled_lr(optim: OptimConfig) -> float:
    """lr = base_lr * batch / 256 (BYOL/DetCon linear scaling rule)."""
    return optim.base_lr * optim.batch_size / 256


def _epochs_to_steps(epochs: float, optim: OptimConfig, num_images: int) -> int:
    """``floor(epochs * N / B)``: the release repeats the dataset *before* batching
    (detcon_b_config.py: ``max_steps = num_epochs * images_per_epoch // batch_size``), so a
    batch may span two epochs and no image is dropped. Its float expression, as written there:
    where ``epochs * N`` rounds below a whole multiple of B (0.29 epochs of 100,000 images at
    batch 100: 28999.999...), it drops that step too (289, not 290)."""
    if optim.batch_size > num_images:
        raise ConfigError(
            f"optim.batch_size={optim.batch_size} is larger than the dataset "
            f"({num_images} images): expected at most {num_images}"
        )
    return int(epochs * num_images // optim.batch_size)


def total_steps(optim: OptimConfig, num_images: int) -> int:
    """Length of the lr/EMA schedule in steps: ``floor(epochs * N / B)`` (at least 1)."""
    return max(1, _epochs_to_steps(optim.epochs, optim, num_images))


def warmup_steps(optim: OptimConfig, num_images: int) -> int:
    """Warmup length in steps, counted like :func:`total_steps`; the release warms up for
    ``int(epochs // 100)`` epochs by default (``warmup_epochs=-1``, resolved by the config)."""
    return _epochs_to_steps(optim.warmup_epochs, optim, num_images)


# --------------------------------------------------------------------------- strict parsing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in typing.get_args(tp)) + "]"
    return getattr(tp, "__name__", str(tp))


def _check_range(value: float, meta: Mapping[str, Any], where: str) -> None:
    lo, hi = meta.get("range", (None, None))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = [f"{lo} <="] if lo is not None else []
        bounds += ["value"] + ([f"<= {hi}"] if hi is not None else [])
        raise ConfigError(
            f"{where}={value!r} is out of range: expected {' '.join(bounds)} "
            f"({meta.get('help', '')})"
        )


def _coerce(value: Any, tp: Any, meta: Mapping[str, Any], where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{where} must be a mapping of {tp.__name__} fields, got "
                f"{type(value).__name__} {value!r}"
            )
        return from_dict(tp, value, _prefix=where + ".")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{where}={value!r} is not allowed{did_you_mean(value, choices)}: expected one of "
                f"{', '.join(repr(c) for c in choices)}"
            )
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(
                f"{where}={value!r}: expected a list of {len(args)} values {_type_name(tp)}"
            )
        return tuple(
            _coerce(v, a, meta, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))
        )
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(
                f"{where}={value!r}: expected true or false, got {type(value).__name__}"
            )
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(
                    f"{where}={value!r}: expected an integer, got {type(value).__name__}"
                )
        _check_range(value, meta, where)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}={value!r}: expected a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}={value!r}: expected a finite number")
        _check_range(value, meta, where)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r}: expected a string, got {type(value).__name__}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where}")  # a bug in this module


def from_dict(cls: type, data: Mapping[str, Any] | None, *, _prefix: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from ``data``, strictly.

    Unknown keys fail with the valid keys and a close-match suggestion; mistyped or out-of-range
    values fail naming the dotted field and what is allowed. Missing keys keep their defaults.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        hint = difflib.get_close_matches(str(key), list(fields), n=1)
        extra = f" Did you mean {_prefix + hint[0]!r}?" if hint else ""
        raise ConfigError(
            f"unknown config key {_prefix + str(key)!r}.{extra} Valid keys under "
            f"{_prefix.rstrip('.') or 'the top level'}: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], fields[name].metadata, _prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as exc:  # pragma: no cover - dataclass signature mismatch is a bug
        raise ConfigError(f"{_prefix or 'config'}: {exc}") from exc


def describe_fields(cls: type, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted name, help) for every leaf field of a config class."""
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, str]] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(describe_fields(hints[f.name], prefix + f.name + "."))
        else:
            out.append((prefix + f.name, f.metadata.get("help", "")))
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-able dict of a config (tuples become lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def identity_dict(obj: Any, added_later: Sequence[str]) -> dict[str, Any]:
    """``to_dict(obj)`` without each dotted field of ``added_later`` that holds its declared
    default: what a digest hashes, so that a field added after names were made from the digest
    leaves those names alone until a config sets it (:func:`detcon.grid.config_digest`,
    :meth:`detcon.data.synthetic.SceneSpec.digest`)."""
    data = to_dict(obj)
    for dotted in added_later:
        *parents, name = dotted.split(".")
        owner, section = obj, data
        for key in parents:
            owner, section = getattr(owner, key), section[key]
        declared = next(f for f in dataclasses.fields(owner) if f.name == name)
        if getattr(owner, name) == declared.default:
            del section[name]
    return data


def config_differences(old: Any, new: Any) -> list[str]:
    """The dotted fields where two configs (or their dicts) differ, in field order, as
    ``"optim.base_lr: 1.0 -> 0.5"`` (``old``'s value, then ``new``'s)."""

    def leaves(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, Mapping):
                out.update(leaves(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out

    a, b = leaves(to_dict(old)), leaves(to_dict(new))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in {**a, **b} if a.get(k) != b.get(k)]


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``override`` wins; nested mappings merge key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def available_profiles() -> list[str]:
    return sorted(
        p.name[:-5]
        for p in resources.files("detcon.profiles").iterdir()
        if p.name.endswith(".yaml")
    )


def profile_overrides(profile: str) -> dict[str, Any]:
    """The overrides that define a profile (``detcon/profiles/<profile>.yaml``)."""
    names = available_profiles()
    if profile not in names:
        raise ConfigError(f"unknown profile {profile!r}: expected one of {', '.join(names)}")
    text = resources.files("detcon.profiles").joinpath(f"{profile}.yaml").read_text()
    return parse_yaml(text, f"profile {profile!r} (detcon/profiles/{profile}.yaml)") or {}


class _DuplicateKeyError(yaml.YAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader (tags that would build Python objects stay refused) that also
    refuses a mapping key given twice: PyYAML keeps the last one silently, so a second ``grid:``
    in an ablation file would drop the first grid's points without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor`: its keys may be overridden, that is what it is for
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise _DuplicateKeyError(
                        f"line {line}: the key {key!r} is given twice (first on line "
                        f"{first_line[key]}); YAML would keep only the last one: remove or "
                        "merge one of them"
                    )
                first_line[key] = line
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it below
        return super().construct_mapping(node, deep)


# YAML 1.1 (PyYAML) reads 1e-6 as a string: its floats need a dot and a signed exponent
# (1.0e-6). The YAML 1.2 / JSON form is a float too, so that `--set optim.weight_decay=1e-6`
# means what it says (add_implicit_resolver copies SafeLoader's table first: yaml.safe_load is
# unchanged).
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _construct_int(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    """YAML 1.1 ints, less its two surprises: ``010`` is octal 8 and ``1:30`` base-60 90
    (``--set seed=010`` trained seed 8). Both are refused, naming the reading."""
    text = str(loader.construct_scalar(node)).replace("_", "")
    digits = text.lstrip("+-")
    if ":" in digits or (len(digits) > 1 and digits[0] == "0" and digits.isdigit()):
        value = loader.construct_yaml_int(node)
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"{text!r} reads as {value} in YAML 1.1 ({'base 60' if ':' in text else 'octal'}); "
            f"write the number you mean without {'colons' if ':' in text else 'a leading zero'}"
            " (or quote it for a string)",
            node.start_mark,
        )
    return loader.construct_yaml_int(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` with keys given twice refused; errors are ConfigErrors naming
    ``where`` (a file, a profile, an override)."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKeyError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:  # one line: PyYAML's own message spans several, with carets
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        detail = f"{context}: {problem}" if context else problem
        raise ConfigError(f"{where}: not valid YAML{at}: {detail}") from exc


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder, expected a YAML or JSON file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a text file in UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return dict(data)


# Mask sources too slow to compute in every loader worker, every epoch, on a real dataset (FH
# ~0.14 s per ImageNet image, docs/performance.md §4; MCG-style more): at the paper profile they
# come from a precomputed store (masks.store; the launcher refuses them without one).
STORE_SOURCES = ("fh", "mcg")
# ``masks.store`` may name one store per source: ``{source}`` becomes the point's masks.source for
# the STORE_SOURCES (so an ablation that varies masks.source can set ``stores/{source}`` once);
# points of other sources read no store.
STORE_TEMPLATE = "{source}"


def load_pretrain_config(
    overrides: Mapping[str, Any] | None = None, profile: str | None = None
) -> PretrainConfig:
    """Profile defaults, then ``overrides`` (a dict, e.g. from YAML), parsed strictly; a
    ``{source}`` in ``masks.store`` is filled in (:data:`STORE_TEMPLATE`)."""
    data: dict[str, Any] = {}
    if profile is not None:
        data = merge(profile_overrides(profile), {"profile": profile})
    data = merge(data, overrides or {})
    cfg = from_dict(PretrainConfig, data)
    if STORE_TEMPLATE not in cfg.masks.store:
        return cfg
    source = cfg.masks.source
    store = cfg.masks.store.replace(STORE_TEMPLATE, source)
    store = store if source in STORE_SOURCES else ""
    return dataclasses.replace(cfg, masks=dataclasses.replace(cfg.masks, store=store))


def parse_dotted(assignments: list[str]) -> dict[str, Any]:
    """``["optim.epochs=2", "method=byol"]`` -> nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. optim.epochs=2")
        key, raw = item.split("=", 1)
        value = parse_yaml(raw, f"override {item!r}") if raw else ""
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"override {item!r}: {'.'.join(parts[: i + 1])} is set to a value by an "
                    "earlier override, not a section of keys"
                )
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(
                f"override {item!r}: {key} is a section set key by key by an earlier override"
            )
        node[parts[-1]] = value
    return out
