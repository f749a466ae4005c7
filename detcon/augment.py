"""Two-view augmentation: joint image+mask geometry per sample, batched photometrics.

docs/design.md §4.1 describes the two views; here, where each step comes from in the release and
where it differs.

The official release (google-deepmind/detcon) splits augmentation in two and so do we:

* **Geometry** runs per sample in the data loader (release: ``utils/tf_image_ops.py``
  ``preprocess_image``, called once per view in ``datasets/dataset_adapter.py``): a random resized
  crop (area in [0.08, 1], aspect in [3/4, 4/3]) and a horizontal flip with p=0.5, applied to the
  image *and* its masks with the same parameters. :class:`TwoViewGeometry` draws the crop window
  as the release does (:func:`release_crop_window`) and applies it with torch's resampling
  kernels to the image and its masks, so every mask follows the image; the image is resampled
  bicubically, the masks by nearest neighbour (uint8 id maps; overlapping bool stacks bit-packed,
  8 masks per plane).
* **Photometry** runs batched on the accelerator after geometry, on the image only (release:
  ``utils/augmentations.py`` ``postprocess``): colour jitter (p=0.8; additive brightness 0.4,
  contrast 0.4, saturation 0.2, hue 0.1, in a random order per image, clipped to [0, 1] after each
  op), grayscale (p=0.2), Gaussian blur (sigma in [0.1, 2], kernel about a tenth of the image side;
  p=1.0 for view 1, 0.1 for view 2), solarize at 0.5 (p=0.0 for view 1, 0.2 for view 2), then a
  final clip. :func:`photometric` does it for a whole batch without a Python loop over samples;
  every random number comes from one ``torch.Generator``, so a seeded generator reproduces it.

:func:`normalize` applies the ImageNet mean/std afterwards (release: ``datasets/image_dataset.py``
``normalize_images``).

Deviations
----------
Differences from the release, each with its reason (for ``docs/deviations.md``):

1. *Crop sampling* follows the release (``get_random_crop_window``): one area fraction and one
   log-uniform aspect ratio, width and height rounded, each clamped to the image separately
   (which distorts the aspect ratio of crops that do not fit), offsets uniform. Not a deviation;
   noted because torchvision's ``RandomResizedCrop`` redraws crops that do not fit instead (up
   to 10 tries, then a centre crop), which gives markedly smaller crops on 4:3 photos (mean area
   0.44 instead of 0.52 on 500x375). :func:`release_crop_window` is the one implementation.
2. *Image resampling.* The release uses ``tf.image.resize`` bicubic (Keys cubic a=-0.5, no
   antialiasing). We use torch bicubic (a=-0.75) *with* antialiasing, which avoids aliasing when a
   large crop is shrunk (e.g. a 400 px crop to 224 px). Output stays uint8 (rounded and clamped, as
   the release clamps to [0, 1] after resizing).
3. *Mask resampling.* torchvision resizes ``tv_tensors.Mask`` with legacy ``nearest``
   (``src = floor(dst * scale)``), which shifts masks up to about half a source pixel towards the
   top-left relative to the bicubic image (half-pixel centres). We resize masks with
   ``nearest-exact`` (``src = floor((dst + 0.5) * scale)``), the half-pixel-centre rule that
   ``tf.image.resize(..., NEAREST_NEIGHBOR)`` in TF2 also uses, so masks stay aligned with the
   image. The release crops then flips then resizes; we crop, resize, then flip: the same
   image, and the same masks except at exact resize ties, where a flipped view's mask takes the
   neighbouring source column (``docs/deviations.md`` A3).
4. *Probabilities.* The release applies an op when ``uniform <= p``; we use ``uniform < p``, so
   p=0 never applies (the difference has probability zero otherwise).
5. *Saturation* is computed in closed form, ``c' = v - min(f, v / (v - min)) * (v - c)`` with
   ``v = max(r, g, b)``, which equals the release's RGB->HSV->RGB round trip with the saturation
   clipped to [0, 1] (dm_pix ``adjust_saturation``) in exact arithmetic; results agree up to float
   rounding. *Hue* rotates the HSV hue by ``delta`` (fraction of a turn) modulo 1 as dm_pix
   ``adjust_hue``, with the standard HSV formulas; again float rounding only.
6. *Blur.* Same kernel as dm_pix ``gaussian_blur`` with the release's ``blur_divider=10``: radius
   ``int(H / 10 / 2)`` (so 7 taps at 64 px, 23 taps at 224 px), separable, zero padding as JAX's
   'SAME' convolution (so image borders darken slightly, as in the release). Sigma is floored at
   1e-6 so that ``blur_sigma`` ranges starting at 0 give an identity kernel instead of NaN.
7. *Random streams.* torch ``Generator`` draws instead of JAX key splits: same distributions,
   different numbers. The release's ``color_transform.apply_prob`` (1.0 in the release) is dropped.
8. *Normalisation.* The release normalises only when the dataset name starts with 'imagenet'
   (COCO pretraining images are left in [0, 1]); :func:`normalize` is applied to every dataset, as
   docs/design.md §4.1 says. Whether to call it is the caller's decision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TwoViewGeometry",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur_radius",
    "gaussian_blur",
    "normalize",
    "photometric",
    "release_crop_window",
    "solarize",
    "to_grayscale",
]

# ImageNet RGB statistics of images in [0, 1] (release: datasets/image_dataset.py color_stats).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Rec. 601 luma weights, as tf.image.rgb_to_grayscale / dm_pix rgb_to_grayscale (release default).
_LUMA = (0.2989, 0.5870, 0.1140)
# Release utils/augmentations.py: kernel size ~ image size / blur_divider.
_BLUR_DIVIDER = 10.0
_SOLARIZE_THRESHOLD = 0.5
# Id maps with ids >= 256 are resized as float32 (as torchvision does); above 2**24 ids would round.
_MAX_MASK_ID = 2**24


# --------------------------------------------------------------------------- geometry


def _resize_image(crop: Tensor, size: int) -> Tensor:
    """Resize a uint8 ``(3, h, w)`` crop to ``(3, size, size)``: bicubic, antialiased (deviation 2).

    The kernel torchvision's ``resize`` calls for uint8 images on the CPU (torch's native uint8
    antialiased bicubic), so the result is identical to ``TF.resize``. That kernel works on
    interleaved pixels: fed planar ``(3, h, w)`` memory (e.g. a synthetic scene; ``read_image``
    already returns interleaved memory) it re-packs them itself and runs about 2x slower than on
    channels-last strides; the interleaving copy made here with ``stack`` costs less than that
    difference. Returns a contiguous tensor.
    """
    if tuple(crop.shape[-2:]) == (size, size):  # torchvision returns such an image unchanged
        return crop.clone(memory_format=torch.contiguous_format)
    if crop.device.type != "cpu":  # no native uint8 kernel there: torchvision's float round trip
        return TF.resize(crop, [size, size], InterpolationMode.BICUBIC, antialias=True)
    if crop.stride(0) != 1:  # planar: interleave (a crop of an (H, W, 3) array already is)
        crop = torch.stack(crop.unbind(0), dim=-1).permute(2, 0, 1)
    out = F.interpolate(
        crop.unsqueeze(0),  # (1, 3, h, w) with channels-last strides
        size=(size, size),
        mode="bicubic",
        align_corners=False,
        antialias=True,
    )
    return out[0].contiguous()


def _resize_nearest(planes: Tensor, size: int) -> Tensor:
    """Resize ``(C, h, w)`` uint8 or float32 planes to ``(C, size, size)`` by ``nearest-exact``.

    The half-pixel rule ``src = floor((dst + 0.5) * h / size)`` (deviation 3); the same kernel
    and result as torchvision's ``resize(..., NEAREST_EXACT)``. A pure gather: every output value
    is a copy of an input value, which is what lets :func:`_pack_bits` planes ride through it.
    """
    if tuple(planes.shape[-2:]) == (size, size):
        return planes
    if planes.shape[0] == 0:
        return planes.new_empty((0, size, size))
    return F.interpolate(planes.unsqueeze(0), size=(size, size), mode="nearest-exact")[0]


def _pack_bits(masks: Tensor) -> Tensor:
    """Bool ``(M, H, W)`` -> uint8 ``(ceil(M / 8), H, W)``; bit ``k`` of plane ``p``: mask ``8p+k``.

    Resizing 8x fewer planes is what makes overlapping stacks cheap (a 16-mask stack: 2 planes);
    nearest-neighbour resampling copies whole bytes, so every bit follows its mask exactly.
    """
    count = masks.shape[0]
    raw = masks.view(torch.uint8)  # bools are stored as bytes 0 / 1
    packed = torch.zeros((count + 7) // 8, *masks.shape[1:], dtype=torch.uint8, device=masks.device)
    for bit in range(min(8, count)):
        planes = raw[bit::8]  # masks bit, bit + 8, ...: one per packed plane, from the first
        packed[: planes.shape[0]] |= planes << bit
    return packed


def _unpack_bits(packed: Tensor, count: int) -> Tensor:
    """Inverse of :func:`_pack_bits`: uint8 ``(P, H, W)`` -> bool ``(count, H, W)``."""
    out = torch.empty(count, *packed.shape[1:], dtype=torch.uint8, device=packed.device)
    for bit in range(min(8, count)):
        target = out[bit::8]
        torch.bitwise_and(packed[: target.shape[0]] >> bit, 1, out=target)
    return out.view(torch.bool)


def _check_pair(name: str, value: Sequence[float], lo: float, hi: float) -> tuple[float, float]:
    if len(value) != 2:
        raise ValueError(f"{name}={value!r}: expected two numbers (min, max)")
    a, b = float(value[0]), float(value[1])
    if not (lo < a <= b <= hi):
        raise ValueError(f"{name}={value!r}: expected {lo} < min <= max <= {hi}")
    return a, b


def release_crop_window(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """A random crop window ``(top, left, crop_height, crop_width)`` as the release draws it.

    Release ``utils/tf_image_ops.py`` ``get_random_crop_window``: area fraction ``U[scale)``, aspect
    ratio ``exp(U[log ratio))``, ``w = round(sqrt(A * r))`` and ``h = round(sqrt(A / r))`` (float32,
    round half to even as ``tf.round``), each clamped to the image on its own, then offsets drawn
    uniformly among the integer positions where the window fits. One draw, never rejected.
    The window is at least 1x1 (the release could produce an empty one on a tiny image).
    """
    u = torch.rand(2)
    area = torch.tensor(float(height * width), dtype=torch.float32)
    target = (scale[0] + (scale[1] - scale[0]) * u[0]) * area
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[1])
    w = min(max(int(torch.round(torch.sqrt(target * aspect))), 1), width)
    h = min(max(int(torch.round(torch.sqrt(target / aspect))), 1), height)
    left = int(torch.randint(0, width - w + 1, (1,)))
    top = int(torch.randint(0, height - h + 1, (1,)))
    return top, left, h, w


class TwoViewGeometry:
    """Two random resized crops + horizontal flips of one image and its masks (docs/design.md §4.1).

    Args:
        crop_size: side ``S`` of each square output view in pixels (paper: 224).
        crop_scale: range of the crop area as a fraction of the image area (release: 0.08-1).
        crop_ratio: range of the crop aspect ratio width/height (release: 3/4-4/3).
        flip_prob: probability of a horizontal flip of each view (release: 0.5).
        single_view: if True both views share *one* crop and flip (paper §5 "single-view
            positives" ablation, docs/design.md §4.7); photometrics are still drawn per view.

    Randomness comes from torch's global RNG (the crop window as :func:`release_crop_window`,
    then one ``torch.rand(1)`` for the flip): seed it per sample (``torch.manual_seed``) in the
    data loader to make a sample reproducible. The crop and flip are applied with torch's
    resampling kernels (``F.interpolate``, as torchvision's ``tv_tensors`` dispatch ends in)
    called directly on plain tensors.
    """

    def __init__(
        self,
        crop_size: int,
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
        single_view: bool = False,
    ) -> None:
        if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1:
            raise ValueError(f"crop_size={crop_size!r}: expected a positive integer")
        scale = _check_pair("crop_scale", crop_scale, 0.0, 1.0)
        ratio = _check_pair("crop_ratio", crop_ratio, 0.0, math.inf)
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob={flip_prob!r}: expected a probability in [0, 1]")
        self.crop_size = crop_size
        self.crop_scale = scale
        self.crop_ratio = ratio
        self.flip_prob = float(flip_prob)
        self.single_view = bool(single_view)

    @classmethod
    def from_config(cls, cfg: Any) -> TwoViewGeometry:
        """Build from an :class:`detcon.config.AugmentConfig` (its geometric fields)."""
        return cls(cfg.crop_size, cfg.crop_scale, cfg.crop_ratio, cfg.flip_prob, cfg.single_view)

    def __repr__(self) -> str:
        return (
            f"TwoViewGeometry(crop_size={self.crop_size}, crop_scale={self.crop_scale}, "
            f"crop_ratio={self.crop_ratio}, flip_prob={self.flip_prob}, "
            f"single_view={self.single_view})"
        )

    def _draw(self, image: Tensor) -> tuple[slice, slice, bool]:
        """One view's crop window and flip, from the global RNG."""
        top, left, height, width = release_crop_window(
            image.shape[-2], image.shape[-1], self.crop_scale, self.crop_ratio
        )
        # As v2.RandomHorizontalFlip: keep the input when torch.rand(1) >= p (float32).
        flip = not bool(torch.rand(1) >= self.flip_prob)
        return slice(top, top + height), slice(left, left + width), flip

    def _one_view(self, image: Tensor, planes: Tensor) -> tuple[Tensor, Tensor]:
        """Crop, resize and maybe flip ``image`` and the mask carrier ``planes`` ``(C, H, W)``."""
        rows, cols, flip = self._draw(image)
        img = _resize_image(image[:, rows, cols], self.crop_size)
        msk = _resize_nearest(planes[:, rows, cols], self.crop_size)
        if flip:
            img, msk = img.flip(-1), msk.flip(-1)
        return img, msk

    def __call__(
        self, image: Tensor, masks: Tensor
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Make two views of ``image`` with their masks.

        Args:
            image: uint8 ``(3, H, W)``.
            masks: either an int64 id map ``(H, W)`` (a partition; ids in ``[0, 2**24)``) or a
                bool stack ``(M, H, W)`` of possibly overlapping binary masks (``M`` may be 0).

        Returns:
            ``((img1, masks1), (img2, masks2))``: ``img`` uint8 ``(3, S, S)``; masks of the same
            kind as given, int64 ``(S, S)`` or bool ``(M, S, S)``. All contiguous, none aliasing
            the inputs.
        """
        max_id = _check_geometry_inputs(image, masks)
        # The masks travel as one "carrier" (C, H, W) that nearest-exact resizes natively: bool
        # stacks bit-packed 8 masks per uint8 plane, id maps as uint8 when their ids fit (as
        # torchvision's uint8 path), else as float32 (exact below 2**24, as torchvision's cast).
        if masks.dtype == torch.bool:
            planes = _pack_bits(masks)

            def decode(p: Tensor) -> Tensor:
                return _unpack_bits(p, masks.shape[0])
        else:
            planes = masks.to(torch.uint8 if max_id < 256 else torch.float32).unsqueeze(0)

            def decode(p: Tensor) -> Tensor:
                return p[0].to(torch.int64)

        img, msk = self._one_view(image, planes)
        first = (img, decode(msk))
        if self.single_view:
            # One crop and flip shared by both branches (docs/design.md §4.7).
            return first, (first[0].clone(), first[1].clone())
        img, msk = self._one_view(image, planes)
        return first, (img, decode(msk))


def _check_geometry_inputs(image: Any, masks: Any) -> int:
    """Raise ValueError on bad inputs; return the largest id of an id map (-1 for a bool stack)."""
    if not isinstance(image, Tensor):
        raise ValueError(f"image: expected a torch.Tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(
            f"image: expected a uint8 tensor of shape (3, H, W), got "
            f"{image.dtype} {tuple(image.shape)}"
        )
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"image: expected a non-empty (3, H, W) image, got {tuple(image.shape)}")
    if not isinstance(masks, Tensor):
        raise ValueError(f"masks: expected a torch.Tensor, got {type(masks).__name__}")
    size = tuple(image.shape[1:])
    if masks.dtype == torch.int64:
        if masks.ndim != 2:
            raise ValueError(
                f"masks: an int64 id map must have shape (H, W), got {tuple(masks.shape)}"
            )
        if masks.numel() == 0:
            raise ValueError(f"masks: empty id map {tuple(masks.shape)}")
        lo, hi = torch.aminmax(masks)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= _MAX_MASK_ID:
            raise ValueError(
                f"masks: id map values must lie in [0, {_MAX_MASK_ID}), got min {lo}, max {hi}"
            )
    elif masks.dtype == torch.bool:
        if masks.ndim != 3:
            raise ValueError(
                f"masks: a bool mask stack must have shape (M, H, W), got {tuple(masks.shape)}"
            )
    else:
        raise ValueError(
            f"masks: expected an int64 id map (H, W) or a bool stack (M, H, W), "
            f"got dtype {masks.dtype} shape {tuple(masks.shape)}"
        )
    if tuple(masks.shape[-2:]) != size:
        raise ValueError(
            f"masks: spatial size {tuple(masks.shape[-2:])} does not match the image's {size}"
        )
    return hi if masks.dtype == torch.int64 else -1


# --------------------------------------------------------------------------- photometry
# Pure per-op functions on float (N, 3, H, W) batches with per-sample parameters of shape (N,).


def _per_sample(p: Tensor) -> Tensor:
    return p.view(-1, 1, 1, 1)


def adjust_brightness(x: Tensor, delta: Tensor) -> Tensor:
    """Additive brightness, as tf.image.adjust_brightness / dm_pix (not torchvision's factor)."""
    return x + _per_sample(delta)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Scale around each channel's spatial mean, as tf.image.adjust_contrast / dm_pix."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return (x - mean) * _per_sample(factor) + mean


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """HSV saturation times ``factor`` (clipped to [0, 1]), hue and value kept (dm_pix).

    Closed form of the HSV round trip: every channel's distance to the max channel ``v`` scales
    by ``s'/s = min(factor, v / (v - min))``.
    """
    v = x.amax(dim=1, keepdim=True)
    span = v - x.amin(dim=1, keepdim=True)
    # Gray pixels (span 0) have no saturation to scale; the ratio is irrelevant there.
    ratio = torch.minimum(_per_sample(factor).expand_as(v), v / span.clamp_min(1e-12))
    return v - ratio * (v - x)


def adjust_hue(x: Tensor, delta: Tensor) -> Tensor:
    """Rotate the HSV hue by ``delta`` turns (modulo 1), as dm_pix adjust_hue.

    Value ``v = max`` and chroma ``v - min`` are kept; each channel is
    ``v - chroma * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 * hue) mod 6`` and
    ``n = 5, 3, 1`` for r, g, b (the standard HSV-to-RGB formula with ``v * s`` = chroma).
    """
    r, g, b = x.unbind(dim=1)
    v = x.amax(dim=1)
    chroma = v - x.amin(dim=1)
    inv = chroma.clamp_min(1e-12).reciprocal()
    # Hue in sixths of a turn, by which channel is the maximum (red wins ties, then green). Gray
    # pixels (chroma 0) come out as v whatever their hue.
    h6 = torch.where(
        v == r, (g - b) * inv, torch.where(v == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0)
    )
    h6 = h6 + 6.0 * delta.view(-1, 1, 1)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(h6.unsqueeze(1) + n, 6.0)
    w = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return v.unsqueeze(1) - chroma.unsqueeze(1) * w


def to_grayscale(x: Tensor) -> Tensor:
    """Rec. 601 luma replicated to 3 channels (tf.image.rgb_to_grayscale, keep_dims)."""
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True).expand_as(x).contiguous()


def solarize(x: Tensor, threshold: float = _SOLARIZE_THRESHOLD) -> Tensor:
    """``x if x < threshold else 1 - x`` (dm_pix solarize)."""
    return torch.where(x < threshold, x, 1.0 - x)


def blur_radius(height: int) -> int:
    """Gaussian kernel radius for an image of ``height`` pixels: release blur_divider=10, dm_pix
    rounds ``kernel_size / 2`` down (7 taps at 64 px, 23 at 224 px)."""
    return int(height / _BLUR_DIVIDER / 2)


def gaussian_blur(x: Tensor, sigma: Tensor, *, radius: int) -> Tensor:
    """Separable Gaussian blur with a per-sample sigma and zero ('SAME') padding.

    Args:
        x: float ``(N, C, H, W)``.
        sigma: float ``(N,)`` standard deviations in pixels.
        radius: kernel radius; the kernel has ``2 * radius + 1`` taps.

    Returns:
        float ``(N, C, H, W)``. One grouped (depthwise) convolution per axis covers the batch.
    """
    if radius < 1 or x.shape[0] == 0:
        return x
    n, c, hgt, wid = x.shape
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    sig = sigma.to(x.dtype).clamp_min(1e-6).view(-1, 1)  # deviation 6: no 0/0 at sigma=0
    kernel = torch.exp(-(taps**2) / (2.0 * sig**2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, K)
    flat = x.reshape(1, n * c, hgt, wid)
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), padding=(0, radius), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), padding=(radius, 0), groups=n * c)
    return flat.view(n, c, hgt, wid)


