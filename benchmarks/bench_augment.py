"""Input-pipeline throughput: DetCon's two-view image+mask augmentation vs an image-only BYOL one.

Performance issue, part (3). What a DataLoader worker does per sample is timed on one thread
(``torch.set_num_threads(1)``, one process), so the figures are *per core*:

* **ours**: ``PretrainDataset.__getitem__`` (what ``detcon.train`` runs in its workers): per-sample
  seeding, both views' random resized crop + flip applied to the image *and* its masks (an FH-like
  int id map, or a 16-mask MCG-like bool stack), optionally with JPEG decoding (the real
  ``ImageFolderDataset`` reader). Photometrics are not done per sample: ``detcon.train`` applies
  them batched on the training device (:func:`detcon.augment.photometric`).
* **BYOL tv2**: the usual image-only BYOL pipeline with ``torchvision.transforms.v2`` (as lightly or
  solo-learn build it): PIL decode -> ``ToImage`` -> per view ``RandomResizedCrop`` (bicubic, as
  BYOL/solo-learn; bilinear, tv2's default, also shown) + flip, and for the full pipeline colour
  jitter / grayscale / blur / solarize / ``ToDtype`` / ``Normalize`` per sample on the CPU.
* **batched photometric**: :func:`detcon.augment.photometric` + :func:`normalize` on a uint8 batch
  of views as ``detcon.train`` runs it (copy to the device, /255, both views), on ``--device``.

All compared cases run interleaved (A, B, C, A, B, C, ... with the order rotated every round) so
that load from other processes hits each alike; figures are medians over rounds, ratios medians of
per-round ratios (both sides measured in the same round). The inputs are synthetic (no download):
smooth random photos at ImageNet-like sizes (short side 256-400 px) saved as JPEG, Voronoi id maps
standing in for FH segmentations, unions of cells for MCG proposals, and the cpu profile's
procedural scenes with their real FH masks.

Run: ``.venv/bin/python benchmarks/bench_augment.py [--quick] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from _report import format_table, machine_header, verdict
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from detcon.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TwoViewGeometry,
    blur_radius,
    normalize,
    photometric,
    release_crop_window,
)
from detcon.config import AugmentConfig, PretrainConfig, load_pretrain_config
from detcon.data.pretrain import PretrainDataset, build_base_dataset, collate_views
from detcon.data.readers import ImageFolderDataset

TARGET_RATIO = 0.8  # ours / BYOL tv2 per-core throughput (issue, part 3)
GPU_TARGETS = (1000, 1500)  # img/s DetCon-B ResNet-50 at 224 px on one H100: required, aim
CORES = 16  # CPU cores of the GPU machine that feed it
# ImageNet-like (height, width): short side 256-400 px, long side up to 500.
PAPER_SIZES = [(375, 500), (500, 375), (333, 500), (256, 341), (400, 400), (300, 400), (281, 500)]
MCG_MASKS = 16  # the MCG source keeps the top 16 proposals (paper)


# ------------------------------------------------------------------------------- timing


@dataclass
class Case:
    """One thing to time: ``fn(i)`` does ``units`` samples' work on input ``i``; ``calls`` (if
    set) overrides the calls per round, for cases slow enough that one or two suffice."""

    name: str
    fn: Callable[[int], object]
    units: int = 1
    calls: int | None = None


class Timings(dict):
    """Case name -> seconds per unit, one value per round (rounds aligned across cases)."""

    def median(self, name: str) -> float:
        return statistics.median(self[name])

    def add_sum(self, name: str, parts: Sequence[str]) -> None:
        """A derived case whose per-round time is the sum of ``parts`` in that round."""
        self[name] = [sum(t) for t in zip(*(self[p] for p in parts))]

    def ratio(self, ours: str, base: str) -> float:
        """Median over rounds of ours' throughput over base's, both measured in the round."""
        return statistics.median(b / o for o, b in zip(self[ours], self[base]))


def measure(cases: Sequence[Case], rounds: int, calls: int) -> Timings:
    """Seconds per unit of each case per round, the cases interleaved round by round.

    Every round runs ``calls`` calls of each case back to back (inputs ``r * calls + j``); the
    case order is rotated every round so that no case always follows the same neighbour.
    """
    calls_of = {c.name: min(calls, c.calls or calls) for c in cases}
    for case in cases:  # warm-up: allocator, lazy imports, first-call dispatch
        for i in range(2):
            case.fn(i)
    per_unit: dict[str, list[float]] = {c.name: [] for c in cases}
    for r in range(rounds):
        k = r % len(cases)
        for case in list(cases[k:]) + list(cases[:k]):
            m = calls_of[case.name]
            t0 = time.perf_counter()
            for j in range(m):
                case.fn(r * m + j)
            per_unit[case.name].append((time.perf_counter() - t0) / (m * case.units))
    return Timings(per_unit)


# ------------------------------------------------------------------------------- inputs


def photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random colour field with mild texture: uint8 ``(H, W, 3)``, JPEG-compressible
    about like a photo (noise would decode slower, flat colour faster)."""
    coarse = torch.from_numpy(rng.random((1, 3, 6, 8), dtype=np.float32))
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    field += 0.06 * torch.from_numpy(rng.standard_normal((3, height, width), dtype=np.float32))
    return (field.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def voronoi_ids(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """int32 ``(H, W)`` partition into ``cells`` Voronoi cells (stands in for FH segments)."""
    ys, xs = rng.random(cells) * height, rng.random(cells) * width
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    best = np.zeros((height, width), np.int32)
    dist = np.full((height, width), np.inf, np.float32)
    for k in range(cells):
        d = (yy - ys[k]) ** 2 + (xx - xs[k]) ** 2
        closer = d < dist
        best[closer], dist[closer] = k, d[closer]
    return best


def proposals(rng: np.random.Generator, ids: np.ndarray, count: int) -> np.ndarray:
    """bool ``(count, H, W)`` overlapping masks, each a union of 1-4 cells (MCG-like)."""
    cells = int(ids.max()) + 1
    return np.stack(
        [
            np.isin(ids, rng.choice(cells, size=rng.integers(1, 5), replace=False))
            for _ in range(count)
        ]
    )


class _InMemory(Dataset):
    """Base dataset over already decoded samples (what a reader returns, minus the decoding)."""

    def __init__(self, samples: Sequence[Mapping[str, Any]]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Mapping[str, Any]:
        return self.samples[index]


def pretrain_dataset(
    base: Dataset, cfg: PretrainConfig, masks: Sequence[np.ndarray] | None
) -> PretrainDataset:
    """A ``PretrainDataset`` whose per-process mask cache already holds ``masks`` (the state
    after its first epoch, or a mask store's reads); ``None`` computes them once now."""
    ds = PretrainDataset(base, cfg, cache_bytes=sys.maxsize)  # all stay: augmentation is timed
    for i in range(len(base)):
        if masks is None:
            ds.masks_for(i, base[i])
        else:
            ds.cache.put(i, masks[i])
    return ds


# ------------------------------------------------------------------------------- pipelines


def byol_geometry(
    size: int, scale: Sequence[float], interpolation: InterpolationMode
) -> v2.Compose:
    """BYOL's per-view geometry with tv2: random resized crop + horizontal flip (image only)."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                size, scale=tuple(scale), interpolation=interpolation, antialias=True
            ),
            v2.RandomHorizontalFlip(),
        ]
    )


def byol_view(size: int, aug: AugmentConfig, view: int) -> v2.Compose:
    """BYOL's full per-view CPU pipeline with tv2 (view 0: blur always; view 1: blur 0.1,
    solarize 0.2), the release's probabilities, ending in a normalised float tensor."""
    return v2.Compose(
        [
            byol_geometry(size, aug.crop_scale, InterpolationMode.BICUBIC),
            v2.RandomApply(
                [v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)],
                p=aug.color_jitter_prob,
            ),
            v2.RandomGrayscale(p=aug.grayscale_prob),
            v2.RandomApply(
                [v2.GaussianBlur(2 * blur_radius(size) + 1, sigma=tuple(aug.blur_sigma))],
                p=aug.blur_prob[view],
            ),
            v2.RandomSolarize(threshold=128, p=aug.solarize_prob[view]),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class Tv2Reference:
    """The geometry as it was before the optimisation: tv2 ``Compose`` dispatch on ``tv_tensors``
    (masks cropped and resized nearest-exact), with the release's crop window
    (:func:`release_crop_window`, drawn in the same order). Kept here to time the speed-up and
    to check on every benchmark input that :class:`TwoViewGeometry` gives identical views."""

    def __init__(self, size: int, scale: Sequence[float]) -> None:
        class _Crop(v2.RandomResizedCrop):
            def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
                height, width = flat_inputs[0].shape[-2:]
                top, left, h, w = release_crop_window(height, width, self.scale, self.ratio)
                return {"top": top, "left": left, "height": h, "width": w}

            def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
                if isinstance(inpt, tv_tensors.Mask):
                    box = (params["top"], params["left"], params["height"], params["width"])
                    return TF.resize(
                        TF.crop(inpt, *box), list(self.size), InterpolationMode.NEAREST_EXACT
                    )
                return super().transform(inpt, params)

        crop = _Crop(
            size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC, antialias=True
        )
        self._t = v2.Compose([crop, v2.RandomHorizontalFlip()])

    def __call__(
        self, image: torch.Tensor, masks: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        dtype = masks.dtype
        if dtype == torch.bool or int(masks.max()) < 256:
            masks = masks.to(torch.uint8)
        out = []
        for _ in range(2):
            img, msk = self._t(tv_tensors.Image(image), tv_tensors.Mask(masks))
            out.append((img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor).to(dtype)))
        return out


def identical_to_reference(
    images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], size: int, scale: Sequence[float]
) -> bool:
    """Whether :class:`TwoViewGeometry` and :class:`Tv2Reference` give the same views and masks
    for every input under the same seeds (several seeds each)."""
    ours, ref = TwoViewGeometry(size, crop_scale=scale), Tv2Reference(size, scale)
    for i, (image, m) in enumerate(zip(images, masks)):
        for seed in range(4):
            torch.manual_seed(1000 * i + seed)
            a = ours(image, m)
            torch.manual_seed(1000 * i + seed)
            b = ref(image, m)
            for (ia, ma), (ib, mb) in zip(a, b):
                if not (torch.equal(ia, ib) and torch.equal(ma, mb) and ma.dtype == mb.dtype):
                    return False
    return True


def photometric_pair(
    views: torch.Tensor, aug: AugmentConfig, device: torch.device, seed: int
) -> torch.Tensor:
    """Both views' device-side augmentation of a uint8 batch, as ``detcon.train._to_input`` does
    it (copy to the device, /255, photometric with a device generator, normalise)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = None
    for view in (0, 1):
        x = views.to(device, non_blocking=True).float().div_(255.0)
        out = normalize(photometric(x, view=view, cfg=aug, generator=gen))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out


# ------------------------------------------------------------------------------- report


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    return format_table(rows, header, numbers_right=True)


def throughput_rows(t: Timings, labels: Mapping[str, str]) -> list[list[str]]:
    return [[labels[k], f"{t.median(k) * 1e3:.2f}", f"{1 / t.median(k):.0f}"] for k in labels]


def ratio_rows(t: Timings, pairs: Sequence[tuple[str, str, str]]) -> list[list[str]]:
    rows = []
    for what, ours, base in pairs:
        ratio = t.ratio(ours, base)
        rows.append(
            [
                what,
                f"{1 / t.median(ours):.0f}",
                f"{1 / t.median(base):.0f}",
                f"{ratio:.2f}x",
                f">= {TARGET_RATIO}x",
                verdict(ratio, TARGET_RATIO),
            ]
        )
    return rows


# ------------------------------------------------------------------------------- sections


def print_tables(
    sec: Timings, labels: Mapping[str, str], pairs: Sequence[tuple[str, str, str]]
) -> None:
    """A section's two tables: per-sample times of the cases, then the ours/BYOL ratios."""
    print(
        table(
            throughput_rows(sec, labels),
            ["per-sample work (two views), 1 thread", "median ms", "samples/s/core"],
        )
    )
    print()
    print(
        table(
            ratio_rows(sec, pairs),
            ["comparison (ours/BYOL samples/s)", "ours", "BYOL", "ratio", "target", ""],
        )
    )


def paper_section(args: argparse.Namespace, tmp: Path) -> tuple[Timings, bool]:
    """Paper-size tables; returns seconds per sample by case and whether the views were
    identical to the tv2 reference."""
    rng = np.random.default_rng(0)
    sizes = PAPER_SIZES[:3] if args.quick else PAPER_SIZES
    cfg_fh = load_pretrain_config({"masks": {"source": "fh"}}, profile="paper")
    cfg_mcg = load_pretrain_config({"masks": {"source": "mcg"}}, profile="paper")
    aug = cfg_fh.augment
    root = tmp / "imagenet_like"
    (root / "c0").mkdir(parents=True)
    ids, stacks = [], []
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(photo_like(rng, h, w)).save(root / "c0" / f"{i:03d}.JPEG", quality=90)
        ids.append(voronoi_ids(rng, h, w, int(rng.integers(24, 64))))
        stacks.append(proposals(rng, ids[-1], MCG_MASKS))
    jpeg = ImageFolderDataset(root)  # the reader the paper profile trains from
    files = [root / key for key, _ in jpeg.samples]
    decoded = [jpeg[i] for i in range(len(jpeg))]  # read_image: contiguous (3, H, W) uint8
    pil_views = [TF.to_image(Image.open(f).convert("RGB")) for f in files]  # what ToImage gives
    pil_plain = [v.as_subclass(torch.Tensor) for v in pil_views]
    n = len(files)

    ours = pretrain_dataset(_InMemory(decoded), cfg_fh, ids)
    ours_mcg = pretrain_dataset(_InMemory(decoded), cfg_mcg, stacks)
    ours_jpeg = pretrain_dataset(jpeg, cfg_fh, ids)
    ours_jpeg_mcg = pretrain_dataset(jpeg, cfg_mcg, stacks)
    geometry = TwoViewGeometry(aug.crop_size, crop_scale=aug.crop_scale)
    reference = Tv2Reference(aug.crop_size, aug.crop_scale)
    ref_masks = [torch.from_numpy(m).long() for m in ids]
    bicubic = byol_geometry(aug.crop_size, aug.crop_scale, InterpolationMode.BICUBIC)
    bilinear = byol_geometry(aug.crop_size, aug.crop_scale, InterpolationMode.BILINEAR)
    full = [byol_view(aug.crop_size, aug, v) for v in (0, 1)]

    def byol_decoded(t0: Callable, t1: Callable) -> Callable[[int], object]:
        return lambda i: (t0(pil_views[i % n]), t1(pil_views[i % n]))

    def byol_decode(t0: Callable, t1: Callable) -> Callable[[int], object]:
        def run(i: int) -> object:
            image = TF.to_image(Image.open(files[i % n]).convert("RGB"))  # pil_loader + ToImage
            return t0(image), t1(image)

        return run

    batch = args.cpu_batch
    views = collate_views([ours[(0, i % n)] for i in range(batch)])["view1"]
    device = torch.device("cpu")
    cases = [
        Case("A", lambda i: ours[(i, i % n)]),
        Case("A_mcg", lambda i: ours_mcg[(i, i % n)]),
        Case("A_geo", lambda i: geometry(decoded[i % n]["image"], ref_masks[i % n])),
        Case("A_before", lambda i: reference(decoded[i % n]["image"], ref_masks[i % n])),
        Case("A_cl", lambda i: geometry(pil_plain[i % n], ref_masks[i % n])),
        Case("B", byol_decoded(bicubic, bicubic)),
        Case("B_bilinear", byol_decoded(bilinear, bilinear)),
        Case("C", lambda i: ours_jpeg[(i, i % n)]),
        Case("C_mcg", lambda i: ours_jpeg_mcg[(i, i % n)]),
        Case("D", byol_decode(bicubic, bicubic)),
        Case("E", byol_decode(*full), calls=2),
        Case("F", lambda i: photometric_pair(views, aug, device, i), units=batch, calls=1),
    ]
    sec = measure(cases, args.rounds, args.calls)
    same = identical_to_reference(
        [d["image"] for d in decoded[:3]],
        [*ref_masks[:2], torch.from_numpy(stacks[2])],
        aug.crop_size,
        aug.crop_scale,
    )
    sec.add_sum("C+F", ["C", "F"])

    print(
        f"\n== paper profile sizes: {aug.crop_size} px views from {n} synthetic photos "
        f"{min(min(s) for s in sizes)}-{max(max(s) for s in sizes)} px (JPEG q90); FH-like id "
        f"maps of 24-63 segments, {MCG_MASKS}-mask MCG-like stacks; crop scale {aug.crop_scale}"
    )
    labels = {
        "A": "A  ours loader item, FH id map (pre-decoded)",
        "A_mcg": f"A' ours loader item, {MCG_MASKS} MCG masks (pre-decoded)",
        "A_geo": "A1 ours TwoViewGeometry alone, FH (no loader seeding)",
        "A_before": "A0 A1 before this change (tv2 Compose dispatch)",
        "A_cl": "A2 A1 on B's input layout (channels-last view, as ToImage)",
        "B": "B  BYOL tv2 geometry, bicubic (pre-decoded)",
        "B_bilinear": "B' BYOL tv2 geometry, bilinear (pre-decoded)",
        "C": "C  ours JPEG decode + loader item, FH",
        "C_mcg": f"C' ours JPEG decode + loader item, {MCG_MASKS} MCG masks",
        "D": "D  BYOL tv2 decode + geometry (bicubic)",
        "E": "E  BYOL tv2 decode + full per-sample CPU pipeline",
        "F": f"F  ours batched photometric on CPU, per sample (B={batch})",
        "C+F": "C+F ours decode + geometry + photometric all on CPU",
    }
    pairs = [
        ("geometry only, FH: A vs B", "A", "B"),
        ("geometry only, FH vs bilinear: A vs B'", "A", "B_bilinear"),
        ("geometry only, FH, same input layout as B: A2 vs B", "A_cl", "B"),
        (f"geometry only, {MCG_MASKS} MCG masks: A' vs B", "A_mcg", "B"),
        ("decode + geometry: C vs D", "C", "D"),
        ("full per-sample CPU (ours: photometric on device): C vs E", "C", "E"),
        ("full, everything on CPU: C+F vs E", "C+F", "E"),
    ]
    print_tables(sec, labels, pairs)
    print(
        f"speed-up of TwoViewGeometry over its tv2-dispatch version (A0 / A1): "
        f"{sec.ratio('A_geo', 'A_before'):.2f}x; identical views and masks to the tv2 "
        f"reference on the inputs checked: {'yes' if same else 'NO'}"
    )
    return sec, same


def cpu_profile_section(args: argparse.Namespace) -> None:
    cfg = load_pretrain_config(profile="cpu")
    aug = cfg.augment
    n = 4 if args.quick else 16
    scenes = build_base_dataset(cfg)  # the profile's scenes, as its loader makes them
    base = _InMemory([scenes[i] for i in range(n)])
    ours = pretrain_dataset(base, cfg, None)  # the real FH masks of the scenes, computed once
    # the loader before synthetic scenes were kept: each item generates its scene again
    regenerated = PretrainDataset(scenes, cfg, cache_bytes=sys.maxsize, scene_cache_bytes=0)
    for i in range(n):
        regenerated.cache.put(i, ours.cache.get(i))
    images = [base[i]["image"] for i in range(n)]
    bicubic = byol_geometry(aug.crop_size, aug.crop_scale, InterpolationMode.BICUBIC)
    full = [byol_view(aug.crop_size, aug, v) for v in (0, 1)]
    batch = cfg.optim.batch_size
    views = collate_views([ours[(0, i % n)] for i in range(batch)])["view1"]
    cases = [
        Case("A", lambda i: ours[(i, i % n)]),
        Case("G", lambda i: regenerated[(i, i % n)]),
        Case("B", lambda i: (bicubic(images[i % n]), bicubic(images[i % n]))),
        Case("E", lambda i: (full[0](images[i % n]), full[1](images[i % n])), calls=4),
        Case(
            "F",
            lambda i: photometric_pair(views, aug, torch.device("cpu"), i),
            units=batch,
            calls=1,
        ),
    ]
    sec = measure(cases, args.rounds, args.calls * 3)
    sec.add_sum("A+F", ["A", "F"])
    print(
        f"\n== cpu profile sizes: {aug.crop_size} px views from {cfg.data.scene_size} px "
        f"synthetic scenes with their FH masks (no decoding); crop scale {aug.crop_scale}"
    )
    labels = {
        "A": "A  ours loader item, FH id map (scene kept, as from the second epoch)",
        "G": "G  same, the scene generated again (no scene cache)",
        "B": "B  BYOL tv2 geometry, bicubic",
        "E": "E  BYOL tv2 full per-sample CPU pipeline",
        "F": f"F  ours batched photometric on CPU, per sample (B={batch})",
        "A+F": "A+F ours geometry + photometric all on CPU",
    }
    pairs = [
        ("geometry only: A vs B", "A", "B"),
        ("full per-sample CPU (ours: photometric on device): A vs E", "A", "E"),
        ("full, everything on CPU: A+F vs E", "A+F", "E"),
    ]
    print_tables(sec, labels, pairs)
    print(
        "speed-up of the loader item from keeping the generated scenes (G / A): "
        f"{sec.ratio('A', 'G'):.2f}x"
    )


def photometric_section(args: argparse.Namespace) -> dict[int, float]:
    """Seconds per sample (both views) of the batched photometric on ``args.device``."""
    device = torch.device(args.device)
    aug = AugmentConfig()
    g = torch.Generator().manual_seed(0)
    size = aug.crop_size
    cases = []
    for b in args.batches:
        views = torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g)
        if device.type == "cuda":
            views = views.pin_memory()
        cases.append(Case(str(b), lambda i, v=views: photometric_pair(v, aug, device, i), units=b))
    rounds = args.photo_rounds if device.type == "cpu" else max(args.rounds, 20)
    sec = measure(cases, rounds, 1)
    print(
        f"\n== batched photometric (jitter, grayscale, blur, solarize, normalise; both views; "
        f"incl. host->device copy) at {size} px on {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    rows = [
        [
            f"B={b}",
            f"{sec.median(str(b)) * b * 1e3:.1f}",
            f"{1 / sec.median(str(b)):.0f}",
            f"{2 / sec.median(str(b)):.0f}",
        ]
        for b in args.batches
    ]
    print(table(rows, ["batch", "median ms/batch", "samples/s", "view-images/s"]))
    return {b: sec.median(str(b)) for b in args.batches}


def extrapolation(paper: Timings, photo: Mapping[int, float], device: str) -> None:
    print(
        f"\n== can {CORES} cores feed one GPU at {GPU_TARGETS[0]:,} (aim {GPU_TARGETS[1]:,}) "
        "samples/s? (per-core figure x 16; ignores DataLoader IPC/collate and the training "
        "process's own CPU use)"
    )
    rows = []
    for key, what in [
        ("C", "ours decode + geometry, FH (photometric on GPU)"),
        ("C_mcg", f"ours decode + geometry, {MCG_MASKS} MCG masks"),
        ("A", "ours geometry only, FH (pre-decoded / mask store)"),
        ("C+F", "ours with photometric on the CPU too"),
    ]:
        total = CORES / paper.median(key)
        rows.append(
            [
                what,
                f"{1 / paper.median(key):.0f}",
                f"{total:,.0f}",
                verdict(total, GPU_TARGETS[0]),
                verdict(total, GPU_TARGETS[1]),
            ]
        )
    for b, s in photo.items():
        what = f"batched photometric on {device}, B={b} (one device, not x16)"
        rows.append(
            [
                what,
                "",
                f"{1 / s:,.0f}",
                verdict(1 / s, GPU_TARGETS[0]),
                verdict(1 / s, GPU_TARGETS[1]),
            ]
        )
    print(
        table(
            rows,
            [
                "data path",
                "samples/s/core",
                f"x{CORES} cores",
                f">= {GPU_TARGETS[0]:,}",
                f">= {GPU_TARGETS[1]:,}",
            ],
        )
    )
    if device == "cpu":
        print("(photometric rows ran on the CPU here; --device cuda measures them on the GPU)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run every section and print its tables; exit status 1 if the optimised geometry ever
    differs from the tv2 reference."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (seconds)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="device of the batched photometric "
        "(cpu or cuda); the per-sample loader work always runs on the CPU",
    )
    args = parser.parse_args(argv)
    if args.device not in ("cpu", "cuda") or (
        args.device == "cuda" and not torch.cuda.is_available()
    ):
        parser.error(f"--device {args.device!r}: expected 'cpu', or 'cuda' with a GPU present")
    torch.set_num_threads(1)
    args.rounds, args.calls, args.photo_rounds = (3, 1, 2) if args.quick else (25, 4, 5)
    # photometric section (--device); 256 only on a GPU (one step's share of the batch there)
    args.batches = (8,) if args.quick else (64, 128) + ((256,) if args.device == "cuda" else ())
    args.cpu_batch = 8 if args.quick else 32  # photometric on the CPU within the loader tables
    title = "DetCon input-pipeline benchmark (benchmarks/bench_augment.py"
    print(machine_header(title + (" --quick" if args.quick else "") + ")"))
    print(
        f"torchvision {torchvision.__version__}, {torch.get_num_threads()} intra-op thread; "
        f"medians over {args.rounds} interleaved rounds"
    )
    with tempfile.TemporaryDirectory(prefix="bench_augment_") as tmp:
        paper, same = paper_section(args, Path(tmp))
    cpu_profile_section(args)
    photo = photometric_section(args)
    extrapolation(paper, photo, args.device)
    sys.stdout.flush()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
