"""Two-view augmentation: joint image+mask geometry per sample, batched photometrics (DESIGN §5.1).

The official release (google-deepmind/detcon) splits augmentation in two and so do we:

* **Geometry** runs per sample in the data loader (release: ``utils/tf_image_ops.py``
  ``preprocess_image``, called once per view in ``datasets/dataset_adapter.py``): a random resized
  crop (area in [0.08, 1], aspect in [3/4, 4/3]) and a horizontal flip with p=0.5, applied to the
  image *and* its masks with the same parameters. :class:`TwoViewGeometry` does it with
  ``torchvision.transforms.v2`` on ``tv_tensors.Image`` / ``tv_tensors.Mask``, so every mask follows
  the image; the image is resampled bicubically, the masks by nearest neighbour.
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

1. *Crop sampling.* The release draws one (area, log-aspect) pair and clamps width and height to
   the image separately (``get_random_crop_window``), which distorts the aspect ratio of large
   crops. We use torchvision's ``RandomResizedCrop`` sampler: up to 10 draws until the crop fits,
   then a centre crop with the aspect clamped to the range. The two distributions differ only for
   crops that would not fit the image (large areas, elongated images). Reason: the standard,
   well-tested PyTorch sampler that ``tv_tensors`` dispatch is built around.
2. *Image resampling.* The release uses ``tf.image.resize`` bicubic (Keys cubic a=-0.5, no
   antialiasing). We use torch bicubic (a=-0.75) *with* antialiasing, which avoids aliasing when a
   large crop is shrunk (e.g. a 400 px crop to 224 px). Output stays uint8 (rounded and clamped, as
   the release clamps to [0, 1] after resizing).
3. *Mask resampling.* torchvision resizes ``tv_tensors.Mask`` with legacy ``nearest``
   (``src = floor(dst * scale)``), which shifts masks up to about half a source pixel towards the
   top-left relative to the bicubic image (half-pixel centres). We resize masks with
   ``nearest-exact`` (``src = floor((dst + 0.5) * scale)``), the half-pixel-centre rule that
   ``tf.image.resize(..., NEAREST_NEIGHBOR)`` in TF2 also uses, so masks stay aligned with the
   image. The release crops then flips then resizes; we crop, resize, then flip (equivalent).
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
   DESIGN §5.1 says. Whether to call it is the caller's decision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
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
# Ids go through float32 inside torchvision's mask resize; above 2**24 they would be rounded.
_MAX_MASK_ID = 2**24


# --------------------------------------------------------------------------- geometry


class _JointResizedCrop(v2.RandomResizedCrop):
    """``RandomResizedCrop`` whose masks use ``nearest-exact`` (deviation 3 in the docstring).

    torchvision's ``resized_crop`` kernel for ``tv_tensors.Mask`` ignores ``interpolation`` and
    uses legacy ``nearest``, so masks are cropped and then resized here with the half-pixel rule.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            cropped = TF.crop(inpt, params["top"], params["left"], params["height"],
                              params["width"])
            return TF.resize(cropped, list(self.size),
                             interpolation=InterpolationMode.NEAREST_EXACT)
        return super().transform(inpt, params)


def _check_pair(name: str, value: Sequence[float], lo: float, hi: float) -> tuple[float, float]:
    if len(value) != 2:
        raise ValueError(f"{name}={value!r}: expected two numbers (min, max)")
    a, b = float(value[0]), float(value[1])
    if not (lo < a <= b <= hi):
        raise ValueError(f"{name}={value!r}: expected {lo} < min <= max <= {hi}")
    return a, b


