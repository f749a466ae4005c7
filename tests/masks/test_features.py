import pytest
import torch

from detcon.masks.features import mask_weights, pool_masks, present_masks, sample_mask_ids


def test_partition_majority_vote_on_the_grid():
    # 4x4 image, 2x2 grid (stride 2): cell (0,0) has ids {1,1,1,2} -> 1; cell (0,1) all 2;
    # cell (1,0) ties 0/3 -> lowest id 0; cell (1,1) all 3. Id 4 appears in one pixel only.
    ids = torch.tensor([[[1, 1, 2, 2], [1, 2, 2, 2], [0, 3, 3, 3], [0, 3, 3, 4]]])
    w = mask_weights(ids, (2, 2))
    assert w.shape == (1, 5, 4)
    expected = torch.zeros(1, 5, 4)
    expected[0, 1, 0] = expected[0, 2, 1] = expected[0, 0, 2] = expected[0, 3, 3] = 1
    torch.testing.assert_close(w, expected)
    assert present_masks(w).tolist() == [[True, True, True, True, False]]


def test_partition_matches_one_hot_avg_pool_argmax():
    torch.manual_seed(0)
    ids = torch.randint(0, 6, (3, 32, 32))
    w = mask_weights(ids, (4, 4), num_ids=8)
    onehot = torch.nn.functional.one_hot(ids, 8).permute(0, 3, 1, 2).float()
    pooled = torch.nn.functional.avg_pool2d(onehot, 8).flatten(2)  # (B, M, 16)
    ref = torch.nn.functional.one_hot(pooled.argmax(1), 8).permute(0, 2, 1).float()
    torch.testing.assert_close(w, ref)


def test_overlapping_masks_soft_pool():
    m = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    m[0, 0, :2, :2] = True  # fills cell (0,0)
    m[0, 1, :1, :] = True  # half of cells (0,0) and (0,1)
    w = mask_weights(m, (2, 2))
    torch.testing.assert_close(w[0, 0], torch.tensor([1.0, 0, 0, 0]))
    torch.testing.assert_close(w[0, 1], torch.tensor([0.5, 0.5, 0, 0]))


def test_overlapping_masks_use_the_partitions_cells():
    # A multiple of the grid: exactly VALID average pooling (the release's). Otherwise each pixel
    # belongs to one cell, floor(i * cells / size), as for partitions (deviations.md L9): a stack
    # of the partition's one-hot masks pools to its fractions, whose argmax is the partition's.
    torch.manual_seed(0)
    m = torch.rand(2, 5, 64, 64) > 0.5
    torch.testing.assert_close(
        mask_weights(m, (8, 8)), torch.nn.functional.avg_pool2d(m.float(), 8).flatten(2)
    )
    ids = torch.randint(0, 4, (2, 100, 100))
    onehot = torch.nn.functional.one_hot(ids, 4).permute(0, 3, 1, 2).bool()
    soft = mask_weights(onehot, (13, 13))
    torch.testing.assert_close(soft.sum(1), torch.ones(2, 169))  # each pixel counted once
    hard = mask_weights(ids, (13, 13), num_ids=4)
    torch.testing.assert_close(
        torch.nn.functional.one_hot(soft.argmax(1), 4).permute(0, 2, 1).float(), hard
    )


def test_sampling_draws_only_present_ids_uniformly():
    w = torch.zeros(2, 6, 4)
    w[0, [1, 4], 0] = 1
    w[1, [0, 2, 5], 1] = 1
    u = torch.rand(2, 3000, generator=torch.Generator().manual_seed(0))
    ids = sample_mask_ids(w, u)
    assert set(ids[0].tolist()) == {1, 4} and set(ids[1].tolist()) == {0, 2, 5}
    counts = torch.bincount(ids[1], minlength=6)[[0, 2, 5]].float() / 3000
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.03)


def test_sampling_depends_only_on_each_images_uniforms():
    w = torch.zeros(4, 5, 4)
    w[:, :3, 0] = 1
    u = torch.rand(4, 7)
    full = sample_mask_ids(w, u)
    halves = torch.cat([sample_mask_ids(w[:2], u[:2]), sample_mask_ids(w[2:], u[2:])])
    assert torch.equal(full, halves)


def test_an_image_without_masks_draws_among_all_ids_as_the_release():
    """The release samples from log(present + 1e-11): uniform over all M ids when none is
    present (a crop no proposal reaches); the other images keep their present ids."""
    w = torch.zeros(2, 4, 4)
    w[0, 2, 0] = 1  # image 0: only id 2; image 1: nothing on the grid
    u = torch.rand(2, 4000, generator=torch.Generator().manual_seed(0))
    ids = sample_mask_ids(w, u)
    assert set(ids[0].tolist()) == {2}
    counts = torch.bincount(ids[1], minlength=4).float() / 4000
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.03)
    # its pooled vectors are zero (the release divides by max(area, 1))
    pooled = pool_masks(torch.ones(2, 3, 2, 2), w, ids[:, :5])
    assert torch.equal(pooled[1], torch.zeros(5, 3)) and torch.equal(pooled[0], torch.ones(5, 3))
    with pytest.raises(ValueError, match=r"hold no mask \(M = 0\)"):
        sample_mask_ids(torch.zeros(2, 0, 4), torch.rand(2, 3))


def test_pool_is_the_mean_over_the_mask_cells():
    feats = torch.arange(2 * 4, dtype=torch.float).view(1, 2, 2, 2)  # C=2, 2x2
    w = torch.tensor([[[1.0, 1.0, 0, 0], [0, 0, 0, 1.0]]])
    pooled = pool_masks(feats, w, torch.tensor([[0, 1, 0]]))
    torch.testing.assert_close(pooled[0, 0], torch.tensor([0.5, 4.5]))
    torch.testing.assert_close(pooled[0, 1], torch.tensor([3.0, 7.0]))
    torch.testing.assert_close(pooled[0, 2], pooled[0, 0])


def test_bad_masks_raise():
    with pytest.raises(ValueError, match="expected an integer id map"):
        mask_weights(torch.rand(1, 4, 4), (2, 2))
    with pytest.raises(ValueError, match="negative mask id"):
        mask_weights(-torch.ones(1, 4, 4, dtype=torch.long), (2, 2))


def test_an_overlapping_mask_on_a_sliver_of_a_cell_is_present():
    # the presence threshold is "any coverage" (a mask covering 1 of a cell's 25 pixels is
    # present); at 0.5 instead, no test noticed
    masks = torch.zeros(1, 2, 10, 10, dtype=torch.bool)
    masks[0, 0] = True
    masks[0, 1, 0, 0] = True
    assert present_masks(mask_weights(masks, (2, 2))).tolist() == [[True, True]]
