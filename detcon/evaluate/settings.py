"""Downstream-evaluation settings: frozen dataclasses, one per task, grouped by profile.

The tasks and profiles are described in docs/design.md §5. Settings are data, not code: the two
profiles are two values of :class:`EvalSettings` built below, and a test or a user changes a
setting with ``dataclasses.replace``. ``cpu`` evaluates on the synthetic scenes (docs/design.md
§6) in a few minutes on two cores; ``paper`` names the paper's datasets (COCO, PASCAL VOC,
Cityscapes, NYU-Depth v2, ImageNet) and transfer schedules. ``quick`` shrinks either to a smoke
size for tests (docs/design.md §1: the smoke path is the production path at a smaller size).

Paper-profile schedules are the usual transfer protocols that BYOL (Grill et al. 2020, App. D)
and DetCon (Hénaff et al. 2021, §4 and App.) follow, as we read them; they are not taken from a
released config (the DetCon release has no downstream code), so check them before quoting numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DataSpec",
    "DenseSettings",
    "DetectionSettings",
    "EvalSettings",
    "LinearSettings",
    "OptimSettings",
    "TASKS",
    "cpu_settings",
    "get_settings",
    "paper_settings",
    "with_eval_split",
    "with_scene_difficulty",
]

# Task kinds, in the order evaluate_run runs them.
TASKS = ("segmentation", "depth", "linear", "detection")

DatasetName = Literal["synthetic", "coco", "voc", "cityscapes", "nyu", "imagefolder"]


@dataclass(frozen=True)
class DataSpec:
    """Where a task's images and labels come from.

    ``synthetic`` scenes are generated (``num_*`` scenes of side ``image_size`` from ``seed``);
    the real datasets are read by :mod:`detcon.data.readers` from ``root`` (relative paths are
    resolved against the ``data_root`` given to :func:`detcon.evaluate.evaluate_run`), and
    ``num_*`` > 0 caps how many samples are used (0: all). For real data ``image_size`` > 0 is
    the side of the evaluation centre crop of the frozen-feature probes (ImageNet: 224, after
    resizing the shorter side to 256); 0 keeps native sizes.
    """

    dataset: DatasetName = "synthetic"
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    num_train: int = 512
    num_val: int = 128
    image_size: int = 96
    # Fixed, independent of the pretraining seed: every run is scored on the same scenes.
    seed: int = 0
    # synthetic: the scene difficulty (a detcon.data.synthetic.SceneSpec; None: its defaults).
    # evaluate_run sets it from the run's config, so runs are scored on scenes like their own.
    difficulty: Any = None


@dataclass(frozen=True)
class OptimSettings:
    """Optimiser and schedule of a trained head (and of the backbone when fine-tuned).

    ``schedule``: ``constant``; ``cosine`` to 0; ``step`` (x0.1 at each fraction in
    ``milestones`` of the run, as Detectron's 1x/2x schedules); ``poly`` ((1 - t)^0.9, DeepLab).
    A linear warmup from 0 over ``warmup_steps`` comes first.
    """

    steps: int
    batch_size: int
    lr: float
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "step", "poly"] = "cosine"
    milestones: tuple[float, ...] = ()
    warmup_steps: int = 0


@dataclass(frozen=True)
class DenseSettings:
    """Semantic segmentation (FCN head, mIoU) or depth (deconvolution head, RMSE / delta1).

    Frozen backbone (``train_backbone=False``): features of the un-augmented training images are
    extracted once and only the head is trained, a probe of the representation. Fine-tuning
    (the paper's protocol) trains both on random scale/crop/flip views of size ``crop_size``.
    """

    name: str
    data: DataSpec
    optim: OptimSettings
    train_backbone: bool = False
    # FCN (BYOL App. D.3 / DetCon §4): two 3x3 conv+BN+ReLU of head_channels, then a 1x1
    # classifier. Depth: a 1x1 reduction to head_channels, then stride-2 transposed convs
    # (halving channels, at least 16) up to full resolution, then a 3x3 conv to one channel.
    head_channels: int = 128
    head_convs: int = 2
    # Segmentation only: the dilation of the head's 3x3 convolutions (the paper profile: 6, as
    # the FCN protocol BYOL App. D.3 takes from MoCo)
    head_dilation: int = 1
    # Segmentation only: standardise the features per channel before the head (BatchNorm without
    # affine, as MAE's linear probe), so that with head_convs=0 the probe is a per-pixel linear
    # classifier whose result does not depend on the backbone's feature scale.
    standardize: bool = False
    # ResNets only: dilate the last stage (output stride 16), as FCN transfer protocols do.
    dilate_last_stage: bool = False
    crop_size: tuple[int, int] = (0, 0)  # (h, w) training crop when fine-tuning; 0: whole image
    scale_range: tuple[float, float] = (1.0, 1.0)
    flip: bool = False
    # Depth only: ground truth outside (min_depth, max_depth] is invalid (NYU: 0 = missing).
    min_depth: float = 0.0
    max_depth: float = 1e4

    def __post_init__(self) -> None:
        if tuple(self.scale_range) != (1.0, 1.0) and 0 in tuple(self.crop_size):
            raise ValueError(
                f"{self.name}: scale_range={self.scale_range} needs a crop_size (h, w) to cut "
                f"the rescaled images to one size; got crop_size={self.crop_size}"
            )


@dataclass(frozen=True)
class LinearSettings:
    """Linear probe: global-average-pooled frozen features -> logistic regression (L-BFGS).

    Targets: ``largest_object`` (synthetic: the class of the object with most visible pixels,
    metric ``top1``; plus a one-vs-rest multi-label "which classes are present" probe, metric
    ``presence_map``) or ``label`` (ImageNet: the image label, metric ``top1``).
    Features are standardised with the training set's mean/std before the probe (as MAE's
    BatchNorm-without-affine before its linear head), so a badly scaled random backbone is not
    penalised for its scale alone.
    """

    name: str
    data: DataSpec
    target: Literal["largest_object", "label"] = "largest_object"
    l2: float = 1e-3  # weight decay on the classifier weights (mean loss + l2/2 |W|^2)
    max_iter: int = 200


@dataclass(frozen=True)
class DetectionSettings:
    """Mask R-CNN with an FPN over the backbone's stages (torchvision ``MaskRCNN``).

    Stages feeding the FPN: the last stage of each distinct output stride >= ``min_stride``,
    plus torchvision's extra max-pool level. Anchors at each level: ``anchor_scales * stride``
    (torchvision's R-50-FPN default is scale 8: 32..512 px) times ``anchor_ratios``.
    """

    name: str
    data: DataSpec
    optim: OptimSettings
    train_backbone: bool = False
    # the backbone's BatchNorm synchronised across processes when evaluation runs distributed
    # (torchvision's FPN and heads have none; deviations E6)
    sync_bn: bool = False
    min_size: int = 96
    max_size: int = 96
    min_stride: int = 4
    fpn_channels: int = 64
    anchor_scales: tuple[float, ...] = (2.0, 4.0)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n: tuple[int, int] = (300, 150)  # (train, test)
    rpn_post_nms_top_n: tuple[int, int] = (150, 75)
    rpn_batch_size_per_image: int = 64
    box_batch_size_per_image: int = 64
    box_detections_per_img: int = 30
    box_head_dim: int = 256  # TwoMLPHead width (torchvision: 1024)
    mask_head_channels: int = 64  # (torchvision: 256)
    mask_head_convs: int = 2  # (torchvision: 4)
    # RoIAlign bilinear samples per bin side (torchvision: 2); its CPU backward is the costliest
    # op of a small detector, so the cpu profile samples once per bin.
    roi_sampling_ratio: int = 2
    flip: bool = False
    max_instances: int = 0  # real data: keep at most this many per training image (0: all)


@dataclass(frozen=True)
class EvalSettings:
    """Every task of one profile; a task kind may hold several datasets (paper: VOC and
    Cityscapes segmentation). Each entry's ``name`` is its key in ``eval.json``."""

    profile: str
    segmentation: tuple[DenseSettings, ...]
    depth: tuple[DenseSettings, ...]
    linear: tuple[LinearSettings, ...]
    detection: tuple[DetectionSettings, ...]
    threads: int = 0  # torch intra-op threads while evaluating (0: leave as is)
    # The supervised ceiling (``backbone="supervised"``): the encoder trained from its random
    # initialisation with an FCN head on the segmentation labels of ``data``'s training split,
    # then evaluated frozen like any other. None: the profile has none (paper: use an
    # ImageNet-supervised checkpoint).
    supervised: DenseSettings | None = None

    def for_task(self, task: str) -> tuple:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
        return getattr(self, task)

    def roots_on_disk(self, tasks: Sequence[str]) -> dict[str, str]:
        """Each real dataset's folder that ``tasks`` read, relative to the data root (or
        absolute): ``{root: dataset}``, sorted by root (the generated synthetic scenes are read
        from nowhere: an empty mapping means the data root is not used)."""
        specs = [s.data for t in tasks for s in self.for_task(t) if s.data.dataset != "synthetic"]
        return dict(sorted({d.root: d.dataset for d in specs}.items()))

    def datasets_on_disk(self, tasks: Sequence[str]) -> list[str]:
        """The datasets ``tasks`` read from the data root, sorted."""
        return sorted(set(self.roots_on_disk(tasks).values()))


# ------------------------------------------------------------------------------------- cpu profile


def cpu_settings(quick: bool = False) -> EvalSettings:
    """The cpu profile on the synthetic scenes (docs/design.md §5): frozen backbone, small heads.

    All tasks share one train/val scene set, so a frozen backbone's features are extracted once.
    ``quick``: 32 px scenes, a handful of images and steps (tests only; metrics are meaningless).
    Measured: 100-120 s per encoder on one thread of a shared two-core machine (load 1-3).
    """
    data = DataSpec("synthetic", val_split="test", num_train=512, num_val=128, image_size=96)
    # Step counts and head widths were chosen on three encoders (random init, a 128-step DetCon-B,
    # a supervised "oracle"): at 300 steps a 64-wide FCN head could not tell the first two apart.
    dense_opt = OptimSettings(
        steps=600, batch_size=16, lr=3e-3, optimizer="adam", schedule="cosine", warmup_steps=10
    )
    det_opt = OptimSettings(
        steps=600,
        batch_size=4,
        lr=0.02,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=1e-4,
        schedule="step",
        milestones=(0.75,),
        warmup_steps=50,
    )
    # Narrow FPN and heads, few sampled RoIs, one RoIAlign sample per bin: the detector's
    # RoIAlign backward and mask-head convolutions dominate its cost on a CPU.
    detection = DetectionSettings(
        "detection",
        data,
        det_opt,
        fpn_channels=32,
        mask_head_channels=32,
        box_batch_size_per_image=32,
        roi_sampling_ratio=1,
    )
    # The ceiling: the same encoder trained end to end on labelled training scenes (whole scenes,
    # flips), then probed frozen like any encoder. Labels are free here, so it trains on 4,096
    # scenes (the probe's 512 are the first of them): on the probe's 512 alone it overfits and the
    # ceiling is data-limited (val mIoU 0.187 with 512, 0.419 with 4,096; docs/cpu-miniature.md).
    supervised = DenseSettings(
        "supervised",
        dataclasses.replace(data, num_train=4096),
        OptimSettings(
            steps=1500, batch_size=16, lr=2e-3, optimizer="adam", schedule="cosine", warmup_steps=20
        ),
        train_backbone=True,
        head_channels=128,
        flip=True,
    )
    settings = EvalSettings(
        profile="cpu",
        segmentation=(DenseSettings("segmentation", data, dense_opt, head_channels=128),),
        depth=(DenseSettings("depth", data, dense_opt, head_channels=64),),
        linear=(LinearSettings("linear", data),),
        detection=(detection,),
        # One thread: on a two-core machine shared with other work, two threads made the same
        # evaluation 2-10x *slower* (spinning OpenMP workers); an idle machine was not measured.
        threads=1,
        supervised=supervised,
    )
    return shrink(settings) if quick else settings


def shrink(settings: EvalSettings) -> EvalSettings:
    """The same tasks at smoke-test size: few images, few steps, narrow heads, one thread."""

    def small_data(d: DataSpec) -> DataSpec:
        size = 32 if d.dataset == "synthetic" else min(d.image_size, 64)
        return dataclasses.replace(d, num_train=8, num_val=4, image_size=size)

    def small_opt(o: OptimSettings) -> OptimSettings:
        return dataclasses.replace(o, steps=3, batch_size=4, warmup_steps=1)

    def dense(s: DenseSettings) -> DenseSettings:
        crop = tuple(min(c, 64) for c in s.crop_size)
        return dataclasses.replace(
            s, data=small_data(s.data), optim=small_opt(s.optim), head_channels=16, crop_size=crop
        )

    def det(s: DetectionSettings) -> DetectionSettings:
        size = 32 if s.data.dataset == "synthetic" else 64
        return dataclasses.replace(
            s,
            data=small_data(s.data),
            optim=small_opt(s.optim),
            min_size=size,
            max_size=size,
            fpn_channels=16,
            box_head_dim=32,
            mask_head_channels=16,
            mask_head_convs=1,
        )

    return dataclasses.replace(
        settings,
        segmentation=tuple(dense(s) for s in settings.segmentation),
        depth=tuple(dense(s) for s in settings.depth),
        linear=tuple(
            dataclasses.replace(s, data=small_data(s.data), max_iter=20) for s in settings.linear
        ),
        detection=tuple(det(s) for s in settings.detection),
        threads=1,  # at this size thread start-up costs more than it saves
        supervised=dense(settings.supervised) if settings.supervised else None,
    )


def with_eval_split(settings: EvalSettings, split: str) -> EvalSettings:
    """``settings`` scored on ``split`` instead of each dataset's own validation split.

    The cpu profile reports on the synthetic ``test`` scenes and tunes recipes on ``val``
    (never on the scenes it reports), so a recipe is chosen on scenes its numbers do not use.
    """
    if not split:
        raise ValueError("split: expected a split name such as 'val' or 'test'")
    from detcon.data.synthetic import SPLITS

    def scored_on(d: DataSpec) -> DataSpec:
        if d.dataset == "synthetic" and split not in SPLITS:  # refused before any probe trains
            raise ValueError(f"split={split!r}: expected one of {', '.join(map(repr, SPLITS))}")
        if split == d.train_split:  # scores on what the probe was fitted to
            raise ValueError(
                f"split={split!r} is the split {d.dataset}'s probes train on: expected a split "
                "they do not see, such as 'val' or 'test'"
            )
        return dataclasses.replace(d, val_split=split)

    return _replace_data(settings, scored_on, tasks_only=True)


def with_scene_difficulty(settings: EvalSettings, difficulty: Any) -> EvalSettings:
    """``settings`` with every synthetic dataset generated with ``difficulty`` (a SceneSpec):
    a run is scored on scenes made like the ones it was pretrained on."""

    def scenes(d: DataSpec) -> DataSpec:
        return dataclasses.replace(d, difficulty=difficulty) if d.dataset == "synthetic" else d

    return _replace_data(settings, scenes, tasks_only=False)


def _replace_data(settings: EvalSettings, fn, *, tasks_only: bool) -> EvalSettings:
    """``settings`` with ``fn`` applied to the DataSpec of every task (and of the supervised
    recipe unless ``tasks_only``: it trains on a training split only)."""

    def move(s):
        return dataclasses.replace(s, data=fn(s.data))

    supervised = settings.supervised
    return dataclasses.replace(
        settings,
        segmentation=tuple(move(s) for s in settings.segmentation),
        depth=tuple(move(s) for s in settings.depth),
        linear=tuple(move(s) for s in settings.linear),
        detection=tuple(move(s) for s in settings.detection),
        supervised=move(supervised) if supervised is not None and not tasks_only else supervised,
    )


# ----------------------------------------------------------------------------------- paper profile


def paper_settings(quick: bool = False) -> EvalSettings:
    """The paper's transfer tasks (docs/design.md §5), fine-tuning the whole backbone.

    Dataset roots are relative to ``data_root``: ``coco/`` (COCO 2017), ``VOCdevkit/VOC2012``,
    ``cityscapes/``, ``nyu/`` (``nyu_depth_v2_labeled.mat``) and ``imagenet/`` (class folders).
    """
    coco = DataSpec("coco", "coco", "train2017", "val2017", num_train=0, num_val=0, image_size=0)
    # Detectron's "1x": 90k iterations at batch 16 (~12 COCO epochs), lr 0.02 x0.1 at 60k and
    # 80k, 1000 warmup iterations. The protocol's SyncBN in backbone, FPN and heads: here the
    # backbone's BN over the whole batch of 16 in one process, heads without BN (deviations E6).
    det_opt = OptimSettings(
        steps=90_000,
        batch_size=16,
        lr=0.02,
        optimizer="sgd",
        weight_decay=1e-4,
        schedule="step",
        milestones=(2 / 3, 8 / 9),
        warmup_steps=1000,
    )
    detection = DetectionSettings(
        "detection",
        coco,
        det_opt,
        train_backbone=True,
        sync_bn=True,
        min_size=1024,
        max_size=1024,
        min_stride=4,
        fpn_channels=256,
        anchor_scales=(8.0,),
        rpn_pre_nms_top_n=(2000, 1000),
        rpn_post_nms_top_n=(2000, 1000),
        rpn_batch_size_per_image=256,
        box_batch_size_per_image=512,
        box_detections_per_img=100,
        box_head_dim=1024,
        mask_head_channels=256,
        mask_head_convs=4,
        flip=True,
    )
    # FCN on VOC train_aug, 45 epochs at batch 16 (~30k steps), 512 px crops, scale [0.5, 2],
    # lr decay x0.1 at 70 % and 90 % (BYOL App. D.3).
    voc = DataSpec(
        "voc", "VOCdevkit/VOC2012", "train_aug", "val", num_train=0, num_val=0, image_size=0
    )
    voc_opt = OptimSettings(
        steps=30_000,
        batch_size=16,
        lr=0.02,
        optimizer="sgd",
        weight_decay=1e-4,
        schedule="step",
        milestones=(0.7, 0.9),
    )
    cityscapes = DataSpec(
        "cityscapes", "cityscapes", "train", "val", num_train=0, num_val=0, image_size=0
    )
    city_opt = dataclasses.replace(voc_opt, steps=40_000, batch_size=8)
    fcn = dict(
        train_backbone=True,
        head_channels=256,
        head_convs=2,
        head_dilation=6,
        dilate_last_stage=True,
        scale_range=(0.5, 2.0),
        flip=True,
    )
    segmentation = (
        DenseSettings("segmentation_voc", voc, voc_opt, crop_size=(512, 512), **fcn),
        DenseSettings(
            "segmentation_cityscapes", cityscapes, city_opt, crop_size=(512, 1024), **fcn
        ),
    )
    # NYU-Depth v2 (after Laina et al. 2016 as BYOL App. D.5): 7.5k steps at batch 256, depth
    # capped at 10 m, 228x304 crops. Not Laina's: those are cropped from frames halved to
    # 240x320 first, ours from the full 480x640 frames (a quarter of their field of view), and we
    # score at full resolution; following them needs halved frames at evaluation too (not built).
    nyu = DataSpec("nyu", "nyu", "train", "test", num_train=0, num_val=0, image_size=0)
    nyu_opt = OptimSettings(
        steps=7_500, batch_size=256, lr=0.16, optimizer="sgd", weight_decay=5e-4, schedule="cosine"
    )
    depth = (
        DenseSettings(
            "depth",
            nyu,
            nyu_opt,
            train_backbone=True,
            head_channels=512,
            crop_size=(228, 304),
            scale_range=(1.0, 1.0),
            flip=True,
            min_depth=1e-3,
            max_depth=10.0,
        ),
    )
    imagenet = DataSpec(
        "imagefolder", "imagenet", "train", "val", num_train=0, num_val=0, image_size=224
    )
    linear = (LinearSettings("linear", imagenet, target="label", l2=1e-6, max_iter=500),)
    settings = EvalSettings("paper", segmentation, depth, linear, (detection,), threads=0)
    return shrink(settings) if quick else settings


def get_settings(profile: str, quick: bool = False) -> EvalSettings:
    """Settings of a named profile (``cpu`` or ``paper``)."""
    if profile == "cpu":
        return cpu_settings(quick)
    if profile == "paper":
        return paper_settings(quick)
    raise ValueError(f"unknown evaluation profile {profile!r}: expected 'cpu' or 'paper'")
