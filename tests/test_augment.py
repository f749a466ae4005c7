"""Tests for detcon.augment: joint geometry (masks follow the image) and batched photometrics."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from scipy import ndimage

from detcon.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TwoViewGeometry,
    _apply_params,
    _draw_params,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_radius,
    gaussian_blur,
    normalize,
    photometric,
    release_crop_window,
    to_grayscale,
)
from detcon.config import AugmentConfig

torch.set_num_threads(1)

# A 64x64 image whose red/green channels encode each pixel's x/y (4 levels per pixel, so a decoded
# coordinate is good to 1/8 px), and an id map of 8x8 blocks.
SIDE, BLOCK, ENC = 64, 8, 4
_YY, _XX = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
COORD_IMAGE = torch.stack([_XX * ENC, _YY * ENC, torch.zeros_like(_XX)]).to(torch.uint8)
BLOCK_IDS = (_YY // BLOCK) * (SIDE // BLOCK) + _XX // BLOCK


def _decoded_block(img: torch.Tensor, margin: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Block id of the source coordinate each output pixel shows, and where that is unambiguous.

    Pixel ``p`` covers [p - 0.5, p + 0.5), so block edges sit at ``k * BLOCK - 0.5``; output pixels
    whose decoded coordinate lies within ``margin`` px of an edge are left out.
    """
    cx = img[0].float() / ENC + 0.5
    cy = img[1].float() / ENC + 0.5
    bx, by = (cx / BLOCK).floor(), (cy / BLOCK).floor()
    dx = torch.minimum(cx - bx * BLOCK, (bx + 1) * BLOCK - cx)
    dy = torch.minimum(cy - by * BLOCK, (by + 1) * BLOCK - cy)
    return (by * (SIDE // BLOCK) + bx).long(), (dx > margin) & (dy > margin)


# --------------------------------------------------------------------------- geometry


def test_id_map_moves_exactly_with_image():
    geo = TwoViewGeometry(48)
    checked = 0
    for seed in range(25):
        torch.manual_seed(seed)
        for img, ids in geo(COORD_IMAGE, BLOCK_IDS):
            expected, clear = _decoded_block(img)
            assert torch.equal(ids[clear], expected[clear]), f"seed {seed}"
            checked += int(clear.sum())
    assert checked > 25 * 2 * 48 * 48 * 0.5  # most pixels were unambiguous


def test_large_ids_take_the_same_path_as_small_ones():
    # Ids >= 256 cannot ride along as uint8; they must come out as exactly the same partition.
    big = BLOCK_IDS * 100_003 + 7
    geo = TwoViewGeometry(40)
    for seed in range(5):
        torch.manual_seed(seed)
        small_views = geo(COORD_IMAGE, BLOCK_IDS)
        torch.manual_seed(seed)
        big_views = geo(COORD_IMAGE, big)
        for (_, small), (_, large) in zip(small_views, big_views):
            assert large.dtype == torch.int64
            assert torch.equal(large, small * 100_003 + 7)


def test_bool_stack_moves_with_image_and_agrees_with_id_map():
    blocks = [0, 9, 27, 63]
    left = _XX < 20  # overlaps blocks 0, 9, 27 and others
    stack = torch.stack([BLOCK_IDS == k for k in blocks] + [left])
    geo = TwoViewGeometry(40)
    for seed in range(20):
        torch.manual_seed(seed)
        views_ids = geo(COORD_IMAGE, BLOCK_IDS)
        torch.manual_seed(seed)
        views_stack = geo(COORD_IMAGE, stack)
        for (img_a, ids), (img_b, masks) in zip(views_ids, views_stack):
            assert torch.equal(img_a, img_b)  # same seed, same geometry for both mask kinds
            assert masks.dtype == torch.bool and masks.shape == (5, 40, 40)
            for j, k in enumerate(blocks):
                assert torch.equal(masks[j], ids == k)
            cx = img_b[0].float() / ENC
            clear = (cx - 19.5).abs() > 0.3
            assert torch.equal(masks[4][clear], (cx < 19.5)[clear])


def test_shapes_and_dtypes_non_square_and_empty_stack():
    geo = TwoViewGeometry(24)
    image = torch.randint(0, 256, (3, 30, 50), dtype=torch.uint8)
    ids = torch.randint(0, 7, (30, 50))
    for img, m in geo(image, ids):
        assert img.dtype == torch.uint8 and img.shape == (3, 24, 24)
        assert m.dtype == torch.int64 and m.shape == (24, 24)
        assert type(img) is torch.Tensor and type(m) is torch.Tensor  # no tv_tensors leak out
        assert set(m.unique().tolist()) <= set(range(7))
    for _, m in geo(image, torch.zeros(0, 30, 50, dtype=torch.bool)):
        assert m.dtype == torch.bool and m.shape == (0, 24, 24)


def test_single_view_shares_geometry_and_default_does_not():
    shared, independent = TwoViewGeometry(32, single_view=True), TwoViewGeometry(32)
    differ = 0
    for seed in range(10):
        torch.manual_seed(seed)
        (i1, m1), (i2, m2) = shared(COORD_IMAGE, BLOCK_IDS)
        assert torch.equal(i1, i2) and torch.equal(m1, m2)
        assert i1.data_ptr() != i2.data_ptr()  # copies, not aliases
        torch.manual_seed(seed)
        (j1, _), (j2, _) = independent(COORD_IMAGE, BLOCK_IDS)
        differ += not torch.equal(j1, j2)
    assert differ == 10


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_flip_rate(p):
    # A full-image crop (scale and ratio fixed to 1) makes a flip the only change.
    geo = TwoViewGeometry(SIDE, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=p)
    n, flips = 300, 0
    torch.manual_seed(0)
    for _ in range(n // 2):
        for img, ids in geo(COORD_IMAGE, BLOCK_IDS):
            flipped = torch.equal(img, COORD_IMAGE.flip(-1))
            assert flipped or torch.equal(img, COORD_IMAGE)
            assert torch.equal(ids, BLOCK_IDS.flip(-1) if flipped else BLOCK_IDS)
            flips += flipped
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(flips / n - p) <= 4 * sd + 1e-9


def _release_window_numpy(rng, height, width):
    """Our NumPy port of the release's ``get_random_crop_window`` (utils/tf_image_ops.py)."""
    area = np.float32(height * width)
    target = np.float32(rng.uniform(0.08, 1.0)) * area
    aspect = np.exp(np.float32(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w = min(int(np.round(np.sqrt(target * aspect))), width)
    h = min(int(np.round(np.sqrt(target / aspect))), height)
    return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w


def _ks_statistic(a, b):
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def test_crop_windows_follow_the_release_sampler():
    """10k windows on a 500x375 photo against a port of the release's sampler: same area
    distribution (torchvision's rejection sampler gives mean 0.435, P(area > 0.6) 0.24)."""
    height, width, n = 375, 500, 10_000
    rng = np.random.default_rng(0)
    ref = np.array([_release_window_numpy(rng, height, width) for _ in range(n)])
    torch.manual_seed(0)
    ours = np.array([release_crop_window(height, width) for _ in range(n)])
    for t, l, h, w in ours:
        assert 0 <= t and t + h <= height and 0 <= l and l + w <= width and h >= 1 and w >= 1
    area_ref = ref[:, 2] * ref[:, 3] / (height * width)
    area_ours = ours[:, 2] * ours[:, 3] / (height * width)
    assert abs(area_ref.mean() - 0.519) < 0.01  # the figure the issue measured
    assert abs(area_ours.mean() - area_ref.mean()) < 0.01
    assert abs((area_ours > 0.6).mean() - (area_ref > 0.6).mean()) < 0.02
    # two-sample KS, 10k vs 10k: the 0.1% critical value is 1.95 * sqrt(2 / n) = 0.028
    assert _ks_statistic(area_ours, area_ref) < 0.028
    # the aspect ratio is log-uniform (a uniform ratio in [3/4, 4/3] gives KS 0.07 here)
    aspect_ref, aspect_ours = ref[:, 3] / ref[:, 2], ours[:, 3] / ours[:, 2]
    assert _ks_statistic(np.log(aspect_ours), np.log(aspect_ref)) < 0.028
    # offsets uniform: the window's centre spans the image as in the release
    for col in (0, 1):
        assert (
            _ks_statistic(ours[:, col] + ours[:, col + 2] / 2, ref[:, col] + ref[:, col + 2] / 2)
            < 0.028
        )


def test_two_view_geometry_draws_release_windows():
    """The geometry's crops come from release_crop_window with the configured ranges."""
    geo = TwoViewGeometry(16, crop_scale=(0.5, 0.5), crop_ratio=(1.0, 1.0), flip_prob=0.0)
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    image[:, :20] = 255  # top half white
    torch.manual_seed(3)
    (img, _), _ = geo(image, torch.zeros(40, 40, dtype=torch.int64))
    torch.manual_seed(3)
    top, left, h, w = release_crop_window(40, 40, (0.5, 0.5), (1.0, 1.0))
    assert (h, w) == (28, 28)  # round(sqrt(0.5 * 1600)) = 28
    # rounded, not truncated: sqrt(0.6 * 100) = 7.75 gives 8
    assert release_crop_window(10, 10, (0.6, 0.6), (1.0, 1.0))[2:] == (8, 8)
    white_rows = max(0, 20 - top) / h  # the fraction of the crop that is white
    assert abs(img.float().mean().item() / 255 - white_rows) < 0.05


def test_geometry_reproducible_under_global_seed():
    geo = TwoViewGeometry(32)
    torch.manual_seed(7)
    a = geo(COORD_IMAGE, BLOCK_IDS)
    torch.manual_seed(7)
    b = geo(COORD_IMAGE, BLOCK_IDS)
    for (ia, ma), (ib, mb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(ma, mb)


def test_from_config():
    geo = TwoViewGeometry.from_config(AugmentConfig(crop_size=32, single_view=True))
    assert geo.crop_size == 32 and geo.single_view and geo.flip_prob == 0.5


_IMG8 = torch.zeros(3, 8, 8, dtype=torch.uint8)
_IDS8 = torch.zeros(8, 8, dtype=torch.int64)


@pytest.mark.parametrize(
    "image, masks, match",
    [
        (torch.zeros(3, 8, 8), _IDS8, "uint8"),
        (torch.zeros(1, 8, 8, dtype=torch.uint8), _IDS8, r"\(3, H, W\)"),
        (_IMG8, torch.zeros(8, 8, dtype=torch.int32), "int64 id map"),
        (_IMG8, torch.zeros(1, 8, 8, dtype=torch.int64), r"\(H, W\)"),
        (_IMG8, torch.zeros(8, 8, dtype=torch.bool), r"\(M, H, W\)"),
        (_IMG8, torch.zeros(8, 9, dtype=torch.int64), "does not match"),
        (_IMG8, torch.full((8, 8), -1), "min -1"),
        (_IMG8, torch.full((8, 8), 2**24), "max 16777216"),
        (np.zeros((3, 8, 8), np.uint8), _IDS8, "torch.Tensor"),
    ],
)
def test_geometry_bad_inputs(image, masks, match):
    with pytest.raises(ValueError, match=match):
        TwoViewGeometry(8)(image, masks)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(crop_size=0), "crop_size"),
        (dict(crop_size=8, crop_scale=(0.5, 0.2)), "crop_scale"),
        (dict(crop_size=8, crop_ratio=(0.0, 1.0)), "crop_ratio"),
        (dict(crop_size=8, flip_prob=1.5), "flip_prob"),
    ],
)
def test_geometry_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TwoViewGeometry(**kwargs)


# --------------------------------------------------------------------------- photometry


def _only(**kwargs) -> AugmentConfig:
    """An AugmentConfig with every photometric op off except those given."""
    off = dict(
        color_jitter_prob=0.0,
        brightness=0.0,
        contrast=0.0,
        saturation=0.0,
        hue=0.0,
        grayscale_prob=0.0,
        blur_prob=(0.0, 0.0),
        solarize_prob=(0.0, 0.0),
    )
    return AugmentConfig(**{**off, **kwargs})


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_brightness_is_additive():
    cfg = _only(color_jitter_prob=1.0, brightness=0.3)
    x = torch.full((64, 3, 8, 8), 0.5)
    out = photometric(x, view=0, cfg=cfg, generator=_gen())
    delta = out - 0.5
    per_image = delta[:, :1, :1, :1]
    assert torch.allclose(delta, per_image.expand_as(delta), atol=1e-6)  # same shift everywhere
    assert per_image.abs().max() <= 0.3 + 1e-6
    assert per_image.std() > 0.1  # drawn per image, roughly U[-0.3, 0.3] (sd 0.17)


def test_contrast_keeps_channel_means():
    cfg = _only(color_jitter_prob=1.0, contrast=0.4)
    x = 0.4 + 0.2 * torch.rand(16, 3, 8, 8, generator=_gen(1))  # no clipping: 0.5 +- 0.1*1.4
    out = photometric(x, view=0, cfg=cfg, generator=_gen())
    assert torch.allclose(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-5)
    assert not torch.allclose(out, x, atol=1e-3)


def test_saturation_and_hue_match_colorsys():
    x = torch.rand(4, 3, 5, 5, generator=_gen(2))
    f = torch.tensor([0.0, 0.8, 1.2, 3.0])
    d = torch.tensor([-0.1, 0.05, 0.33, 0.0])
    sat, hue = adjust_saturation(x, f), adjust_hue(x, d)
    for i in range(4):
        for r, c in [(0, 0), (2, 3), (4, 1)]:
            h, s, v = colorsys.rgb_to_hsv(*x[i, :, r, c].tolist())
            want_sat = colorsys.hsv_to_rgb(h, min(s * f[i].item(), 1.0), v)
            want_hue = colorsys.hsv_to_rgb((h + d[i].item()) % 1.0, s, v)
            assert np.allclose(sat[i, :, r, c].tolist(), want_sat, atol=1e-5)
            assert np.allclose(hue[i, :, r, c].tolist(), want_hue, atol=1e-5)
    assert torch.allclose(adjust_hue(x, torch.ones(4)), x, atol=1e-5)  # a full turn


def test_grayscale_rec601_and_rate():
    x = torch.rand(2, 3, 4, 4, generator=_gen(3))
    g = to_grayscale(x)
    want = 0.2989 * x[:, 0] + 0.5870 * x[:, 1] + 0.1140 * x[:, 2]
    assert torch.allclose(g, want.unsqueeze(1).expand_as(x), atol=1e-6)
    x = torch.rand(1000, 3, 2, 2, generator=_gen(4))
    out = photometric(x, view=0, cfg=_only(grayscale_prob=0.2), generator=_gen())
    is_gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert abs(is_gray.float().mean().item() - 0.2) < 4 * (0.16 / 1000) ** 0.5


def test_gaussian_blur_matches_scipy_with_zero_padding():
    x = torch.rand(3, 3, 20, 17, generator=_gen(5), dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    r = blur_radius(20)
    out = gaussian_blur(x, sigma, radius=r)
    for i in range(3):
        t = np.arange(-r, r + 1)
        k = np.exp(-(t**2) / (2 * sigma[i].item() ** 2))
        k /= k.sum()
        ref = ndimage.correlate1d(x[i].numpy(), k, axis=2, mode="constant", cval=0.0)
        ref = ndimage.correlate1d(ref, k, axis=1, mode="constant", cval=0.0)
        assert np.allclose(out[i].numpy(), ref, atol=1e-10)
    assert blur_radius(64) == 3 and blur_radius(224) == 11  # 7 and 23 taps (release divider 10)


def test_view_blur_probabilities():
    cfg = _only(blur_prob=(1.0, 0.1), blur_sigma=(1.0, 2.0))
    noise = torch.rand(400, 3, 20, 20, generator=_gen(6))
    var_in = noise.var(dim=(1, 2, 3))
    out0 = photometric(noise, view=0, cfg=cfg, generator=_gen(1))
    out1 = photometric(noise, view=1, cfg=cfg, generator=_gen(2))
    blurred0 = out0.var(dim=(1, 2, 3)) < var_in / 2
    blurred1 = out1.var(dim=(1, 2, 3)) < var_in / 2
    assert blurred0.all()  # view 0: blur_prob 1.0
    assert torch.equal(out1[~blurred1], noise[~blurred1])  # the others are untouched
    assert abs(blurred1.float().mean().item() - 0.1) < 4 * (0.09 / 400) ** 0.5


def test_view_solarize_probabilities():
    cfg = _only(solarize_prob=(0.0, 0.2))
    bright = 0.5 + 0.5 * torch.rand(2000, 3, 2, 2, generator=_gen(7))  # all >= 0.5
    out0 = photometric(bright, view=0, cfg=cfg, generator=_gen(3))
    out1 = photometric(bright, view=1, cfg=cfg, generator=_gen(4))
    assert torch.equal(out0, bright)  # view 0: solarize_prob 0.0
    solarized = (out1 <= 0.5).all(dim=(1, 2, 3))
    assert torch.allclose(out1[solarized], 1 - bright[solarized])
    assert torch.equal(out1[~solarized], bright[~solarized])
    assert abs(solarized.float().mean().item() - 0.2) < 4 * (0.16 / 2000) ** 0.5


def test_jitter_strengths_and_blur_sigma_span_their_configured_ranges():
    # the contrast bound taken from the saturation, a hue in [0, hue] and a sigma up to twice
    # its bound each survived every other test (only the brightness range was checked)
    cfg = AugmentConfig()
    p = _draw_params(20_000, view=0, cfg=cfg, generator=_gen(11))
    ranges = [
        (-cfg.brightness, cfg.brightness),
        (1 - cfg.contrast, 1 + cfg.contrast),
        (1 - cfg.saturation, 1 + cfg.saturation),
        (-cfg.hue, cfg.hue),
    ]
    for col, (lo, hi) in enumerate(ranges):
        values = p["values"][:, col]
        assert lo <= float(values.min()) < lo + 0.01 * (hi - lo), col
        assert hi - 0.01 * (hi - lo) < float(values.max()) <= hi, col
    lo, hi = cfg.blur_sigma
    assert lo <= float(p["sigma"].min()) < lo + 0.01 * (hi - lo)
    assert hi - 0.01 * (hi - lo) < float(p["sigma"].max()) <= hi


def test_vectorised_equals_per_sample_reference():
    cfg = AugmentConfig(
        color_jitter_prob=0.8, grayscale_prob=0.3, blur_prob=(0.5, 0.5), solarize_prob=(0.5, 0.5)
    )
    x = torch.rand(24, 3, 32, 32, generator=_gen(8))
    p = _draw_params(24, view=1, cfg=cfg, generator=_gen(9))
    out = photometric(x, view=1, cfg=cfg, generator=_gen(9))
    assert torch.equal(out, _apply_params(x, p))
    for i in range(24):  # one image at a time, straight from the description of the release
        y = x[i : i + 1]
        if p["jitter"][i]:
            for op_index in p["order"][i].tolist():
                v = p["values"][i, op_index].view(1)
                y = [
                    lambda a, v=v: a + v.view(1, 1, 1, 1),
                    lambda a, v=v: adjust_contrast(a, v),
                    lambda a, v=v: adjust_saturation(a, v),
                    lambda a, v=v: adjust_hue(a, v),
                ][op_index](y).clamp(0, 1)
        if p["gray"][i]:
            y = to_grayscale(y)
        if p["blur"][i]:
            y = gaussian_blur(y, p["sigma"][i : i + 1], radius=blur_radius(32))
        if p["solarize"][i]:
            y = torch.where(y < 0.5, y, 1 - y)
        assert torch.allclose(out[i : i + 1], y.clamp(0, 1), atol=1e-5), f"sample {i}"
    orders = {tuple(o) for o in p["order"].tolist()}
    assert len(orders) > 5  # the order really varies per sample


def test_photometric_deterministic_range_and_input_untouched():
    cfg = AugmentConfig()
    x = torch.rand(8, 3, 32, 32, generator=_gen(10))
    before = x.clone()
    a = photometric(x, view=0, cfg=cfg, generator=_gen(11))
    b = photometric(x, view=0, cfg=cfg, generator=_gen(11))
    c = photometric(x, view=0, cfg=cfg, generator=_gen(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0.0 and a.max() <= 1.0
    wild = torch.rand(8, 3, 16, 16, generator=_gen(13)) * 3 - 1  # out of range in, clipped out
    w = photometric(wild, view=1, cfg=cfg, generator=_gen(14))
    assert w.min() >= 0.0 and w.max() <= 1.0
    assert photometric(x[:0], view=0, cfg=cfg, generator=_gen()).shape == (0, 3, 32, 32)


@pytest.mark.parametrize(
    "images, view, gen, match",
    [
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 0, _gen(), "float tensor"),
        (torch.zeros(3, 8, 8), 0, _gen(), r"\(B, 3, H, W\)"),
        (torch.zeros(2, 4, 8, 8), 0, _gen(), r"\(B, 3, H, W\)"),
        (torch.zeros(2, 3, 8, 8), 2, _gen(), "view=2"),
        (torch.zeros(2, 3, 8, 8), 0, 123, "torch.Generator"),
    ],
)
def test_photometric_bad_inputs(images, view, gen, match):
    with pytest.raises(ValueError, match=match):
        photometric(images, view=view, cfg=AugmentConfig(), generator=gen)


def test_normalize():
    x = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert torch.allclose(normalize(x), torch.zeros(2, 3, 4, 4))
    one = normalize(torch.ones(3, 2, 2))
    want = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(one[:, 0, 0], want)
    with pytest.raises(ValueError, match="float tensor"):
        normalize(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
