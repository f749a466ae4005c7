"""Mask sources: formats, the paper's settings, and the external-mask reader."""

import pickle

import numpy as np
import pytest
import skimage.segmentation
from PIL import Image

from detcon.config import MaskConfig
from detcon.masks.sources import (
    build_mask_source,
    felzenszwalb_masks,
    grid_masks,
    ground_truth_masks,
    read_external_masks,
)


def _image(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_grid_tiles_by_hand():
    # fmt: off
    expected = np.array([[0, 0, 1, 1],
                         [0, 0, 1, 1],
                         [2, 2, 3, 3],
                         [2, 2, 3, 3]])
    # fmt: on
    np.testing.assert_array_equal(grid_masks(4, 4, 2), expected)
    source = build_mask_source(MaskConfig(source="grid", grid_size=2))
    out = source(np.zeros((4, 4, 3), dtype=np.uint8))
    assert source.kind == "partition" and out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)


def test_grid_uneven_sides_give_near_equal_tiles():
    ids = grid_masks(7, 10, 3)
    assert np.array_equal(np.unique(ids), np.arange(9))
    heights = np.bincount(ids[:, 0] // 3)  # pixel rows per tile row
    widths = np.bincount(ids[0] % 3)  # pixel columns per tile column
    assert heights.sum() == 7 and heights.max() - heights.min() <= 1
    assert widths.sum() == 10 and widths.max() - widths.min() <= 1


def test_fh_matches_skimage_and_keeps_ids_above_255():
    image = _image(48, 48)
    out = felzenszwalb_masks(image, scale=1.0, sigma=0.0, min_size=1)
    ref = skimage.segmentation.felzenszwalb(image, scale=1.0, sigma=0.0, min_size=1)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, ref)
    # Random noise gives many segments: the release's uint8 cast would wrap ids >= 256.
    assert out.max() > 255
    assert len(np.unique(out)) == out.max() + 1


def test_fh_source_uses_config_values():
    cfg = MaskConfig(source="fh", fh_scale=50.0, fh_sigma=0.5, fh_min_size=10)
    image = _image()
    ref = skimage.segmentation.felzenszwalb(image, scale=50.0, sigma=0.5, min_size=10)
    np.testing.assert_array_equal(build_mask_source(cfg)(image), ref)
    assert build_mask_source(cfg).params == {"fh_scale": 50.0, "fh_sigma": 0.5, "fh_min_size": 10}


def test_ground_truth_passes_instances_with_background():
    instances = np.array([[0, 3, 3], [0, 5, 5], [9, 9, 9]])
    out = build_mask_source(MaskConfig(source="ground_truth"))(_image(3, 3), instances)
    np.testing.assert_array_equal(out, [[0, 1, 1], [0, 2, 2], [3, 3, 3]])
    assert out.dtype == np.int32


def test_ground_truth_keeps_the_16_largest_objects():
    # 20 objects of sizes 1..20 pixels in a row of 210 pixels plus 10 background pixels.
    row = np.concatenate([np.full(k, k) for k in range(1, 21)] + [np.zeros(10, dtype=int)])
    instances = row[None, :]
    out = ground_truth_masks(instances)
    kept = np.unique(instances[out > 0])
    np.testing.assert_array_equal(kept, np.arange(5, 21))  # objects 1..4 are the smallest
    assert np.all(out[instances <= 4] == 0)  # merged into background
    np.testing.assert_array_equal(np.unique(out), np.arange(17))


def test_ground_truth_ties_keep_the_lower_id():
    instances = np.arange(1, 19)[None, :]  # 18 one-pixel objects
    kept = np.unique(instances[ground_truth_masks(instances) > 0])
    np.testing.assert_array_equal(kept, np.arange(1, 17))


def test_ground_truth_without_instances_is_a_clear_error():
    source = build_mask_source(MaskConfig(source="ground_truth"))
    with pytest.raises(ValueError, match="needs the ground-truth instance map"):
        source(_image())


