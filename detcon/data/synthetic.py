"""Procedural multi-object scenes: the cpu profile's embedded default dataset (docs/design.md §6).

Each scene is generated from ``(seed, split, index)`` alone, with no file to download. It stands in
for COCO (instance masks), VOC / Cityscapes (semantic labels) and NYU-Depth v2 (depth), so every
ablation and downstream task has a cpu-scale analogue.

What makes the scenes a useful test bed for DetCon's mask ablation:

- **Classes are shape + texture, never colour.** Eight object classes, each a shape with its own
  texture family (:data:`CLASS_NAMES`, :data:`CLASS_TEXTURES`); the two colours an object is
  painted with are drawn independently of its class, so a per-object colour statistic carries no
  class information (checked by :func:`scene_statistics`).
- **Small, numerous, occluding objects on clutter.** 5-12 objects per scene, each covering the
  area of a disc of radius 5-20 % of the image side (log-uniform, so many are small: at 96 px the
  median visible object is ~14 x 14 px), placed at random with random rotation, drawn with a
  depth buffer (nearer objects hide farther ones, none is hidden below 30 %), over a low-contrast
  textured background with distractor blobs that are *not* objects (label 0). docs/design.md §6
  records that with 2-4 large objects at 64 px a 4x4 grid was as good as ground-truth masks; here
  a 4x4 grid cell (24 px) straddles several objects, so mask quality (grid < FH < ground truth)
  matters.
- **Depth.** The background is a tilted plane (6.75-10.25 "metres", nearer at the bottom);
  each object is a fronto-parallel layer at one depth in [1.2, 5.7], correlated with its size
  (bigger objects tend to be nearer, as in perspective) but not determined by it.

Determinism: the random stream of a scene is ``np.random.default_rng`` seeded from
``SeedSequence([seed, sha256(split), index])`` (never Python's salted ``hash``), and only
``Generator.random`` is drawn from (NumPy keeps bit generators stable; the algorithms turning bits
into other variates may change between releases). Rendering is elementwise float64 arithmetic
(no BLAS, no float reductions, no array sin/cos whose SIMD implementations differ between CPUs);
the few scalar ``math.cos``/``sin``/``pow`` calls could differ by an ulp between C libraries, which
would move a pixel only if its centre lay within an ulp of an edge. Changing the renderer changes
:data:`GENERATOR_VERSION`, which is part of every cache path.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from detcon.atomic import atomic_write
from detcon.config import identity_dict

__all__ = [
    "CLASS_NAMES",
    "CLASS_TEXTURES",
    "GENERATOR_VERSION",
    "SPLITS",
    "Scene",
    "SceneObject",
    "SceneSpec",
    "SyntheticScenes",
    "generate_scene",
    "object_footprint",
    "scene_rng",
    "scene_statistics",
]

# Bump whenever a change alters any generated pixel: cache directories embed it, and the committed
# checksums in tests/data/test_synthetic.py must be regenerated with it.
GENERATOR_VERSION = 1

SPLITS = ("train", "val", "test")

# Index 0 is background; object class c (1..8) is a shape with its own texture family.
CLASS_NAMES = (
    "background",
    "disc",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "hexagon",
    "crescent",
)
CLASS_TEXTURES = (
    "none",
    "stripes",
    "checker",
    "dots",
    "grid lines",
    "sunburst",
    "blotches",
    "concentric rings",
    "zigzag",
)

_NUM_SHAPES = len(CLASS_NAMES) - 1
_BASE_SIZE = 96  # texture periods, noise cells and noise amplitudes are tuned at 96 px

# Background plane depth: far at the top, near at the bottom, plus a random left-right tilt.
_BG_DEPTH_TOP, _BG_DEPTH_BOTTOM, _BG_TILT = 10.0, 7.0, 0.25
# Object depths lie in [_OBJ_DEPTH_NEAR, _OBJ_DEPTH_NEAR + _OBJ_DEPTH_SPAN] < background minimum.
_OBJ_DEPTH_NEAR, _OBJ_DEPTH_SPAN = 1.2, 4.5


# SceneSpec knobs added after scene caches were named by its digest (SceneSpec.digest). A knob
# that is also a config field (data.scene_*) goes into detcon.grid.DIGEST_NEW_FIELDS as well,
# which keeps the run ids; this list keeps the scene caches' names.
_KNOBS_ADDED_LATER = ("background_color_spread", "classes_per_scene")


@dataclass(frozen=True)
class SceneSpec:
    """Difficulty knobs of the synthetic scenes; the defaults are the cpu profile's scenes.

    Lengths are fractions of the image side, so a spec means the same scene layout at any size.
    Measured at the defaults (96 px, 300 train scenes): 8.5 objects per scene (5-12), 73 % of the
    pixels background and 3.1-3.6 % per object class, median visible object 207 px; average best
    IoU with the ground-truth objects 0.26 for a 4x4 grid and 0.50 for Felzenszwalb
    (scale 1000, sigma 0.8, min_size 64), over 3 seeds x 50 scenes.
    """

    # First n of the 8 shape+texture classes (fewer classes = easier semantic segmentation).
    num_object_classes: int = 8
    # Objects per scene, drawn uniformly in [min, max]. Many and small (docs/design.md §6), so a
    # 4x4 grid cell straddles several objects. A very crowded spec may place fewer than
    # min_objects.
    min_objects: int = 5
    max_objects: int = 12
    # Object radius (of the disc with the same area) as a fraction of the image side, log-uniform.
    radius_range: tuple[float, float] = (0.05, 0.2)
    # An object is only placed if at least this fraction of it stays visible (not hidden by nearer
    # objects or cut by the border), for it and every object already placed: no sliver instances.
    min_visible_fraction: float = 0.3
    # Distractor blobs per scene (irregular untextured shapes labelled background), in [lo, hi].
    distractor_range: tuple[int, int] = (2, 6)
    # Amplitude (in [0, 1] intensity) of the background's smooth noise texture.
    background_contrast: float = 0.15
    # Distance in RGB between an object's two texture colours, uniform in this range.
    texture_contrast: tuple[float, float] = (0.12, 0.3)
    # Minimum RGB distance between an object's base colour and the background's base colour, so
    # objects are separable from the background by colour (like most photographed objects).
    min_object_contrast: float = 0.25
    # Standard deviation of the uniform per-pixel sensor noise, in [0, 1] intensity.
    pixel_noise: float = 0.03
    # Placement tries per object slot before a crowded scene gives up on the slot.
    placement_attempts: int = 6
    # Multiplies the period of the class-defining textures (1: 3.5-8 px at 96 px, scaled with size).
    texture_scale: float = 1.0
    # Amplitude of a class texture (of a random class, per-scene period and angle) laid over the
    # background; 0 = none (the default; nothing is drawn, so the scenes are unchanged).
    background_texture: float = 0.0
    # How far the background's base colour spreads around mid-grey: each channel is
    # 0.5 + spread * (u - 0.5) for the usual draw u in [0.08, 0.92]; 1 = the full range (the
    # default; the scenes are unchanged), 0 = every scene's background mid-grey (objects keep
    # their random colours).
    background_color_spread: float = 1.0
    # How many classes one scene's objects are drawn from: 0 = any of the num_object_classes (the
    # default; the scenes are unchanged); k >= 1 = k classes drawn per scene, so with 1 every
    # object of a scene has the same class (most ImageNet photos show one kind of object).
    classes_per_scene: int = 0

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ValueError(f"SceneSpec.{name}={getattr(self, name)!r}: expected {expected}")

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return (
                isinstance(v, (int, float, np.number))
                and not isinstance(v, bool)
                and (math.isfinite(float(v)))
            )

        def pair(name: str, check: Any, what: str) -> None:
            v = getattr(self, name)
            if (
                not isinstance(v, (tuple, list))
                or len(v) != 2
                or not all(check(x) for x in v)
                or v[0] > v[1]
            ):
                fail(name, f"a pair (lo, hi) of {what} with lo <= hi")

        if not is_int(self.num_object_classes) or not 1 <= self.num_object_classes <= _NUM_SHAPES:
            fail("num_object_classes", f"an integer in [1, {_NUM_SHAPES}]")
        if not is_int(self.min_objects) or self.min_objects < 0:
            fail("min_objects", "an integer >= 0")
        if not is_int(self.max_objects) or not self.min_objects <= self.max_objects <= 255:
            fail("max_objects", f"an integer in [min_objects={self.min_objects}, 255]")
        pair("radius_range", is_num, "numbers in (0, 1]")
        if not 0 < self.radius_range[0] <= self.radius_range[1] <= 1:
            fail("radius_range", "0 < lo <= hi <= 1 (fractions of the image side)")
        if not is_num(self.min_visible_fraction) or not 0 < self.min_visible_fraction <= 1:
            fail("min_visible_fraction", "a number in (0, 1]")
        pair("distractor_range", is_int, "integers >= 0")
        if self.distractor_range[0] < 0:
            fail("distractor_range", "integers >= 0")
        for name in ("background_contrast", "min_object_contrast", "pixel_noise"):
            if not is_num(getattr(self, name)) or not 0 <= getattr(self, name) <= 1:
                fail(name, "a number in [0, 1]")
        pair("texture_contrast", is_num, "numbers in [0, 1]")
        if not 0 <= self.texture_contrast[0] <= self.texture_contrast[1] <= 1:
            fail("texture_contrast", "0 <= lo <= hi <= 1")
        if not is_int(self.placement_attempts) or self.placement_attempts < 1:
            fail("placement_attempts", "an integer >= 1")
        if not is_num(self.texture_scale) or self.texture_scale <= 0:
            fail("texture_scale", "a number > 0")
        if not is_num(self.background_texture) or not 0 <= self.background_texture <= 1:
            fail("background_texture", "a number in [0, 1]")
        if not is_num(self.background_color_spread) or not 0 <= self.background_color_spread <= 1:
            fail("background_color_spread", "a number in [0, 1]")
        if not is_int(self.classes_per_scene) or not (
            0 <= self.classes_per_scene <= self.num_object_classes
        ):
            fail(
                "classes_per_scene",
                f"an integer in [0, num_object_classes={self.num_object_classes}] (0 = any class)",
            )
        # Plain Python scalars and tuples (not numpy scalars or lists): the spec stays hashable
        # and its JSON digest stable.
        for name in (
            "num_object_classes",
            "min_objects",
            "max_objects",
            "placement_attempts",
            "classes_per_scene",
        ):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in (
            "min_visible_fraction",
            "background_contrast",
            "min_object_contrast",
            "pixel_noise",
            "texture_scale",
            "background_texture",
            "background_color_spread",
        ):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "radius_range", tuple(float(x) for x in self.radius_range))
        object.__setattr__(self, "texture_contrast", tuple(float(x) for x in self.texture_contrast))
        object.__setattr__(self, "distractor_range", tuple(int(x) for x in self.distractor_range))

    @classmethod
    def from_config(cls, data: Any) -> SceneSpec:
        """The spec a :class:`detcon.config.DataConfig` names (its ``scene_*`` fields)."""
        return cls(
            num_object_classes=data.scene_classes,
            min_objects=data.scene_objects[0],
            max_objects=data.scene_objects[1],
            radius_range=tuple(data.scene_radius),
            texture_contrast=tuple(data.scene_texture_contrast),
            texture_scale=data.scene_texture_scale,
            background_texture=data.scene_background_texture,
            background_color_spread=data.scene_background_color_spread,
            classes_per_scene=data.scene_classes_per_scene,
        )

    def digest(self) -> str:
        """Short stable hash of the knobs (names the cache directory of scenes made with it).
        Knobs added later are left out at their default, so the caches of the specs from before
        them keep their names."""
        text = json.dumps(identity_dict(self, _KNOBS_ADDED_LATER), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SceneObject:
    """One placed object, in pixel units of its scene.

    ``center`` is (y, x) with pixel i covering [i, i + 1); ``radius`` is the radius of the disc of
    equal area (every shape covers about pi * radius**2 pixels);
    ``angle`` the rotation in radians; ``depth`` its (constant) depth; ``colors`` the two RGB
    colours in [0, 1] its texture alternates between; ``texture`` the texture parameters (periods
    and phases in pixels, see ``_texture``).
    """

    class_id: int
    center: tuple[float, float]
    radius: float
    angle: float
    depth: float
    colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    texture: tuple[float, ...]


@dataclass(frozen=True)
class Scene:
    """A generated scene as numpy arrays (the dataset converts them to torch tensors).

    - ``image``: uint8 (H, W, 3), RGB.
    - ``instances``: int64 (H, W); 0 background, 1..n the visible objects (consecutive ids).
    - ``semantic``: int64 (H, W); 0 background, 1..C the class of each object pixel.
    - ``depth``: float32 (H, W); background plane in [6.75, 10.25], objects in [1.2, 5.7].
    - ``objects``: the placed objects; ``objects[i - 1]`` is instance ``i``.
    """

    image: np.ndarray
    instances: np.ndarray
    semantic: np.ndarray
    depth: np.ndarray
    objects: tuple[SceneObject, ...]


# ------------------------------------------------------------------------------------------------
# random streams


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {', '.join(map(repr, SPLITS))}")


def scene_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """The random stream of scene ``index`` of ``split`` under ``seed``.

    Seeded from ``SeedSequence([seed, sha256(split)[:8 bytes], index])``: stable across runs,
    processes and machines (Python's ``hash`` of a str is salted per process), and independent
    streams for different splits (no scene is shared between splits, checked by the tests).
    """
    _check_split(split)
    if seed < 0 or index < 0:
        raise ValueError(f"seed={seed}, index={index}: expected non-negative integers")
    split_key = int.from_bytes(hashlib.sha256(split.encode()).digest()[:8], "little")
    # stream > 0: an independent stream of the same scene (1: the background texture, 2: the
    # scene's classes), so that drawing from it leaves the stream 0 draws unchanged.
    key = [int(seed), split_key, int(index)] + ([int(stream)] if stream else [])
    return np.random.default_rng(np.random.SeedSequence(key))


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(rng.random())


def _randint(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] from ``Generator.random`` only (see the module docstring)."""
    return min(hi, lo + int(float(rng.random()) * (hi - lo + 1)))


# ------------------------------------------------------------------------------------------------
# pure rendering helpers (elementwise float64 arithmetic; see the module docstring)


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1], float64 (h, w): random values on a grid of ``cell`` px, interpolated
    with a smoothstep weight, separably (rows first, then columns; gathers, not a BLAS matmul)."""
    gh, gw = int((h - 1) / cell) + 3, int((w - 1) / cell) + 3
    grid = rng.random((gh, gw))
    oy, ox = rng.random(2)
    fy = np.arange(h) / cell + oy
    fx = np.arange(w) / cell + ox
    iy, ix = fy.astype(np.intp), fx.astype(np.intp)
    ty, tx = fy - iy, fx - ix
    ty = (ty * ty * (3 - 2 * ty))[:, None]
    tx = tx * tx * (3 - 2 * tx)
    left = grid[:, ix]
    rows = left + (grid[:, ix + 1] - left) * tx  # (gh, w)
    top = rows[iy]
    return top + (rows[iy + 1] - top) * ty


def _unit(angle_deg: float) -> tuple[float, float]:
    # Scalar trig through Python's math (correctly rounded in practice, unlike SIMD array trig).
    a = math.radians(angle_deg)
    return math.cos(a), math.sin(a)


# Outward unit normals (x, y) of the polygon edges, in the object frame (y pointing down).
_TRIANGLE_NORMALS = [_unit(90 + 120 * k) for k in range(3)]
_STAR_NORMALS = [_unit(-90 + 72 * k) for k in range(5)]
_HEXAGON_NORMALS = [_unit(30 + 60 * k) for k in range(3)]


def _shape_mask(class_id: int, un: np.ndarray, vn: np.ndarray) -> np.ndarray:
    """bool mask of shape ``class_id`` at object-frame coordinates (un, vn) divided by the shape's
    circumradius (every shape fits in the unit circle)."""
    r2 = un * un + vn * vn
    if class_id == 1:  # disc
        return r2 <= 1.0
    if class_id == 2:  # square, corners at radius 0.72 * sqrt(2) ~ 1.02 (a pixel's slack)
        return (np.abs(un) <= 0.72) & (np.abs(vn) <= 0.72)
    if class_id == 3:  # equilateral triangle, vertices on the unit circle (edges at 0.5)
        m = np.ones(un.shape, bool)
        for nx, ny in _TRIANGLE_NORMALS:
            m &= un * nx + vn * ny <= 0.5
        return m
    if class_id == 4:  # pentagram: inside >= 4 of the 5 edge half-planes (tips on the circle)
        count = np.zeros(un.shape, np.int8)
        for nx, ny in _STAR_NORMALS:
            count += un * nx + vn * ny <= 0.309
        return count >= 4
    if class_id == 5:  # ring
        return (r2 <= 1.0) & (r2 >= 0.55 * 0.55)
    if class_id == 6:  # cross
        au, av = np.abs(un), np.abs(vn)
        return ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95))
    if class_id == 7:  # regular hexagon, vertices on the unit circle
        m = np.ones(un.shape, bool)
        for nx, ny in _HEXAGON_NORMALS:
            m &= np.abs(un * nx + vn * ny) <= 0.866
        return m
    if class_id == 8:  # crescent: the unit disc minus an offset disc
        d2 = (un - 0.45) * (un - 0.45) + vn * vn
        return (r2 <= 1.0) & (d2 >= 0.64)  # offset disc radius 0.8
    raise ValueError(f"class_id={class_id}: expected 1..{_NUM_SHAPES}")


def _sample_texture(rng: np.random.Generator, class_id: int, scale: float) -> tuple[float, ...]:
    """Texture parameters of class ``class_id`` (periods in px at this image ``scale``)."""
    p = [_uniform(rng, 0.0, 1.0), _uniform(rng, 0.0, 1.0)]  # phases
    if class_id in (1, 2, 7):  # stripes, checker, concentric: period
        return (scale * _uniform(rng, 3.5, 6.0), *p)
    if class_id in (3, 4):  # dots, grid lines: lattice period
        return (scale * _uniform(rng, 5.0, 8.0), *p)
    if class_id == 5:  # sunburst: number of lines through the centre (2n sectors), offset angle
        return (float(_randint(rng, 3, 5)), _uniform(rng, 0.0, 180.0))
    if class_id == 6:  # blotches: noise cell
        return (scale * _uniform(rng, 3.0, 5.0), *p)
    # zigzag: stripe period, zig period, zig amplitude
    return (
        scale * _uniform(rng, 4.0, 6.0),
        scale * _uniform(rng, 4.0, 8.0),
        scale * _uniform(rng, 1.0, 2.5),
        *p,
    )


def _texture(
    rng: np.random.Generator, class_id: int, params: tuple[float, ...], u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """bool texture pattern of class ``class_id`` at object-frame pixel offsets (u, v).

    The pattern turns with the object (it lives in the object frame), so orientation is no cue.
    ``rng`` is only drawn from by the noise-based family (blotches).
    """
    if class_id == 1:  # stripes
        return _frac(u / params[0] + params[1]) < 0.5
    if class_id == 2:  # checker
        cu = np.floor(u / params[0] + params[1])
        cv = np.floor(v / params[0] + params[2])
        return _frac((cu + cv) / 2) < 0.25
    if class_id == 3:  # dots on a square lattice
        du = _frac(u / params[0] + params[1]) - 0.5
        dv = _frac(v / params[0] + params[2]) - 0.5
        return du * du + dv * dv < 0.09  # dot radius 0.3 period
    if class_id == 4:  # grid lines
        du = np.abs(_frac(u / params[0] + params[1]) - 0.5)
        dv = np.abs(_frac(v / params[0] + params[2]) - 0.5)
        return (du < 0.17) | (dv < 0.17)
    if class_id == 5:  # sunburst: parity of the half-planes of n lines through the centre
        n = int(params[0])
        count = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.int8)
        for k in range(n):
            nx, ny = _unit(params[1] + 180.0 * k / n)
            count += u * nx + v * ny > 0
        return (count & 1).astype(bool)
    if class_id == 6:  # blotches: thresholded smooth noise (object frame not needed: isotropic)
        h, w = np.broadcast_shapes(u.shape, v.shape)
        return _value_noise(rng, h, w, params[0]) < 0.5
    if class_id == 7:  # concentric rings
        return _frac(np.sqrt(u * u + v * v) / params[0] + params[1]) < 0.5
    if class_id == 8:  # zigzag stripes
        zig = np.abs(_frac(v / params[1] + params[4]) - 0.5) * (2 * params[2])
        return _frac((u + zig) / params[0] + params[3]) < 0.5
    raise ValueError(f"class_id={class_id}: expected 1..{_NUM_SHAPES}")


def _local_frame(
    center: tuple[float, float], reach: float, angle: float
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Rotated pixel offsets (u, v), each (h, w), over the unclipped box around ``center``."""
    cy, cx = center
    y0, x0 = math.floor(cy - reach), math.floor(cx - reach)
    y1, x1 = math.ceil(cy + reach) + 1, math.ceil(cx + reach) + 1
    dy = (np.arange(y0, y1) + 0.5 - cy)[:, None]
    dx = (np.arange(x0, x1) + 0.5 - cx)[None, :]
    c, s = math.cos(angle), math.sin(angle)
    u = c * dx + s * dy
    v = c * dy - s * dx
    return u, v, y0, x0


