"""The MCG-style combinatorial-grouping proposal generator."""

import numpy as np
import pytest

from detcon.masks.mcg import combinatorial_grouping_proposals
from detcon.masks.quality import best_overlap


def _scene(seed=0, h=64, w=72):
    """Three flat-coloured objects (a square, a disc, a bar) on a noisy grey background."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(120, 6, (h, w, 3)), 0, 255)
    instances = np.zeros((h, w), dtype=np.int64)
    yy, xx = np.mgrid[:h, :w]
    shapes = [
        (yy >= 6) & (yy < 22) & (xx >= 8) & (xx < 24),
        (yy - 42) ** 2 + (xx - 20) ** 2 < 10**2,
        (yy >= 12) & (yy < 52) & (xx >= 50) & (xx < 60),
    ]
    colours = [(220, 40, 40), (40, 200, 60), (30, 60, 210)]
    for k, (shape, colour) in enumerate(zip(shapes, colours), start=1):
        image[shape] = np.clip(np.asarray(colour) + rng.normal(0, 6, (shape.sum(), 3)), 0, 255)
        instances[shape] = k
    return image.astype(np.uint8), instances


def _pairwise_iou(masks):
    flat = masks.reshape(len(masks), -1).astype(np.int64)
    inter = flat @ flat.T
    area = flat.sum(axis=1)
    return inter / (area[:, None] + area[None, :] - inter)


def test_finds_clear_objects():
    image, instances = _scene()
    masks, _ = combinatorial_grouping_proposals(image, num_proposals=16)
    # Each object is found almost exactly by some proposal.
    assert best_overlap(instances, masks).min() > 0.8


def test_output_format_ranked_and_deduplicated():
    image, _ = _scene(seed=1)
    masks, scores = combinatorial_grouping_proposals(image, num_proposals=8, max_iou=0.7)
    assert masks.dtype == bool and masks.shape[1:] == image.shape[:2]
    assert 1 <= len(masks) <= 8 and scores.shape == (len(masks),)
    assert scores.dtype == np.float32
    assert np.all(np.diff(scores) <= 0)  # best first
    assert masks.reshape(len(masks), -1).any(axis=1).all()  # no empty proposal
    iou = _pairwise_iou(masks)
    np.fill_diagonal(iou, 0.0)
    assert iou.max() <= 0.7


def test_deterministic():
    image, _ = _scene(seed=2)
    a = combinatorial_grouping_proposals(image)
    b = combinatorial_grouping_proposals(image)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_uniform_image_gives_one_whole_image_proposal():
    masks, scores = combinatorial_grouping_proposals(np.full((20, 30, 3), 90, dtype=np.uint8))
    assert masks.shape == (1, 20, 30) and masks.all() and scores.shape == (1,)


def test_num_proposals_caps_the_output():
    image, _ = _scene(seed=3)
    assert len(combinatorial_grouping_proposals(image, num_proposals=1)[0]) == 1
    assert len(combinatorial_grouping_proposals(image, num_proposals=4)[0]) == 4


def test_single_scale_and_tiny_images_work():
    image, _ = _scene(seed=4, h=17, w=9)
    masks, _ = combinatorial_grouping_proposals(image, scales=((1.0, 100.0),))
    assert masks.shape[1:] == (17, 9)
    masks, _ = combinatorial_grouping_proposals(np.zeros((1, 1, 3), dtype=np.uint8))
    assert masks.shape == (1, 1, 1)


def test_large_images_keep_full_resolution_masks():
    # 4x upsampled scene (256 x 288): superpixels are computed at max_side=192, masks are not.
    image, instances = _scene(seed=5)
    image = image.repeat(4, axis=0).repeat(4, axis=1)
    instances = instances.repeat(4, axis=0).repeat(4, axis=1)
    masks, _ = combinatorial_grouping_proposals(image, num_proposals=16)
    assert masks.shape[1:] == (256, 288)
    assert best_overlap(instances, masks).min() > 0.8


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_proposals": 0}, "num_proposals"),
        ({"scales": ()}, "scales"),
        ({"scales": ((2.0, 100.0),)}, "scales"),
        ({"max_iou": 0.0}, "max_iou"),
        ({"max_side": 0}, "max_side"),
    ],
)
def test_bad_arguments(kwargs, match):
    image, _ = _scene()
    with pytest.raises(ValueError, match=match):
        combinatorial_grouping_proposals(image, **kwargs)


def test_bad_images():
    with pytest.raises(ValueError, match="uint8"):
        combinatorial_grouping_proposals(np.zeros((8, 8, 3), dtype=np.float64))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        combinatorial_grouping_proposals(np.zeros((8, 8), dtype=np.uint8))