def _apply_where_(x: Tensor, select: Tensor, op, *params: Tensor) -> None:
    """In place: ``x[i] = clip(op(x[i], params[i]))`` for the samples ``i`` where ``select``."""
    idx = select.nonzero().squeeze(1)
    if idx.numel():
        sub = op(x.index_select(0, idx), *(p.index_select(0, idx) for p in params))
        x.index_copy_(0, idx, sub.clamp_(0.0, 1.0))


# Columns of the uniform draws per sample, in a fixed layout so that one generator state gives one
# result whatever the probabilities are.
_U_JITTER, _U_BRIGHT, _U_CONTRAST, _U_SAT, _U_HUE, _U_GRAY, _U_BLUR, _U_SIGMA, _U_SOLAR = range(9)
_N_UNIFORM = 9
# Jitter ops in the release's index order (augmentations.py _color_transform_single_image).
_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _draw_params(
    batch: int, *, view: int, cfg: Any, generator: torch.Generator
) -> dict[str, Tensor]:
    """Every random decision of :func:`photometric` for ``batch`` images, on the generator's device.

    Keys: ``jitter``, ``gray``, ``blur``, ``solarize`` bool ``(B,)``; ``values`` float ``(B, 4)``
    (brightness delta, contrast factor, saturation factor, hue delta); ``order`` int64 ``(B, 4)``
    (op indices in application order); ``sigma`` float ``(B,)``.
    """
    dev = generator.device
    u = torch.rand(batch, _N_UNIFORM, generator=generator, device=dev)
    # Random order per sample (release: jax.random.permutation of the four ops).
    order = torch.rand(batch, len(_JITTER_OPS), generator=generator, device=dev).argsort(dim=1)

    def between(col: int, lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * u[:, col]

    values = torch.stack(
        [
            between(_U_BRIGHT, -cfg.brightness, cfg.brightness),
            between(_U_CONTRAST, 1 - cfg.contrast, 1 + cfg.contrast),
            between(_U_SAT, 1 - cfg.saturation, 1 + cfg.saturation),
            between(_U_HUE, -cfg.hue, cfg.hue),
        ],
        dim=1,
    )
    return {
        "jitter": u[:, _U_JITTER] < cfg.color_jitter_prob,
        "values": values,
        "order": order,
        "gray": u[:, _U_GRAY] < cfg.grayscale_prob,
        "blur": u[:, _U_BLUR] < cfg.blur_prob[view],
        "sigma": between(_U_SIGMA, cfg.blur_sigma[0], cfg.blur_sigma[1]),
        "solarize": u[:, _U_SOLAR] < cfg.solarize_prob[view],
    }


def _apply_params(images: Tensor, p: dict[str, Tensor]) -> Tensor:
    """Apply drawn parameters to a batch; vectorised over samples (loops over ops and steps)."""
    p = {k: v.to(images.device) for k, v in p.items()}
    values = p["values"].to(images.dtype)
    x = images.clone()  # our own copy, updated in place below (saves a batch copy per op)
    # At each of the four steps every op runs on the samples that put it at that step.
    for step in range(len(_JITTER_OPS)):
        for op_index, op in enumerate(_JITTER_OPS):
            chosen = p["jitter"] & (p["order"][:, step] == op_index)
            _apply_where_(x, chosen, op, values[:, op_index])
    _apply_where_(x, p["gray"], to_grayscale)
    radius = blur_radius(images.shape[2])
    _apply_where_(x, p["blur"], lambda a, s: gaussian_blur(a, s, radius=radius), p["sigma"])
    _apply_where_(x, p["solarize"], solarize)
    return x.clamp_(0.0, 1.0)


def photometric(images: Tensor, *, view: int, cfg: Any, generator: torch.Generator) -> Tensor:
    """Batched photometric augmentation of one view, image only (release ``postprocess``).

    Args:
        images: float ``(B, 3, H, W)`` in [0, 1], on any device. Not modified.
        view: 0 or 1, selects ``cfg.blur_prob[view]`` and ``cfg.solarize_prob[view]``.
        cfg: an :class:`detcon.config.AugmentConfig` (uses ``color_jitter_prob``,
            ``brightness``, ``contrast``, ``saturation``, ``hue``, ``grayscale_prob``,
            ``blur_prob``, ``blur_sigma``, ``solarize_prob``).
        generator: source of every random number, drawn on the generator's device (a CPU
            generator works for CUDA images). The same generator state gives the same output.

    Returns:
        float ``(B, 3, H, W)`` in [0, 1], same dtype and device as ``images``.

    Per sample: with ``color_jitter_prob``, brightness ``+U[-b, b]``, contrast ``U[1-c, 1+c]``,
    saturation ``U[1-s, 1+s]`` and hue ``+U[-h, h]`` in a random order, clipping after each;
    grayscale with ``grayscale_prob``; blur with ``blur_prob[view]`` and sigma ``U[blur_sigma]``;
    solarize with ``solarize_prob[view]``; final clip.
    """
    if (
        not isinstance(images, Tensor)
        or not images.is_floating_point()
        or images.ndim != 4
        or images.shape[1] != 3
    ):
        got = (
            f"{images.dtype} {tuple(images.shape)}"
            if isinstance(images, Tensor)
            else type(images).__name__
        )
        raise ValueError(
            f"images: expected a float tensor of shape (B, 3, H, W) in [0, 1], got {got}"
        )
    if isinstance(view, bool) or view not in (0, 1):
        raise ValueError(f"view={view!r}: expected 0 (first view) or 1 (second view)")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    params = _draw_params(images.shape[0], view=view, cfg=cfg, generator=generator)
    return _apply_params(images, params)


def normalize(images: Tensor) -> Tensor:
    """ImageNet mean/std normalisation of float ``(..., 3, H, W)`` images in [0, 1]."""
    if (
        not isinstance(images, Tensor)
        or not images.is_floating_point()
        or images.ndim < 3
        or images.shape[-3] != 3
    ):
        got = (
            f"{images.dtype} {tuple(images.shape)}"
            if isinstance(images, Tensor)
            else type(images).__name__
        )
        raise ValueError(f"images: expected a float tensor of shape (..., 3, H, W), got {got}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std