class TwoViewGeometry:
    """Two random resized crops + horizontal flips of one image and its masks (DESIGN §5.1).

    Args:
        crop_size: side ``S`` of each square output view in pixels (paper: 224).
        crop_scale: range of the crop area as a fraction of the image area (release: 0.08-1).
        crop_ratio: range of the crop aspect ratio width/height (release: 3/4-4/3).
        flip_prob: probability of a horizontal flip of each view (release: 0.5).
        single_view: if True both views share *one* crop and flip (paper §5 "single-view
            positives" ablation, DESIGN §5.7); photometrics are still drawn per view.

    Randomness comes from torch's global RNG (torchvision.transforms.v2 draws from it): seed it
    per sample (``torch.manual_seed``) in the data loader to make a sample reproducible.
    """

    def __init__(self, crop_size: int, crop_scale: Sequence[float] = (0.08, 1.0),
                 crop_ratio: Sequence[float] = (3 / 4, 4 / 3), flip_prob: float = 0.5,
                 single_view: bool = False) -> None:
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
        # Image: bicubic with antialiasing (deviation 2); masks: nearest-exact (deviation 3).
        self._transform = v2.Compose([
            _JointResizedCrop(crop_size, scale=scale, ratio=ratio,
                              interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(p=self.flip_prob),
        ])

    @classmethod
    def from_config(cls, cfg: Any) -> TwoViewGeometry:
        """Build from an :class:`detcon.config.AugmentConfig` (its geometric fields)."""
        return cls(cfg.crop_size, cfg.crop_scale, cfg.crop_ratio, cfg.flip_prob, cfg.single_view)

    def __repr__(self) -> str:
        return (f"TwoViewGeometry(crop_size={self.crop_size}, crop_scale={self.crop_scale}, "
                f"crop_ratio={self.crop_ratio}, flip_prob={self.flip_prob}, "
                f"single_view={self.single_view})")

    def _one_view(self, image: Tensor, masks: Tensor, dtype: torch.dtype
                  ) -> tuple[Tensor, Tensor]:
        img, msk = self._transform(tv_tensors.Image(image), tv_tensors.Mask(masks))
        return img.as_subclass(Tensor), msk.as_subclass(Tensor).to(dtype)

    def __call__(self, image: Tensor, masks: Tensor
                 ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Make two views of ``image`` with their masks.

        Args:
            image: uint8 ``(3, H, W)``.
            masks: either an int64 id map ``(H, W)`` (a partition; ids in ``[0, 2**24)``) or a
                bool stack ``(M, H, W)`` of possibly overlapping binary masks (``M`` may be 0).

        Returns:
            ``((img1, masks1), (img2, masks2))``: ``img`` uint8 ``(3, S, S)``; masks of the same
            kind as given, int64 ``(S, S)`` or bool ``(M, S, S)``.
        """
        max_id = _check_geometry_inputs(image, masks)
        dtype = masks.dtype
        # torchvision resizes uint8 masks natively and casts anything else to float32 and back;
        # carrying bool stacks and small id maps as uint8 skips that copy (same result, ~10-15%
        # faster measured on one thread).
        if dtype == torch.bool or max_id < 256:
            masks = masks.to(torch.uint8)
        first = self._one_view(image, masks, dtype)
        if self.single_view:
            # One crop and flip shared by both branches (DESIGN §5.7).
            second = (first[0].clone(), first[1].clone())
        else:
            second = self._one_view(image, masks, dtype)
        return first, second


def _check_geometry_inputs(image: Any, masks: Any) -> int:
    """Raise ValueError on bad inputs; return the largest id of an id map (-1 for a bool stack)."""
    if not isinstance(image, Tensor):
        raise ValueError(f"image: expected a torch.Tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected a uint8 tensor of shape (3, H, W), got "
                         f"{image.dtype} {tuple(image.shape)}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"image: expected a non-empty (3, H, W) image, got {tuple(image.shape)}")
    if not isinstance(masks, Tensor):
        raise ValueError(f"masks: expected a torch.Tensor, got {type(masks).__name__}")
    size = tuple(image.shape[1:])
    if masks.dtype == torch.int64:
        if masks.ndim != 2:
            raise ValueError(f"masks: an int64 id map must have shape (H, W), got "
                             f"{tuple(masks.shape)}")
        if masks.numel() == 0:
            raise ValueError(f"masks: empty id map {tuple(masks.shape)}")
        lo, hi = torch.aminmax(masks)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= _MAX_MASK_ID:
            raise ValueError(f"masks: id map values must lie in [0, {_MAX_MASK_ID}), got "
                             f"min {lo}, max {hi}")
    elif masks.dtype == torch.bool:
        if masks.ndim != 3:
            raise ValueError(f"masks: a bool mask stack must have shape (M, H, W), got "
                             f"{tuple(masks.shape)}")
    else:
        raise ValueError(f"masks: expected an int64 id map (H, W) or a bool stack (M, H, W), "
                         f"got dtype {masks.dtype} shape {tuple(masks.shape)}")
    if tuple(masks.shape[-2:]) != size:
        raise ValueError(f"masks: spatial size {tuple(masks.shape[-2:])} does not match the "
                         f"image's {size}")
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
    h6 = torch.where(v == r, (g - b) * inv,
                     torch.where(v == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
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


def _draw_params(batch: int, *, view: int, cfg: Any, generator: torch.Generator
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

    values = torch.stack([
        between(_U_BRIGHT, -cfg.brightness, cfg.brightness),
        between(_U_CONTRAST, 1 - cfg.contrast, 1 + cfg.contrast),
        between(_U_SAT, 1 - cfg.saturation, 1 + cfg.saturation),
        between(_U_HUE, -cfg.hue, cfg.hue),
    ], dim=1)
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
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.ndim != 4 \
            or images.shape[1] != 3:
        got = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor)
               else type(images).__name__)
        raise ValueError(f"images: expected a float tensor of shape (B, 3, H, W) in [0, 1], "
                         f"got {got}")
    if isinstance(view, bool) or view not in (0, 1):
        raise ValueError(f"view={view!r}: expected 0 (first view) or 1 (second view)")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    params = _draw_params(images.shape[0], view=view, cfg=cfg, generator=generator)
    return _apply_params(images, params)


def normalize(images: Tensor) -> Tensor:
    """ImageNet mean/std normalisation of float ``(..., 3, H, W)`` images in [0, 1]."""
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.ndim < 3 \
            or images.shape[-3] != 3:
        got = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor)
               else type(images).__name__)
        raise ValueError(f"images: expected a float tensor of shape (..., 3, H, W), got {got}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std
