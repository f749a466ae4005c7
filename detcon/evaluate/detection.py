"""Object detection and instance segmentation: torchvision's Mask R-CNN with an FPN over the
backbone's stages, scored by COCO AP^bb and AP^mk (IoU .50:.95) with pycocotools.

The paper fine-tunes Mask R-CNN + FPN with cross-replica BatchNorm on COCO (§4). The cpu profile
keeps the same detector at small size on the synthetic scenes (96 px images, a narrow FPN and
heads, few proposals) with the backbone frozen, so the score measures the pretrained features:
their stage outputs are then extracted once (:class:`~detcon.evaluate.features.FeatureBank`) and
only the FPN, RPN and RoI heads train. The ground truth of the synthetic scenes is a COCO object
built in memory from their instance maps; COCO itself is scored against its annotation file.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detcon.augment import IMAGENET_MEAN, IMAGENET_STD
from detcon.evaluate.backbones import BackboneStages, fpn_stage_indices
from detcon.evaluate.context import EvalContext
from detcon.evaluate.data import instance_targets, num_classes
from detcon.evaluate.metrics import coco_average_precision, coco_detections, coco_ground_truth
from detcon.evaluate.settings import DetectionSettings
from detcon.evaluate.training import (
    batch_indices,
    lr_at,
    make_optimizer,
    optimizer_step,
    set_lr,
)

__all__ = ["FPNBackbone", "bank_stages", "build_mask_rcnn", "evaluate_detection"]

# GeneralizedRCNNTransform pads batches to a multiple of this (torchvision's default).
_SIZE_DIVISIBLE = 32


class FPNBackbone(nn.Module):
    """Selected backbone stages -> FPN levels ``"0".."n-1"`` plus ``"pool"`` (torchvision's
    ``BackboneWithFPN`` over our stage wrapper). ``frozen`` keeps the stages in eval mode."""

    def __init__(
        self, stages: BackboneStages, stage_ids: list[int], out_channels: int, frozen: bool
    ) -> None:
        super().__init__()
        self.body = stages
        self.stage_ids = list(stage_ids)
        self.frozen = frozen
        self.fpn = FeaturePyramidNetwork(
            [stages.channels[i] for i in stage_ids], out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels
        if frozen:
            self.body.requires_grad_(False)

    def select(self, x: Tensor) -> list[Tensor]:
        outs = self.body(x)
        return [outs[i] for i in self.stage_ids]

    def levels(self, stage_outputs: list[Tensor]) -> OrderedDict[str, Tensor]:
        return self.fpn(OrderedDict((str(k), f) for k, f in enumerate(stage_outputs)))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.levels(self.select(x))

    def train(self, mode: bool = True) -> FPNBackbone:
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self


def build_mask_rcnn(backbone: FPNBackbone, num_classes: int, s: DetectionSettings) -> MaskRCNN:
    """torchvision ``MaskRCNN`` on ``backbone`` with the sizes of ``s`` (classes incl. background).

    Anchors per level: ``anchor_scales * stride`` for each FPN level's stride (the pool level has
    twice the last stride) and ``anchor_ratios``.
    """
    strides = [backbone.body.strides[i] for i in backbone.stage_ids]
    strides.append(strides[-1] * 2)  # LastLevelMaxPool
    sizes = tuple(tuple(int(round(a * st)) for a in s.anchor_scales) for st in strides)
    anchors = AnchorGenerator(sizes, (tuple(s.anchor_ratios),) * len(sizes))
    ch = backbone.out_channels
    names = [str(k) for k in range(len(backbone.stage_ids))]
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=s.min_size,
        max_size=s.max_size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(ch, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=s.rpn_pre_nms_top_n[0],
        rpn_pre_nms_top_n_test=s.rpn_pre_nms_top_n[1],
        rpn_post_nms_top_n_train=s.rpn_post_nms_top_n[0],
        rpn_post_nms_top_n_test=s.rpn_post_nms_top_n[1],
        rpn_batch_size_per_image=s.rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=s.roi_sampling_ratio),
        box_head=TwoMLPHead(ch * 7 * 7, s.box_head_dim),
        box_predictor=FastRCNNPredictor(s.box_head_dim, num_classes),
        box_batch_size_per_image=s.box_batch_size_per_image,
        box_detections_per_img=s.box_detections_per_img,
        mask_roi_pool=MultiScaleRoIAlign(
            names, output_size=14, sampling_ratio=s.roi_sampling_ratio
        ),
        mask_head=MaskRCNNHeads(ch, [s.mask_head_channels] * s.mask_head_convs, 1),
        mask_predictor=MaskRCNNPredictor(s.mask_head_channels, s.mask_head_channels, num_classes),
    )


def uses_bank(s: DetectionSettings) -> bool:
    """Whether the detector trains on stored frozen stage outputs: a frozen backbone, no flip,
    and synthetic images that Mask R-CNN's transform neither resizes nor pads."""
    size = s.data.image_size
    return (
        s.data.dataset == "synthetic"
        and not s.train_backbone
        and not s.flip
        and s.min_size == s.max_size == size
        and size % _SIZE_DIVISIBLE == 0
    )


def bank_stages(s: DetectionSettings, strides: list[int]) -> list[int]:
    """Stages this task reads from the feature bank (to reserve before extraction)."""
    return fpn_stage_indices(strides, s.min_stride) if uses_bank(s) else []