def _clip_box(y0: int, x0: int, h: int, w: int, size: int) -> tuple[slice, slice, slice, slice]:
    """(image rows, image cols, box rows, box cols) slices of a box's part inside the image."""
    iy0, ix0 = max(y0, 0), max(x0, 0)
    iy1, ix1 = min(y0 + h, size), min(x0 + w, size)
    return (
        slice(iy0, max(iy0, iy1)),
        slice(ix0, max(ix0, ix1)),
        slice(iy0 - y0, max(iy0, iy1) - y0),
        slice(ix0 - x0, max(ix0, ix1) - x0),
    )


# Area of each shape of ``_shape_mask`` at circumradius 1 (disc, square of half-side 0.72,
# triangle, pentagram, ring, cross, hexagon: closed forms; crescent: numerically, 4001^2 grid).
_UNIT_AREAS = (
    math.pi,
    4 * 0.72**2,
    3 * math.sqrt(3) / 4,
    1.1226,
    math.pi * (1 - 0.55**2),
    2 * 0.64 * 1.9 - 0.64**2,
    3 * math.sqrt(3) / 2,
    1.4508,
)
# Circumradius per unit of object radius: every class covers the area of a disc of the object's
# radius, so pixel frequency and visible size do not differ by class just because of the shape.
_CIRCUMRADIUS = tuple(math.sqrt(math.pi / a) for a in _UNIT_AREAS)