def test_image_source_is_one_whole_image_mask():
    out = build_mask_source(MaskConfig(source="image"))(_image(5, 7))
    assert out.shape == (5, 7) and out.dtype == np.int32 and not out.any()


def test_mcg_source_gives_overlapping_stack():
    source = build_mask_source(MaskConfig(source="mcg", mcg_num_proposals=5))
    out = source(_image(40, 48))
    assert source.kind == "overlapping"
    assert out.dtype == bool and out.ndim == 3 and out.shape[1:] == (40, 48)
    assert 1 <= out.shape[0] <= 5


def test_sources_are_picklable_for_worker_processes():
    source = build_mask_source(MaskConfig(source="fh", fh_min_size=20))
    clone = pickle.loads(pickle.dumps(source))
    image = _image()
    np.testing.assert_array_equal(clone(image), source(image))
    assert clone == source and hash(clone) == hash(source)


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((8, 8, 3), dtype=np.float32), "uint8"),
        (np.zeros((8, 8), dtype=np.uint8), r"\(H, W, 3\)"),
        (np.zeros((3, 8, 8), dtype=np.uint8), r"\(H, W, 3\)"),
    ],
)
def test_bad_images_are_rejected(image, match):
    with pytest.raises(ValueError, match=match):
        build_mask_source(MaskConfig(source="grid"))(image)


def test_instances_of_another_shape_are_rejected():
    with pytest.raises(ValueError, match="instances has shape"):
        build_mask_source(MaskConfig(source="ground_truth"))(_image(4, 4), np.zeros((4, 5), int))


# --------------------------------------------------------------------------- external masks


def test_png_partitions_in_several_modes(tmp_path):
    ids = np.array([[0, 1, 2], [300, 300, 7]])
    Image.fromarray(ids.astype(np.uint16)).save(tmp_path / "a16.png")
    Image.fromarray((ids % 256).astype(np.uint8)).save(tmp_path / "a8.png")
    rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "argb.png")
    dense = np.array([[0, 1, 2], [4, 4, 3]])  # ids relabelled 0..k-1 in increasing order
    np.testing.assert_array_equal(read_external_masks(tmp_path / "a16.png"), dense)
    np.testing.assert_array_equal(read_external_masks(tmp_path / "a8.png"), dense)
    out = read_external_masks(tmp_path / "argb.png")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, dense)


def test_png_panoptic_ids_are_made_dense(tmp_path):
    # COCO panoptic RGB ids run into the millions; the pooling tensors are dense in the largest
    # id, so raw ids would make them gigabytes for two segments.
    ids = np.zeros((8, 8), dtype=np.int64)
    ids[:, :3], ids[:, 3:] = 287944, 1971210
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pan.png")
    out = read_external_masks(tmp_path / "pan.png")
    np.testing.assert_array_equal(out, (ids == 1971210).astype(np.int32))


def test_npz_overlapping_sorted_by_score_and_truncated(tmp_path):
    masks = np.zeros((3, 4, 5), dtype=bool)
    for m in range(3):
        masks[m, m] = True
    np.savez(tmp_path / "p.npz", masks=masks, scores=np.array([0.1, 0.9, 0.5]))
    out = read_external_masks(tmp_path / "p.npz")
    np.testing.assert_array_equal(out, masks[[1, 2, 0]])
    np.testing.assert_array_equal(
        read_external_masks(tmp_path / "p.npz", max_masks=2), masks[[1, 2]]
    )
    np.savez(tmp_path / "q.npz", masks=masks)  # no scores: file order
    np.testing.assert_array_equal(read_external_masks(tmp_path / "q.npz"), masks)
    # the masks kept hold no others in memory (a view of all of them: the loader's mask cache
    # counted the 16 kept of 200)
    kept = read_external_masks(tmp_path / "q.npz", max_masks=2)
    assert kept.base is None and kept.nbytes == 2 * 4 * 5


