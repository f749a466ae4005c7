"""Mask quality (best overlap with ground truth) on hand-made cases with hand-computed answers."""

import numpy as np
import pytest

from detcon.masks.quality import best_overlap, mask_quality

# Object 1: the top-left 2x2 block (4 px). Object 2: three pixels of the bottom-right block.
# fmt: off
INSTANCES = np.array([[1, 1, 0, 0],
                      [1, 1, 0, 0],
                      [0, 0, 2, 2],
                      [0, 0, 2, 0]])
QUADRANTS = np.array([[0, 0, 1, 1],
                      [0, 0, 1, 1],
                      [2, 2, 3, 3],
                      [2, 2, 3, 3]], dtype=np.int32)
# fmt: on


def test_partition_best_overlap_by_hand():
    # Object 1 == quadrant 0 (IoU 4/4); object 2 inside quadrant 3: 3 / (3 + 4 - 3) = 0.75.
    np.testing.assert_allclose(best_overlap(INSTANCES, QUADRANTS), [1.0, 0.75])


def test_overlapping_best_overlap_by_hand():
    whole = np.ones((4, 4), dtype=bool)  # 16 px: obj1 4/16, obj2 3/16
    bottom = np.zeros((4, 4), dtype=bool)
    bottom[2:] = True  # 8 px: obj1 0, obj2 3/8
    masks = np.stack([whole, bottom])
    np.testing.assert_allclose(best_overlap(INSTANCES, masks), [4 / 16, 3 / 8])


def test_best_overlap_orders_objects_by_id_and_allows_gaps():
    instances = np.where(INSTANCES == 1, 7, np.where(INSTANCES == 2, 3, 0))
    # id 3 (former object 2) comes first.
    np.testing.assert_allclose(best_overlap(instances, QUADRANTS), [0.75, 1.0])


def test_no_masks_and_no_objects():
    empty = np.zeros((0, 4, 4), dtype=bool)
    np.testing.assert_array_equal(best_overlap(INSTANCES, empty), [0.0, 0.0])
    assert best_overlap(np.zeros((4, 4), dtype=int), QUADRANTS).shape == (0,)


def test_background_mask_counts_like_any_other_mask():
    # A partition with one id everywhere: each object's IoU is its area over the image.
    whole = np.zeros((4, 4), dtype=np.int32)
    np.testing.assert_allclose(best_overlap(INSTANCES, whole), [4 / 16, 3 / 16])


def test_mask_quality_means_over_all_objects_of_all_images():
    bottom = np.zeros((1, 4, 4), dtype=bool)
    bottom[0, 2:] = True  # best overlaps [0, 3/8]
    q = mask_quality([(INSTANCES, QUADRANTS), (INSTANCES, bottom)])
    # (1 + 0.75 + 0 + 0.375) / 4; above 0.5: 1 and 0.75.
    assert q["mean_best_iou"] == pytest.approx(2.125 / 4)
    assert q["coverage_at_50"] == pytest.approx(0.5)
    assert q["num_objects"] == 4 and q["num_images"] == 2


def test_coverage_threshold_is_strict():
    instances = np.zeros((2, 2), dtype=int)
    instances[0] = 1  # 2 px object inside a 4 px mask: IoU exactly 0.5
    q = mask_quality([(instances, np.zeros((2, 2), dtype=np.int32))])
    assert q["mean_best_iou"] == pytest.approx(0.5)
    assert q["coverage_at_50"] == 0.0


def test_ground_truth_masks_are_perfect():
    q = mask_quality([(INSTANCES, INSTANCES.astype(np.int32))])
    assert q["mean_best_iou"] == 1.0 and q["coverage_at_50"] == 1.0


@pytest.mark.parametrize(
    "masks, match",
    [
        (np.zeros((3, 3), dtype=np.int32), "shape"),
        (np.zeros((4, 4), dtype=bool), "integer id map"),
        (np.zeros((2, 4, 4), dtype=np.uint8), "bool"),
        (np.full((4, 4), -1, dtype=np.int32), "negative"),
        (np.zeros((1, 1, 4, 4), dtype=bool), "expected an integer partition"),
    ],
)
def test_bad_masks_are_rejected(masks, match):
    with pytest.raises(ValueError, match=match):
        best_overlap(INSTANCES, masks)


def test_bad_instances_and_empty_sets_are_rejected():
    with pytest.raises(ValueError, match="integer id map"):
        best_overlap(INSTANCES.astype(float), QUADRANTS)
    with pytest.raises(ValueError, match="negative"):
        best_overlap(-INSTANCES, QUADRANTS)
    with pytest.raises(ValueError, match="no ground-truth object"):
        mask_quality([(np.zeros((4, 4), dtype=int), QUADRANTS)])
    with pytest.raises(ValueError, match="no ground-truth object"):
        mask_quality([])