def _footprint_box(obj: SceneObject) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    # The shape lies within its circumscribed circle; +1 px covers the pixel-centre offset.
    circum = obj.radius * _CIRCUMRADIUS[obj.class_id - 1]
    u, v, y0, x0 = _local_frame(obj.center, circum + 1.0, obj.angle)
    mask = _shape_mask(obj.class_id, u / circum, v / circum)
    return mask, u, v, y0, x0


def object_footprint(obj: SceneObject, size: int) -> np.ndarray:
    """The full (amodal) pixel mask of ``obj`` in a ``size`` x ``size`` image, bool (H, W),
    ignoring occlusion: where the object would be if nothing were in front of it."""
    mask, _, _, y0, x0 = _footprint_box(obj)
    out = np.zeros((size, size), bool)
    ys, xs, by, bx = _clip_box(y0, x0, *mask.shape, size)
    out[ys, xs] = mask[by, bx]
    return out


# ------------------------------------------------------------------------------------------------
# scene sampling


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    """A random unit vector in RGB space (the direction between a texture's two colours)."""
    direction = rng.random(3) - 0.5
    return direction / max(1e-6, float(np.sqrt(np.sum(direction**2))))


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return 0.08 + 0.84 * rng.random(3)


def _background(
    rng: np.random.Generator, size: int, spec: SceneSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float64 (H, W, 3) in [0, 1], depth float64 (H, W), base colour (3,))."""
    s = size / _BASE_SIZE
    base = _random_color(rng)
    if spec.background_color_spread != 1:
        base = 0.5 + spec.background_color_spread * (base - 0.5)
    # Low-contrast texture: two octaves of smooth luminance noise plus a weaker colour noise.
    lum = 0.65 * _value_noise(rng, size, size, 24 * s) + 0.35 * _value_noise(rng, size, size, 7 * s)
    chroma = _value_noise(rng, size, size, 16 * s)
    tint = rng.random(3) - 0.5
    # An illumination gradient across the scene, in a random direction.
    gy, gx = rng.random(2) - 0.5
    ramp = (np.arange(size) + 0.5) / size - 0.5
    light = gy * ramp[:, None] + gx * ramp[None, :]
    amp = spec.background_contrast
    img = (
        base
        + amp * ((lum - 0.5)[..., None] + 0.5 * (chroma - 0.5)[..., None] * tint * 2)
        + (0.5 * amp * light)[..., None]
    )
    # Depth: a tilted plane, far at the top and near at the bottom (a floor/wall seen at an angle).
    tilt = _BG_TILT * (2 * float(rng.random()) - 1)
    depth = (
        _BG_DEPTH_TOP
        + (_BG_DEPTH_BOTTOM - _BG_DEPTH_TOP) * (ramp[:, None] + 0.5)
        + 2 * tilt * ramp[None, :]
    )
    return img, depth, base


def _paint_background_texture(rng: np.random.Generator, img: np.ndarray, spec: SceneSpec) -> None:
    """Lay a class texture over the whole background (``spec.background_texture`` > 0 only).

    The class, the texture's period and phase, its angle and its colour direction are drawn per
    scene, so two scenes' backgrounds differ in texture, as in the project's early feasibility
    probe. Nothing is drawn when the amplitude is 0, so the default scenes are unchanged.
    """
    if spec.background_texture <= 0:
        return
    size = img.shape[0]
    class_id = _randint(rng, 1, spec.num_object_classes)
    params = _sample_texture(rng, class_id, size / _BASE_SIZE * spec.texture_scale)
    c, s = _unit(_uniform(rng, 0.0, 360.0))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5 - size / 2
    pattern = _texture(rng, class_id, params, xx * c + yy * s, yy * c - xx * s)
    direction = _random_direction(rng)
    img += spec.background_texture * (pattern.astype(np.float64) - 0.5)[..., None] * direction


def _paint_distractors(rng: np.random.Generator, img: np.ndarray, spec: SceneSpec) -> None:
    """Irregular untextured blobs on the background (labelled background: they are clutter)."""
    size = img.shape[0]
    lo, hi = spec.distractor_range
    for _ in range(_randint(rng, lo, hi)):
        r = size * _uniform(rng, 0.05, 0.25)
        center = (size * float(rng.random()), size * float(rng.random()))
        aspect = _uniform(rng, 0.35, 1.0)
        u, v, y0, x0 = _local_frame(center, r + 1.0, _uniform(rng, 0.0, math.pi))
        # An ellipse whose boundary is pushed in and out by smooth noise: amorphous, no class shape.
        wobble = _value_noise(rng, u.shape[0], u.shape[1], max(2.0, r / 2)) - 0.5
        mask = (u / r) ** 2 + (v / (r * aspect)) ** 2 + 0.9 * wobble < 0.85
        color = _random_color(rng)
        shade = 1.0 + 0.2 * (_value_noise(rng, u.shape[0], u.shape[1], max(2.0, r)) - 0.5)
        ys, xs, by, bx = _clip_box(y0, x0, *mask.shape, size)
        m = mask[by, bx]
        region = img[ys, xs]
        region[m] = (color * shade[by, bx][..., None])[m]


def _scene_classes(rng: np.random.Generator, spec: SceneSpec) -> tuple[int, ...]:
    """The classes this scene's objects are drawn from: ``spec.classes_per_scene`` of them, drawn
    from a stream of their own (``rng``), or all when it is 0 (nothing is drawn, so the default
    scenes are unchanged)."""
    if spec.classes_per_scene == 0:
        return tuple(range(1, spec.num_object_classes + 1))
    order = np.argsort(rng.random(spec.num_object_classes), kind="stable")
    return tuple(sorted(int(i) + 1 for i in order[: spec.classes_per_scene]))


def _sample_object(
    rng: np.random.Generator,
    size: int,
    spec: SceneSpec,
    bg_color: np.ndarray,
    classes: tuple[int, ...],
) -> SceneObject:
    class_id = classes[_randint(rng, 0, len(classes) - 1)]
    rlo, rhi = spec.radius_range
    # Log-uniform radius: as many objects per octave of size, so many are small.
    t = float(rng.random())
    radius_frac = rlo * (rhi / rlo) ** t
    # Perspective-like depth: bigger objects tend to be nearer (t = 1 is the largest radius).
    depth = _OBJ_DEPTH_NEAR + _OBJ_DEPTH_SPAN * (0.8 * (1 - t) + 0.2 * float(rng.random()))
    center = (size * float(rng.random()), size * float(rng.random()))
    angle = 2 * math.pi * float(rng.random())
    # Colours drawn independently of the class (docs/design.md §6: colour must not give the class
    # away); rejected only for being too close to the background colour, which is
    # class-independent too.
    color_a = _random_color(rng)
    for _ in range(20):
        if np.sqrt(np.sum((color_a - bg_color) ** 2)) >= spec.min_object_contrast:
            break
        color_a = _random_color(rng)
    direction = _random_direction(rng)
    contrast = _uniform(rng, *spec.texture_contrast)
    color_b = np.clip(color_a + contrast * direction, 0.0, 1.0)
    texture = _sample_texture(rng, class_id, size / _BASE_SIZE * spec.texture_scale)
    return SceneObject(
        class_id=class_id,
        center=center,
        radius=radius_frac * size,
        angle=angle,
        depth=depth,
        colors=(tuple(map(float, color_a)), tuple(map(float, color_b))),
        texture=texture,
    )


def generate_scene(
    index: int,
    *,
    seed: int = 0,
    split: str = "train",
    size: int = 96,
    spec: SceneSpec | None = None,
) -> Scene:
    """Generate scene ``index`` of ``split`` under ``seed``: deterministic, pure function.

    Objects are placed one at a time with a depth buffer: a candidate is rejected if less than
    ``spec.min_visible_fraction`` of it would be visible, or if it would hide more than that of an
    object already placed. Every placed object is therefore visible, and instance ids are the
    consecutive placement order.
    """
    spec = spec if spec is not None else SceneSpec()
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 16:
        raise ValueError(f"size={size!r}: expected an integer >= 16 (pixels)")
    rng = scene_rng(seed, split, index)
    img, bg_depth, bg_color = _background(rng, size, spec)
    _paint_background_texture(scene_rng(seed, split, index, stream=1), img, spec)
    _paint_distractors(rng, img, spec)
    classes = _scene_classes(scene_rng(seed, split, index, stream=2), spec)

    ids = np.zeros((size, size), np.int64)  # 0 = background, k = k-th placed object
    zbuf = np.full((size, size), np.inf)
    objects: list[SceneObject] = []
    boxes: list[tuple[np.ndarray, np.ndarray, np.ndarray, int, int]] = []
    visible: list[int] = []
    needed: list[float] = []
    target = _randint(rng, spec.min_objects, spec.max_objects)
    for _ in range(spec.placement_attempts * target):
        if len(objects) == target:
            break
        obj = _sample_object(rng, size, spec, bg_color, classes)
        box = _footprint_box(obj)
        mask, _, _, y0, x0 = box
        area = int(np.count_nonzero(mask))
        ys, xs, by, bx = _clip_box(y0, x0, *mask.shape, size)
        front = mask[by, bx] & (obj.depth < zbuf[ys, xs])
        shown = int(np.count_nonzero(front))
        if area == 0 or shown < spec.min_visible_fraction * area:
            continue
        region_ids = ids[ys, xs]
        lost = np.bincount(region_ids[front], minlength=len(objects) + 1)[1:]
        if any(v - lo < need for v, lo, need in zip(visible, lost.tolist(), needed)):
            continue
        region_ids[front] = len(objects) + 1
        zbuf[ys, xs][front] = obj.depth
        visible = [v - lo for v, lo in zip(visible, lost.tolist())] + [shown]
        needed.append(spec.min_visible_fraction * area)
        objects.append(obj)
        boxes.append(box)

    # Paint each object's visible pixels with its texture.
    for k, (obj, (mask, u, v, y0, x0)) in enumerate(zip(objects, boxes), start=1):
        ys, xs, by, bx = _clip_box(y0, x0, *mask.shape, size)
        sel = ids[ys, xs] == k
        pattern = _texture(rng, obj.class_id, obj.texture, u[by, bx], v[by, bx])
        a, b = np.asarray(obj.colors[0]), np.asarray(obj.colors[1])
        region = img[ys, xs]
        region[sel] = np.where(pattern[sel][:, None], b, a)

    if spec.pixel_noise > 0:
        # Uniform noise with the requested standard deviation (half-width sqrt(3) * std).
        img += (rng.random(img.shape) - 0.5) * (2 * math.sqrt(3) * spec.pixel_noise)
    image = np.floor(np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)

    class_lut = np.array([0] + [o.class_id for o in objects], np.int64)
    depth_lut = np.array([0.0] + [o.depth for o in objects])
    semantic = class_lut[ids]
    depth = np.where(ids > 0, depth_lut[ids], bg_depth).astype(np.float32)
    return Scene(image=image, instances=ids, semantic=semantic, depth=depth, objects=tuple(objects))


# ------------------------------------------------------------------------------------------------
# the dataset


_CACHE_KEYS = ("image", "instances", "semantic", "depth")


class SyntheticScenes(Dataset):
    """The synthetic scenes as a torch Dataset (docs/design.md §6); see the module docstring.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each split is an independent random stream.
        num_images: length of the split.
        size: side of a scene in pixels (96 in the cpu profile).
        seed: dataset seed; scene ``i`` is a pure function of (seed, split, i, size, difficulty).
        cache_dir: optional directory of generated scenes, one ``.npz`` per index written
            atomically; a present file is read back after validation, a corrupt one regenerated.
        difficulty: the :class:`SceneSpec` (default: ``SceneSpec()``).

    The cache lives in ``cache_dir/synthetic-v<GENERATOR_VERSION>-<split>-seed<seed>-<size>px-
    <spec digest>/<index:08d>.npz`` (so scenes of another spec or renderer are never mixed in);
    ``self.cache_dir`` is that sub-directory.

    ``dataset[i]`` is a dict of tensors:

    - ``image``: ``torch.uint8`` (3, H, W), RGB in [0, 255];
    - ``instances``: ``torch.int64`` (H, W), 0 = background, 1..n the visible objects;
    - ``semantic``: ``torch.int64`` (H, W), 0 = background, 1..C the class (``class_names``);
    - ``depth``: ``torch.float32`` (H, W), background plane in [6.75, 10.25], objects in
      [1.2, 5.7], nearer objects occluding farther ones.
    """

    def __init__(
        self,
        split: str = "train",
        num_images: int = 1024,
        size: int = 96,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        difficulty: SceneSpec | None = None,
    ) -> None:
        _check_split(split)
        for name, value, lo in (
            ("num_images", num_images, 1),
            ("size", size, 16),
            ("seed", seed, 0),
        ):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
                raise ValueError(f"SyntheticScenes {name}={value!r}: expected an integer >= {lo}")
        if difficulty is not None and not isinstance(difficulty, SceneSpec):
            raise ValueError(f"difficulty={difficulty!r}: expected a SceneSpec or None")
        self.split = split
        self.num_images = int(num_images)
        self.size = int(size)
        self.seed = int(seed)
        self.spec = difficulty if difficulty is not None else SceneSpec()
        self.cache_dir: Path | None = None
        if cache_dir is not None:
            self.cache_dir = Path(cache_dir) / (
                f"synthetic-v{GENERATOR_VERSION}-{split}-seed{self.seed}-{self.size}px-"
                f"{self.spec.digest()}"
            )

    def fingerprint_text(self) -> str:
        """What makes these scenes (generator version, split, seed, size, every scene knob):
        a mask store records it, so a store of other scenes is refused even where their first
        scene is the same (:func:`detcon.masks.store.open_for_training`)."""
        return (
            f"synthetic-v{GENERATOR_VERSION}-{self.split}-seed{self.seed}-{self.size}px-"
            f"{self.spec.digest()}-n{self.num_images}"
        )

    @property
    def num_classes(self) -> int:
        """Semantic classes including background (index 0)."""
        return self.spec.num_object_classes + 1

    @property
    def class_names(self) -> tuple[str, ...]:
        """Name of each semantic class; ``class_names[0] == "background"``."""
        return CLASS_NAMES[: self.num_classes]

    def __len__(self) -> int:
        return self.num_images

    def scene(self, index: int) -> Scene:
        """The full :class:`Scene` (numpy arrays plus object parameters), never cached."""
        return generate_scene(
            self._check_index(index),
            seed=self.seed,
            split=self.split,
            size=self.size,
            spec=self.spec,
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = self._check_index(index)
        arrays = self._load_cached(index) if self.cache_dir is not None else None
        if arrays is None:
            scene = self.scene(index)
            arrays = {
                "image": scene.image,
                "instances": scene.instances,
                "semantic": scene.semantic,
                "depth": scene.depth,
            }
            if self.cache_dir is not None:
                self._write_cache(index, arrays)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(arrays["image"].transpose(2, 0, 1))),
            "instances": torch.from_numpy(arrays["instances"].astype(np.int64)),
            "semantic": torch.from_numpy(arrays["semantic"].astype(np.int64)),
            "depth": torch.from_numpy(arrays["depth"]),
        }

    def __repr__(self) -> str:
        return (
            f"SyntheticScenes(split={self.split!r}, num_images={self.num_images}, "
            f"size={self.size}, seed={self.seed}, cache_dir={self.cache_dir}, "
            f"difficulty={self.spec})"
        )

    def _check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"index={index!r}: expected an integer")
        if not 0 <= index < self.num_images:
            raise IndexError(f"index={index} out of range for {self.num_images} scenes")
        return int(index)

    # ---- cache: one compressed .npz per index, ids stored as uint8 (max_objects <= 255)

    def cache_path(self, index: int) -> Path:
        """Where scene ``index`` is cached (raises if the dataset has no ``cache_dir``)."""
        if self.cache_dir is None:
            raise ValueError("this SyntheticScenes has no cache_dir")
        return self.cache_dir / f"{index:08d}.npz"

    def _load_cached(self, index: int) -> dict[str, np.ndarray] | None:
        path = self.cache_path(index)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in _CACHE_KEYS}
            self._validate(arrays)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            warnings.warn(
                f"corrupt synthetic-scene cache file {path} ({err}); regenerating it",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        return arrays

    def _validate(self, arrays: dict[str, np.ndarray]) -> None:
        s = self.size
        expected = {
            "image": ((s, s, 3), np.uint8),
            "instances": ((s, s), np.uint8),
            "semantic": ((s, s), np.uint8),
            "depth": ((s, s), np.float32),
        }
        for key, (shape, dtype) in expected.items():
            a = arrays[key]
            if a.shape != shape or a.dtype != dtype:
                raise ValueError(
                    f"{key} has shape {a.shape} dtype {a.dtype}, expected {shape} {np.dtype(dtype)}"
                )
        if int(arrays["semantic"].max()) >= self.num_classes:
            raise ValueError(f"semantic ids exceed {self.num_classes - 1}")
        if not np.array_equal(arrays["instances"] == 0, arrays["semantic"] == 0):
            raise ValueError("instances and semantic disagree on the background")
        if not np.isfinite(arrays["depth"]).all():
            raise ValueError("depth has non-finite values")

    def _write_cache(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        path = self.cache_path(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = {
            "image": arrays["image"],
            "depth": arrays["depth"],
            "instances": arrays["instances"].astype(np.uint8),
            "semantic": arrays["semantic"].astype(np.uint8),
        }
        # atomic: readers see the old file or the whole new one
        atomic_write(path, lambda f: np.savez_compressed(f, **stored))


# ------------------------------------------------------------------------------------------------
# difficulty report


def scene_statistics(dataset: SyntheticScenes, indices: Sequence[int]) -> dict[str, Any]:
    """Difficulty summary of ``dataset`` over ``indices`` (a plain dict, JSON-able).

    - ``class_pixel_frequency``: fraction of all pixels per class name (background included);
    - ``objects_per_image``: mean, min, max visible objects;
    - ``visible_object_pixels``: mean, median, 10th percentile of visible object area (pixels)
      and ``visible_object_fraction`` (mean area / image area);
    - ``color_ncm_accuracy``: accuracy of a nearest-class-mean classifier on per-object mean RGB,
      fitted on the even-numbered objects and scored on the odd ones, and ``chance`` (1 / number
      of classes present). Near chance means colour does not give the class away.
    """
    if len(indices) == 0:
        raise ValueError("indices is empty: expected at least one scene index")
    counts = np.zeros(dataset.num_classes, np.int64)
    per_image, areas, colors, labels = [], [], [], []
    for i in indices:
        sample = dataset[i]
        sem = sample["semantic"].numpy()
        inst = sample["instances"].numpy()
        rgb = sample["image"].numpy().reshape(3, -1).astype(np.float64)
        counts += np.bincount(sem.ravel(), minlength=dataset.num_classes)
        n = int(inst.max())
        per_image.append(n)
        flat = inst.ravel()
        area = np.bincount(flat, minlength=n + 1)[1:]
        sums = np.stack([np.bincount(flat, weights=c, minlength=n + 1)[1:] for c in rgb], 1)
        cls = np.zeros(n + 1, np.int64)
        cls[flat] = sem.ravel()
        areas.extend(area.tolist())
        colors.extend((sums / area[:, None]).tolist())
        labels.extend(cls[1:].tolist())
    if not labels:
        raise ValueError(
            f"no object in the {len(indices)} given scene(s): the statistics need at least one "
            "object (SceneSpec min_objects/max_objects)"
        )
    colors_a, labels_a, areas_a = np.asarray(colors), np.asarray(labels), np.asarray(areas)
    train, test = np.arange(0, len(labels_a), 2), np.arange(1, len(labels_a), 2)
    present = np.unique(labels_a[train])
    means = np.stack([colors_a[train][labels_a[train] == c].mean(0) for c in present])
    dist = ((colors_a[test][:, None, :] - means[None]) ** 2).sum(-1)
    accuracy = (
        float((present[dist.argmin(1)] == labels_a[test]).mean()) if len(test) else float("nan")
    )
    return {
        "num_images": len(indices),
        "class_pixel_frequency": {
            name: float(c / counts.sum()) for name, c in zip(dataset.class_names, counts)
        },
        "objects_per_image": {
            "mean": float(np.mean(per_image)),
            "min": int(min(per_image)),
            "max": int(max(per_image)),
        },
        "visible_object_pixels": {
            "mean": float(areas_a.mean()),
            "median": float(np.median(areas_a)),
            "p10": float(np.percentile(areas_a, 10)),
        },
        "visible_object_fraction": float(areas_a.mean() / dataset.size**2),
        "color_ncm_accuracy": accuracy,
        "chance": 1.0 / len(present),
        "num_objects": len(labels_a),
    }