def test_external_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_external_masks(tmp_path / "missing.png")
    np.savez(tmp_path / "u8.npz", masks=np.ones((2, 3, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="dtype uint8, expected bool"):
        read_external_masks(tmp_path / "u8.npz")
    np.savez(tmp_path / "flat.npz", masks=np.ones((3, 3), dtype=bool))
    with pytest.raises(ValueError, match=r"expected \(M, H, W\)"):
        read_external_masks(tmp_path / "flat.npz")
    np.savez(tmp_path / "nokey.npz", other=np.ones((1, 3, 3), dtype=bool))
    with pytest.raises(ValueError, match="expected 'masks'"):
        read_external_masks(tmp_path / "nokey.npz")
    np.savez(tmp_path / "badscore.npz", masks=np.ones((2, 3, 3), dtype=bool), scores=np.ones(3))
    with pytest.raises(ValueError, match="'scores' has shape"):
        read_external_masks(tmp_path / "badscore.npz")
    with open(tmp_path / "plain.npz", "wb") as fh:
        np.save(fh, np.ones((1, 3, 3), dtype=bool))
    with pytest.raises(ValueError, match="single array"):
        read_external_masks(tmp_path / "plain.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable .npz"):
        read_external_masks(tmp_path / "junk.npz")
    np.savez_compressed(tmp_path / "damaged.npz", masks=np.eye(64, dtype=bool)[None])
    data = bytearray((tmp_path / "damaged.npz").read_bytes())
    data[52:60] = bytes(8)  # inside the deflated member: zlib's own error
    (tmp_path / "damaged.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a readable .npz"):
        read_external_masks(tmp_path / "damaged.npz")
    Image.fromarray(np.zeros((3, 3, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    with pytest.raises(ValueError, match="PNG mode 'RGBA'"):
        read_external_masks(tmp_path / "rgba.png")
    (tmp_path / "m.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="suffix '.jpg'"):
        read_external_masks(tmp_path / "m.jpg")


def test_external_source_reads_by_key(tmp_path):
    (tmp_path / "cls").mkdir()
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(ids).save(tmp_path / "cls" / "img1.png")
    source = build_mask_source(MaskConfig(source="external", external_dir=str(tmp_path)))
    assert source.kind == "partition"
    np.testing.assert_array_equal(source(_image(3, 4), key="cls/img1"), ids)
    with pytest.raises(ValueError, match="needs the image key"):
        source(_image(3, 4))
    with pytest.raises(ValueError, match="relative path"):
        source(_image(3, 4), key="../cls/img1")
    with pytest.raises(FileNotFoundError, match="img2.png"):
        source(_image(3, 4), key="cls/img2")
    with pytest.raises(ValueError, match="expected the image's|produced masks of shape"):
        source(_image(4, 4), key="cls/img1")  # masks of another image size
    np.savez(tmp_path / "cls" / "img3.npz", masks=np.ones((1, 3, 4), dtype=bool))
    with pytest.raises(ValueError, match="mixed kinds"):
        source(_image(3, 4), key="cls/img3")


def test_external_source_overlapping_keeps_top_proposals(tmp_path):
    masks = np.zeros((20, 3, 4), dtype=bool)
    masks[:, 0, 0] = True
    np.savez(tmp_path / "a.npz", masks=masks, scores=np.arange(20.0))
    source = build_mask_source(
        MaskConfig(source="external", external_dir=str(tmp_path), mcg_num_proposals=16)
    )
    assert source.kind == "overlapping"
    assert source(_image(3, 4), key="a").shape == (16, 3, 4)


def test_external_source_needs_a_directory_with_masks(tmp_path):
    with pytest.raises(ValueError, match="needs masks.external_dir"):
        build_mask_source(MaskConfig(source="external"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_mask_source(MaskConfig(source="external", external_dir=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="holds no .png or .npz"):
        build_mask_source(MaskConfig(source="external", external_dir=str(tmp_path)))