def _forward(
    model: MaskRCNN,
    images: list[Tensor],
    targets: list[dict[str, Tensor]] | None,
    stage_outputs: list[Tensor] | None,
) -> Any:
    """``GeneralizedRCNN.forward``, optionally from precomputed stage outputs (frozen backbone):
    transform -> backbone/FPN -> RPN -> RoI heads -> losses (train) or detections (eval)."""
    original_sizes = [tuple(im.shape[-2:]) for im in images]
    image_list, targets = model.transform(images, targets)
    if stage_outputs is None:
        features = model.backbone(image_list.tensors)
    else:
        features = model.backbone.levels(stage_outputs)
    proposals, rpn_losses = model.rpn(image_list, features, targets)
    detections, roi_losses = model.roi_heads(features, proposals, image_list.image_sizes, targets)
    if model.training:
        return {**rpn_losses, **roi_losses}
    return model.transform.postprocess(detections, image_list.image_sizes, original_sizes)


def _targets(item: dict[str, Any]) -> dict[str, Tensor]:
    if "boxes" in item:  # COCO reader
        return {"boxes": item["boxes"], "labels": item["labels"], "masks": item["masks"]}
    return instance_targets(item["instances"], item["semantic"])


def _flip(image: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    w = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}


def _sample(
    dataset: Dataset, i: int, flip: bool, gen: torch.Generator, max_instances: int
) -> tuple[Tensor, dict[str, Tensor]]:
    item = dataset[i]
    image, target = item["image"], _targets(item)
    if max_instances and len(target["labels"]) > max_instances:
        target = {k: v[:max_instances] for k, v in target.items()}
    if flip and float(torch.rand(1, generator=gen)) < 0.5:
        image, target = _flip(image, target)
    return image.float().div(255.0), target


def evaluate_detection(ctx: EvalContext, s: DetectionSettings) -> dict[str, float]:
    """Train Mask R-CNN (frozen or fine-tuned backbone) and return ``ap_bb``, ``ap_mk`` (IoU
    .50:.95) and ``ap50_bb``, ``ap50_mk`` on the validation split."""
    t0 = time.perf_counter()
    dev = ctx.device
    train, val = ctx.store.get(s.data, "train"), ctx.store.get(s.data, "val")
    n_classes = num_classes(train)
    cached = uses_bank(s)
    stages = ctx.bank.stages if cached else BackboneStages(ctx.backbone(trainable=s.train_backbone))
    stage_ids = fpn_stage_indices(stages.strides, s.min_stride)
    torch.manual_seed(ctx.seed_for(s.name, "init"))
    model = build_mask_rcnn(
        FPNBackbone(stages, stage_ids, s.fpn_channels, frozen=not s.train_backbone), n_classes, s
    )
    if s.sync_bn and torch.distributed.is_available() and torch.distributed.is_initialized():
        from detcon.models import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)
    model.to(dev)
    train_feats = val_feats = None
    if cached:
        ctx.bank.reserve(s.data, stage_ids)  # one extraction pass for all stages
        train_feats = [ctx.bank.maps(s.data, "train", i) for i in stage_ids]
        val_feats = [ctx.bank.maps(s.data, "val", i) for i in stage_ids]
    ctx.log(f"{s.name}: model ready after {time.perf_counter() - t0:.1f} s")

    optimizer = make_optimizer(model.parameters(), s.optim)
    gen = ctx.generator(s.name, "order")
    model.train()
    for step, idx in enumerate(batch_indices(len(train), s.optim.batch_size, s.optim.steps, gen)):
        set_lr(optimizer, lr_at(step, s.optim))
        batch = [_sample(train, i, s.flip, gen, s.max_instances) for i in idx]
        images = [im.to(dev) for im, _ in batch]
        targets = [{k: v.to(dev) for k, v in t.items()} for _, t in batch]
        feats = [f[idx] for f in train_feats] if train_feats is not None else None
        losses = _forward(model, images, targets, feats)
        loss = sum(losses.values())
        optimizer_step(optimizer, loss, name=s.name, step=step, steps=s.optim.steps, log=ctx.log)

    model.eval()
    image_ids, sizes, gt_targets = [], [], []
    coco_gt = getattr(val, "coco", None)
    category_ids = None if coco_gt is None else val.category_ids
    # Each batch's outputs become COCO results at once: kept whole, the full-resolution mask
    # probabilities of COCO's 5,000 val images would take about 600 GB (an estimate: 100
    # detections of ~480x640 float32 masks an image, ~120 MB).
    dets: dict[str, list[dict]] = {"bbox": [], "segm": []}
    with torch.no_grad():
        for start in range(0, len(val), 8):
            idx = list(range(start, min(start + 8, len(val))))
            items = [val[i] for i in idx]
            images = [it["image"].float().div(255.0).to(dev) for it in items]
            feats = [f[idx] for f in val_feats] if val_feats is not None else None
            outputs = [
                {k: v.cpu() for k, v in o.items()} for o in _forward(model, images, None, feats)
            ]
            ids = [int(it["image_id"]) if coco_gt is not None else i for i, it in zip(idx, items)]
            for iou_type, found in dets.items():
                found += coco_detections(ids, outputs, iou_type, category_ids)
            image_ids += ids
            if coco_gt is None:
                for it in items:
                    sizes.append(tuple(it["image"].shape[-2:]))
                    gt_targets.append(_targets(it))
    gt = coco_gt if coco_gt is not None else coco_ground_truth(sizes, gt_targets, n_classes)
    result: dict[str, float] = {}
    for iou_type, key in (("bbox", "bb"), ("segm", "mk")):
        ap = coco_average_precision(gt, dets[iou_type], iou_type, image_ids)
        result[f"ap_{key}"], result[f"ap50_{key}"] = ap["ap"], ap["ap50"]
    ctx.log(f"{s.name}: {result} in {time.perf_counter() - t0:.1f} s")
    return result
