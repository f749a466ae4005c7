"""Metric helpers on hand cases with known answers, and the small pure helpers of the tasks."""

from __future__ import annotations

import math

import pytest
import torch

from detcon.evaluate.data import boxes_from_masks, instance_targets, random_scale_crop
from detcon.evaluate.depth import berhu_loss
from detcon.evaluate.linear import fit_logistic, largest_object_class, present_classes
from detcon.evaluate.metrics import (
    coco_average_precision,
    coco_detections,
    coco_ground_truth,
    confusion_matrix,
    depth_scores,
    depth_sums,
    mean_average_precision,
    segmentation_scores,
)
from detcon.evaluate.segmentation import FCNHead
from detcon.evaluate.settings import OptimSettings
from detcon.evaluate.training import batch_indices, lr_at

torch.set_num_threads(1)


# ------------------------------------------------------------------------------ segmentation


def test_miou_perfect_prediction_is_one():
    target = torch.randint(0, 4, (2, 8, 8))
    scores = segmentation_scores(confusion_matrix(target, target, 4))
    assert scores == {"miou": 1.0, "pixel_acc": 1.0}


def test_miou_hand_case_ignores_label_255_and_unseen_classes():
    target = torch.tensor([0, 0, 1, 1, 255])
    pred = torch.tensor([0, 1, 1, 1, 2])  # the ignored pixel's prediction must not count
    conf = confusion_matrix(pred, target, num_classes=3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    scores = segmentation_scores(conf)
    # class 0: 1 / (2 + 1 - 1) = 1/2; class 1: 2 / (2 + 3 - 2) = 2/3; class 2 never seen.
    assert scores["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert scores["pixel_acc"] == pytest.approx(3 / 4)


def test_confusion_matrix_rejects_out_of_range_classes():
    with pytest.raises(ValueError, match=r"\[0, 3\).*out of range: pred \[5\]$"):
        confusion_matrix(torch.tensor([0, 5]), torch.tensor([0, 1]), 3)
    # raw Cityscapes labelIds: the target is out of range, the predictions are fine
    with pytest.raises(ValueError, match=r"out of range: target \[26, 33\]$"):
        confusion_matrix(torch.tensor([0, 1, 2]), torch.tensor([26, 33, 1]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long), 3)


# ------------------------------------------------------------------------------------- depth


def test_depth_perfect_and_hand_case():
    gt = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # 0 = invalid
    perfect = depth_scores(depth_sums(gt.clone(), gt))
    assert perfect == {"rmse": 0.0, "delta1": 1.0}
    pred = torch.tensor([[1.1, 4.0], [4.0, 123.0]])  # ratios 1.1, 2, 1; the invalid pixel skipped
    scores = depth_scores(depth_sums(pred, gt))
    assert scores["rmse"] == pytest.approx(math.sqrt((0.01 + 4.0 + 0.0) / 3))
    assert scores["delta1"] == pytest.approx(2 / 3)
    # Summing the statistics of two halves gives the statistics of the whole.
    halves = depth_sums(pred[:1], gt[:1]) + depth_sums(pred[1:], gt[1:])
    assert depth_scores(halves) == pytest.approx(scores)
    # The threshold is 1.25 (not 1.25^2), on the ratio either way round: 1.3 and 0.7 fail it
    # (1.3 > 1.25, 1 / 0.7 = 1.43), 1.2 passes; each of the two mutations survived the case above
    near = depth_scores(depth_sums(torch.tensor([1.3, 0.7, 1.2]), torch.ones(3)))
    assert near["delta1"] == pytest.approx(1 / 3)


def test_depth_max_depth_excludes_far_pixels_and_empty_is_an_error():
    gt = torch.tensor([1.0, 20.0])
    scores = depth_scores(depth_sums(torch.tensor([1.0, 0.0]), gt, max_depth=10.0))
    assert scores == {"rmse": 0.0, "delta1": 1.0}
    with pytest.raises(ValueError, match="no valid depth"):
        depth_scores(depth_sums(torch.ones(2), torch.zeros(2)))


def test_berhu_is_l1_below_c_and_scaled_l2_above():
    pred, target = torch.tensor([[1.0, 5.0]]), torch.zeros(1, 2)
    valid = torch.ones(1, 2, dtype=torch.bool)
    # c = max|e| / 5 = 1: |1| -> 1; 5 -> (25 + 1) / 2 = 13.
    assert float(berhu_loss(pred, target, valid)) == pytest.approx(7.0)
    assert float(berhu_loss(pred, target, torch.zeros_like(valid))) == 0.0


# ------------------------------------------------------------------------ multi-label probe


def test_mean_average_precision_hand_cases():
    labels = torch.tensor([[1], [0], [1]])
    assert mean_average_precision(torch.tensor([[0.9], [0.1], [0.8]]), labels) == 1.0
    # ranks of positives: 1 and 3 -> (1/1 + 2/3) / 2
    assert mean_average_precision(torch.tensor([[0.9], [0.8], [0.7]]), labels) == (
        pytest.approx(5 / 6)
    )
    with pytest.raises(ValueError, match="positive"):
        mean_average_precision(torch.zeros(2, 1), torch.zeros(2, 1))
    # equal scores are one threshold (sklearn's definition): 2 positives of 8 tied images
    # score 2/8, first or last (1.0 and 0.196 by the images' order before)
    tied = torch.zeros(8, 1)
    for positives in ([0, 1], [6, 7]):
        labels = torch.zeros(8, 1)
        labels[positives] = 1
        assert mean_average_precision(tied, labels) == pytest.approx(0.25)
    # a tie in the middle: ranks 1 (positive), then 2-3 tied (one positive) -> (1 + 2/3) / 2
    assert mean_average_precision(
        torch.tensor([[0.9], [0.5], [0.5]]), torch.tensor([[1], [0], [1]])
    ) == pytest.approx(5 / 6)


def _separable_classes() -> tuple[torch.Tensor, torch.Tensor]:
    """60 points of 4 features in 3 classes, each class far along its own axis."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(20)
    return torch.randn(60, 4, generator=gen) * 0.1 + torch.eye(4)[y] * 3, y


def test_fit_logistic_separates_separable_classes():
    x, y = _separable_classes()
    w, b = fit_logistic(x, y, num_outputs=3, l2=1e-3, max_iter=50)
    assert ((x.double() @ w.T + b).argmax(1) == y).all()
    multi = torch.stack([y == 0, y != 0], 1)
    w, b = fit_logistic(x, multi, num_outputs=2, l2=1e-3, max_iter=50, multilabel=True)
    assert mean_average_precision(x.double() @ w.T + b, multi) == 1.0


def test_largest_object_and_present_classes():
    instances = torch.tensor([[0, 1, 1], [2, 2, 2], [0, 3, 0]])
    semantic = torch.tensor([[0, 5, 5], [7, 7, 7], [0, 2, 0]])
    assert largest_object_class(instances, semantic) == 7
    assert largest_object_class(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2)) == 0
    assert present_classes(semantic, 8).tolist() == [False, True, False, False, True, False, True]


# ---------------------------------------------------------------------------------- COCO AP


def _scene():
    """One 16x16 image with two objects of classes 1 and 2."""
    instances = torch.zeros(16, 16, dtype=torch.long)
    instances[2:6, 3:9] = 1
    instances[9:15, 8:12] = 2
    semantic = torch.where(instances == 2, 2, instances)
    return instances, semantic


def test_instance_targets_boxes_use_pixel_edges():
    instances, semantic = _scene()
    t = instance_targets(instances, semantic)
    assert t["boxes"].tolist() == [[3.0, 2.0, 9.0, 6.0], [8.0, 9.0, 12.0, 15.0]]
    assert t["labels"].tolist() == [1, 2]
    assert t["masks"].shape == (2, 16, 16) and t["masks"].dtype == torch.uint8
    assert boxes_from_masks(t["masks"]).tolist() == t["boxes"].tolist()


def _outputs(target, keep, labels=None):
    masks = target["masks"][keep].float()[:, None]
    return {
        "boxes": target["boxes"][keep],
        "scores": torch.ones(len(keep)),
        "labels": target["labels"][keep] if labels is None else labels,
        "masks": masks,
    }


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_ap_perfect_detection_is_one_and_none_is_zero(iou_type):
    target = instance_targets(*_scene())
    gt = coco_ground_truth([(16, 16)], [target], num_classes=3)
    dets = coco_detections([0], [_outputs(target, [0, 1])], iou_type)
    assert coco_average_precision(gt, dets, iou_type) == pytest.approx({"ap": 1.0, "ap50": 1.0})
    assert coco_average_precision(gt, [], iou_type) == {"ap": 0.0, "ap50": 0.0}
    wrong = coco_detections([0], [_outputs(target, [0, 1], torch.tensor([2, 1]))], iou_type)
    assert coco_average_precision(gt, wrong, iou_type)["ap"] == 0.0


def test_coco_ap_half_recall_hand_case():
    # Two objects of one class, one found: precision 1 up to recall 0.5, so 51 of COCO's 101
    # recall points have precision 1.
    instances, _ = _scene()
    semantic = (instances > 0).long()
    target = instance_targets(instances, semantic)
    gt = coco_ground_truth([(16, 16)], [target], num_classes=2)
    dets = coco_detections([0], [_outputs(target, [1])], "bbox")
    assert coco_average_precision(gt, dets, "bbox")["ap"] == pytest.approx(51 / 101)


def test_coco_ap_over_images_without_ground_truth_is_undefined():
    # pycocotools reports -1 there; clamped, it read as AP 0
    target = instance_targets(*_scene())
    empty = instance_targets(torch.zeros(16, 16, dtype=torch.long), torch.zeros(16, 16).long())
    gt = coco_ground_truth([(16, 16), (16, 16)], [target, empty], num_classes=3)
    dets = coco_detections([0], [_outputs(target, [0, 1])], "bbox")
    with pytest.raises(ValueError, match="none of the 1 evaluated images has a ground-truth"):
        coco_average_precision(gt, dets, "bbox", image_ids=[1])
    assert coco_average_precision(gt, dets, "bbox", image_ids=[0, 1])["ap"] == pytest.approx(1.0)


# ------------------------------------------------------------------------ training helpers


def test_lr_schedules():
    opt = OptimSettings(
        steps=100, batch_size=1, lr=1.0, schedule="step", milestones=(0.5, 0.9), warmup_steps=10
    )
    assert lr_at(0, opt) == pytest.approx(0.1) and lr_at(9, opt) == 1.0
    assert lr_at(49, opt) == 1.0 and lr_at(50, opt) == pytest.approx(0.1)
    assert lr_at(95, opt) == pytest.approx(0.01)
    cos = OptimSettings(steps=100, batch_size=1, lr=2.0, schedule="cosine")
    assert lr_at(0, cos) == 2.0 and lr_at(50, cos) == pytest.approx(1.0)


def test_batch_indices_cover_each_epoch_and_are_seeded():
    def run(seed):
        return list(batch_indices(10, 3, 6, torch.Generator().manual_seed(seed)))

    batches = run(0)
    assert len(batches) == 6 and all(len(b) == 3 for b in batches)
    assert len(set(sum(batches[:3], []))) == 9  # one epoch: 3 disjoint batches of 3
    assert run(0) == batches and run(1) != batches


def test_random_scale_crop_rescales_the_target_on_the_images_pixel_centres():
    # Output pixel j samples source coordinate (j + 0.5) / s - 0.5 in the image's bilinear
    # (align_corners=False); the label must come from the source pixel holding that point's
    # centre, floor((j + 0.5) / s), not floor(j / s) (legacy nearest: up to a pixel off).
    w, s = 20, 0.7
    image = torch.arange(w, dtype=torch.uint8).repeat(3, 4, 1)
    target = torch.arange(w).repeat(4, 1)
    _, t = random_scale_crop(
        image,
        target,
        scale_range=(s, s),
        crop=(0, 0),
        flip=False,
        fill=255,
        generator=torch.Generator().manual_seed(0),
    )
    j = torch.arange(t.shape[1])
    assert torch.equal(t[0], ((j + 0.5) / s).floor().long())


def test_random_scale_crop_moves_image_and_target_together():
    image = torch.arange(16, dtype=torch.uint8).reshape(1, 4, 4).repeat(3, 1, 1)
    target = torch.arange(16).reshape(4, 4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        im, t = random_scale_crop(
            image, target, scale_range=(1.0, 1.0), crop=(2, 3), flip=True, fill=255, generator=gen
        )
        assert im.shape == (3, 2, 3) and t.shape == (2, 3)
        assert torch.equal(im[0].long(), t)  # the same pixels, flipped or not
    im, t = random_scale_crop(
        image, target, scale_range=(1.0, 1.0), crop=(6, 6), flip=False, fill=255, generator=gen
    )
    assert (t == 255).sum() == 36 - 16 and (im[:, t == 255] == 0).all()


def test_standardized_linear_head_ignores_the_feature_scale():
    # standardize + convs=0: BatchNorm without affine, then a 1x1 classifier, so a backbone whose
    # features are 100x larger gets the same logits (the probe reads directions, not scale).
    torch.manual_seed(0)
    head = FCNHead(8, 3, convs=0, standardize=True).train()
    assert [type(m) for m in head.net] == [torch.nn.BatchNorm2d, torch.nn.Conv2d]
    assert head.net[0].weight is None  # no affine parameters
    x = torch.randn(4, 8, 5, 5) * (0.5 + torch.rand(1, 8, 1, 1)) + torch.randn(1, 8, 1, 1)
    out, scaled = head(x, (10, 10)), head(100 * x, (10, 10))
    assert out.shape == (4, 3, 10, 10)
    torch.testing.assert_close(scaled, out, rtol=1e-3, atol=1e-3)  # BatchNorm eps aside
    plain = FCNHead(8, 3, convs=0)  # without it, the logits grow with the features
    assert not torch.allclose(plain(100 * x, (5, 5)), plain(x, (5, 5)), atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_and_linear_fit_run_on_the_features_device():
    # The probes keep features on the evaluation device (`detcon evaluate --device cuda`); these
    # helpers once built tensors on the CPU beside them and failed there (depth's count, the
    # logistic fit's weights, average precision's ranks). Same values as on the CPU.
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 1, 8, 8, generator=gen) + 0.5, torch.rand(2, 1, 8, 8) + 0.5
    torch.testing.assert_close(
        depth_sums(pred.to(dev), target.to(dev)).cpu(), depth_sums(pred, target)
    )
    x, y = _separable_classes()
    w, b = fit_logistic(x.to(dev), y, num_outputs=3, l2=1e-3, max_iter=50)
    assert w.device.type == "cuda"
    assert ((x.double().to(dev) @ w.T + b).argmax(1).cpu() == y).all()
    multi = torch.stack([y == 0, y != 0], 1)
    scores = x.double() @ torch.tensor([[1.0, -1.0, -1.0, -1.0], [-1.0, 1.0, 1.0, 1.0]]).double().T
    assert mean_average_precision(scores.to(dev), multi) == pytest.approx(
        mean_average_precision(scores, multi)
    )


def test_val_labels_follow_the_train_splits_class_folders(tmp_path):
    # each split numbers its class folders by their sorted names: a val tree without one of
    # train's classes was scored against the wrong classes
    from PIL import Image

    from detcon.data.readers import ImageFolderDataset
    from detcon.evaluate.linear import _labels, _on_train_classes

    def tree(root, classes):
        for name in classes:
            (root / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(root / name / "a.png")
        return ImageFolderDataset(root)

    train = tree(tmp_path / "train", ["n01", "n02", "n03"])
    val = tree(tmp_path / "val", ["n02", "n03"])
    assert _on_train_classes(train, val, _labels(val)).tolist() == [1, 2]
    assert _on_train_classes(train, train, _labels(train)).tolist() == [0, 1, 2]
    other = tree(tmp_path / "other", ["n02", "n09"])
    with pytest.raises(ValueError, match="classes the train split lacks \\(n09\\)"):
        _on_train_classes(train, other, _labels(other))
