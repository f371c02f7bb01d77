"""Multi-task shape scenes: one image, three labels (class, segmentation mask, depth), generated offline.

Each RGB image holds one to ``max_shapes`` shapes from :data:`CATEGORIES` on a textured background: a
main object (the biggest and nearest one) and smaller distractors. A scene is drawn like a painter works:
every shape has a depth ``z``; the far ones are painted first and the near ones over them (occlusion),
and nearer shapes look bigger (apparent radius ∝ 1/z). The labels are

- ``labels`` ``(N,)``: the category of the shape with the largest *visible* area (image classification);
- ``masks`` ``(N, H, W)``: 0 for background, ``1 + category`` for a shape, and :data:`IGNORE_INDEX` on
  ambiguous boundary pixels (below);
- ``depth`` ``(N, H, W)``: the depth ``z`` of the visible surface, :data:`BACKGROUND_DEPTH` for background.

Scenes are rendered at ``supersample`` times the resolution and box-filtered down, so edges are
anti-aliased. A pixel whose sub-pixels do not agree on one label in at least three quarters of them is a
mixed pixel: its mask value is :data:`IGNORE_INDEX` (the convention of PASCAL VOC's boundary band), and
losses and metrics leave it out alike.

Colours, sizes, rotations, positions, background gratings and pixel noise are random, so that neither
task is trivial. All shapes have the same area at the same size parameter (the constants below), so no
category wins the "largest shape" label by its geometry alone.

Determinism: a split is made of chunks of :data:`CHUNK` images; chunk ``j`` of split ``s`` is drawn from
``numpy.random.default_rng([seed, split_id(s), j])``. The same seed gives the same images on every machine,
the three splits never share a random stream, and a smaller split is a prefix of a bigger one.
Generated splits are cached as ``.npz`` files under :func:`mtml_lib.config.cache_dir`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtml_lib import config

#: shape categories; image labels are indices into this tuple, mask values are ``1 + index``
CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
#: mask value of ambiguous (mixed) boundary pixels; skipped by losses and metrics
IGNORE_INDEX: int = 255
#: depth of the background plane (shapes lie between ``depth_range``)
BACKGROUND_DEPTH: float = 3.0
#: images per random-number chunk (see the module docstring on determinism)
CHUNK: int = 256
#: bump when the generator changes, so that old caches are not reused
GENERATOR_VERSION: int = 2
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Equal-area geometry: with size parameter r every shape covers π r². In units of r:
_SQUARE_HALF = math.sqrt(math.pi) / 2  # 4 h² = π
_TRIANGLE_R = math.sqrt(4 * math.pi / (3 * math.sqrt(3)))  # circumradius: (3√3/4) R² = π
_STAR_INNER = 0.45  # inner/outer radius ratio of the five-pointed star
_STAR_R = math.sqrt(math.pi / (5 * _STAR_INNER * math.sin(math.pi / 5)))  # 10 triangles of area ½ R r_i sin(π/5)
_CROSS_WIDTH = 0.3  # half-width of an arm relative to its half-length
_CROSS_L = math.sqrt(math.pi / (8 * _CROSS_WIDTH - 4 * _CROSS_WIDTH**2))  # two bars minus their overlap


@dataclass(frozen=True)
class ShapesConfig:
    """How scenes are drawn. Sizes are fractions of the image side; ``depth_range`` is in depth units."""

    image_size: int = 64
    min_shapes: int = 1
    max_shapes: int = 4
    main_size_range: tuple[float, float] = (0.24, 0.32)  # equal-area radius at depth 1, fraction of the side
    size_range: tuple[float, float] = (0.12, 0.22)  # the same for the other shapes (distractors)
    depth_range: tuple[float, float] = (1.0, 2.0)
    texture: float = 0.25  # largest amplitude of the background gratings
    noise: float = 0.06  # largest standard deviation of the Gaussian pixel noise
    supersample: int = 2

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {self.image_size!r}")
        if not (1 <= self.min_shapes <= self.max_shapes):
            raise ValueError(f"need 1 <= min_shapes <= max_shapes, got {self.min_shapes} and {self.max_shapes}")
        for name in ("main_size_range", "size_range"):
            lo, hi = getattr(self, name)
            if not (0 < lo <= hi < 0.5):
                raise ValueError(f"{name} must satisfy 0 < low <= high < 0.5, got {getattr(self, name)}")
        zlo, zhi = self.depth_range
        if not (0 < zlo <= zhi < BACKGROUND_DEPTH):
            raise ValueError(f"depth_range must lie in (0, {BACKGROUND_DEPTH}), got {self.depth_range}")
        if self.texture < 0 or self.noise < 0:
            raise ValueError(f"texture and noise must be >= 0, got {self.texture} and {self.noise}")
        if not isinstance(self.supersample, int) or self.supersample < 1:
            raise ValueError(f"supersample must be a positive integer, got {self.supersample!r}")

    @property
    def n_classes(self) -> int:
        """Image classes (one per category)."""
        return len(CATEGORIES)

    @property
    def n_mask_classes(self) -> int:
        """Mask classes: background + one per category."""
        return len(CATEGORIES) + 1


@dataclass
class ShapesSplit:
    """One split as tensors. ``images`` ``(N, 3, H, W)`` float32 in [0, 1]; ``labels`` ``(N,)`` int64;
    ``masks`` ``(N, H, W)`` int64 (0 background, 1..C shapes, :data:`IGNORE_INDEX`); ``depth`` ``(N, H, W)``
    float32; ``n_shapes`` ``(N,)`` int64 (shapes drawn, some possibly hidden)."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    depth: torch.Tensor
    n_shapes: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def targets(self, index: torch.Tensor | slice | None = None) -> dict[str, torch.Tensor]:
        """The three targets keyed by task name (``cls``, ``seg``, ``depth``), optionally indexed."""
        sel = slice(None) if index is None else index
        return {"cls": self.labels[sel], "seg": self.masks[sel], "depth": self.depth[sel]}

    def subset(self, index: torch.Tensor | slice) -> "ShapesSplit":
        return ShapesSplit(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))


# ------------------------------------------------------------------------------------------ geometry
def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= _SQUARE_HALF


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # three half-planes at the inradius R/2, one vertex pointing up (v grows downwards in images)
    out = v <= _TRIANGLE_R / 2
    for a in (math.pi / 6, 5 * math.pi / 6):
        out &= u * math.cos(a) - v * math.sin(a) <= _TRIANGLE_R / 2
    return out


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # fold the angle into one tenth of the turn, then test against the straight edge from tip to notch
    sector = math.pi / 5
    phi = np.abs(np.mod(np.arctan2(v, u) + sector, 2 * sector) - sector)
    rho = np.sqrt(u * u + v * v)
    x, y = rho * np.cos(phi), rho * np.sin(phi)
    x1, x2, y2 = _STAR_R, _STAR_R * _STAR_INNER * math.cos(sector), _STAR_R * _STAR_INNER * math.sin(sector)
    return (x2 - x1) * y - y2 * (x - x1) >= 0


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    w = _CROSS_WIDTH * _CROSS_L
    return ((au <= w) & (av <= _CROSS_L)) | ((av <= w) & (au <= _CROSS_L))


_INSIDE = (_circle, _square, _triangle, _star, _cross)  # same order as CATEGORIES


def inside(category: int | str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which points ``(u, v)`` lie inside a shape of ``category`` (index or name) centred at the origin.

    ``u, v`` are in units of the equal-area radius r, in the shape's own (rotated) frame; every category
    covers an area of π r².
    """
    index = CATEGORIES.index(category) if isinstance(category, str) and category in CATEGORIES else category
    if not isinstance(index, (int, np.integer)) or not 0 <= index < len(CATEGORIES):
        raise ValueError(f"unknown shape category {category!r}; valid: {list(CATEGORIES)} or 0..{len(CATEGORIES) - 1}")
    return _INSIDE[int(index)](u, v)


# ----------------------------------------------------------------------------------------- rendering
def _painter_order(z: np.ndarray, *per_shape: np.ndarray) -> list[np.ndarray]:
    """Sort the shape slots of every image far to near (painter's order); returns z and the arrays, sorted."""
    order = np.argsort(-z, axis=1, kind="stable")
    return [np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1) for a in (z, *per_shape)]


def _background(rng_draws: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Base colour plus two sinusoidal gratings, ``(n, 3, size, size)``, float32."""
    coords = ((np.arange(size) + 0.5) / size).astype(np.float32)
    gx, gy = coords[None, None, :], coords[None, :, None]
    base = rng_draws["bg_colour"]
    image = np.broadcast_to(base[:, :, None, None], (len(base), 3, size, size)).copy()
    for g in range(2):
        angle, freq, phase = (rng_draws[k][:, g, None, None] for k in ("bg_angle", "bg_freq", "bg_phase"))
        wave = np.sin(2 * np.pi * freq * (np.cos(angle) * gx + np.sin(angle) * gy) + phase)
        image += rng_draws["bg_amp"][:, g, :, None, None] * wave[:, None]
    return image


def _render_chunk(rng: np.random.Generator, n: int, cfg: ShapesConfig) -> dict[str, np.ndarray]:
    """Draw ``n`` scenes with ``rng``; every random number is drawn before rendering, in a fixed order."""
    k_max, ss, size = cfg.max_shapes, cfg.supersample, cfg.image_size
    side = size * ss
    f32 = np.float32
    n_shapes = rng.integers(cfg.min_shapes, cfg.max_shapes + 1, size=n)
    category = rng.integers(0, len(CATEGORIES), size=(n, k_max))
    z = rng.uniform(*cfg.depth_range, size=(n, k_max))
    base = rng.uniform(*cfg.size_range, size=(n, k_max))
    base[:, 0] = rng.uniform(*cfg.main_size_range, size=n)
    centre = rng.uniform(0.1, 0.9, size=(n, k_max, 2))
    angle = rng.uniform(0, 2 * math.pi, size=(n, k_max))
    colour_offset = rng.uniform(0.3, 0.7, size=(n, k_max, 3))  # per channel, away from the background
    shading = rng.uniform(-0.25, 0.25, size=(n, k_max))  # brightness gradient across a shape
    bg = {
        "bg_colour": rng.uniform(0.15, 0.85, size=(n, 3)),
        "bg_freq": rng.uniform(1, 5, size=(n, 2)),  # cycles per image of two gratings
        "bg_angle": rng.uniform(0, math.pi, size=(n, 2)),
        "bg_phase": rng.uniform(0, 2 * math.pi, size=(n, 2)),
        "bg_amp": rng.uniform(0, cfg.texture, size=(n, 2, 3)),
    }
    noise_std = rng.uniform(0, cfg.noise, size=n)
    # shape colours differ from the background's base colour by 0.3 to 0.7 in every channel (modulo 1),
    # so that every shape is visible, whatever its colour
    colour = np.mod(bg["bg_colour"][:, None, :] + colour_offset, 1.0)
    noise = rng.standard_normal(size=(n, 3, size, size))

    active = np.arange(k_max)[None, :] < n_shapes[:, None]
    # slot 0 is the main object: the biggest, and the nearest (so it is drawn last, in front)
    z = np.sort(np.where(active, z, np.inf), axis=1)
    # unused slots get infinite depth: sorted far-to-near they come first and are never drawn
    z, category, base, centre, angle, colour, shading, active = _painter_order(
        np.where(active, z, np.inf), category, base, centre, angle, colour, shading, active)

    coords = ((np.arange(side) + 0.5) / side).astype(f32)  # sub-pixel centres in [0, 1]
    gx, gy = coords[None, :], coords[:, None]
    owner = np.full((n, side, side), -1, dtype=np.int64)  # slot that owns each sub-pixel, -1 = background
    shade = np.ones((n, side, side), dtype=f32)
    for k in range(k_max):
        for c in range(len(CATEGORIES)):
            idx = np.flatnonzero(active[:, k] & (category[:, k] == c))
            if idx.size == 0:
                continue
            radius = (base[idx, k] / z[idx, k]).astype(f32)[:, None, None]  # apparent size ∝ 1 / depth
            dx = (gx - centre[idx, k, 0, None, None].astype(f32)) / radius
            dy = (gy - centre[idx, k, 1, None, None].astype(f32)) / radius
            cos, sin = (f(angle[idx, k]).astype(f32)[:, None, None] for f in (np.cos, np.sin))
            u, v = cos * dx + sin * dy, -sin * dx + cos * dy
            hit = _INSIDE[c](u, v)
            owner[idx] = np.where(hit, k, owner[idx])
            shade[idx] = np.where(hit, 1 + shading[idx, k, None, None].astype(f32) * np.clip(v, -1.5, 1.5), shade[idx])

    rows = np.arange(n)[:, None, None]
    slot = np.maximum(owner, 0)
    drawn = owner >= 0
    paint = np.clip(np.moveaxis(colour[rows, slot], -1, 1).astype(f32) * shade[:, None], 0, 1)
    background = np.repeat(np.repeat(_background(bg, size), ss, axis=2), ss, axis=3)  # smooth: no need to supersample
    image_fine = np.where(drawn[:, None], paint, background)
    mask_fine = np.where(drawn, 1 + category[rows, slot], 0)
    depth_fine = np.where(drawn, z[rows, slot], BACKGROUND_DEPTH)
    visible = np.stack([(owner == k).sum(axis=(1, 2)) for k in range(k_max)], axis=1)  # (n, K) sub-pixels
    labels = category[np.arange(n), np.argmax(visible, axis=1)]

    def blocks(a: np.ndarray) -> np.ndarray:  # (..., side, side) -> (..., size, size, ss*ss)
        lead = a.shape[:-2]
        a = a.reshape(*lead, size, ss, size, ss)
        return np.moveaxis(a, -3, -2).reshape(*lead, size, size, ss * ss)

    image = blocks(image_fine).mean(-1) + noise_std[:, None, None, None] * noise
    votes = np.stack([(blocks(mask_fine) == c).sum(-1) for c in range(len(CATEGORIES) + 1)], axis=-1)
    agreed = votes.max(-1) * 4 >= 3 * ss * ss  # at least three quarters of the sub-pixels agree
    masks = np.where(agreed, votes.argmax(-1), IGNORE_INDEX)
    return {
        "images": np.round(np.clip(image, 0, 1) * 255).astype(np.uint8),
        "labels": labels.astype(np.int64),
        "masks": masks.astype(np.uint8),
        "depth": blocks(depth_fine).mean(-1).astype(np.float16),
        "n_shapes": n_shapes.astype(np.int64),
    }


def split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    return SPLITS.index(split)


def generate_arrays(n: int, seed: int, split: str = "train", cfg: ShapesConfig | None = None) -> dict[str, np.ndarray]:
    """The raw arrays of ``n`` scenes of ``split`` (uint8 images and masks, float16 depth), no cache."""
    cfg = cfg or ShapesConfig()
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"number of images must be a positive integer, got {n!r}")
    sid = split_id(split)
    parts = [_render_chunk(np.random.default_rng([int(seed), sid, j]), CHUNK, cfg) for j in range(-(-n // CHUNK))]
    return {key: np.concatenate([p[key] for p in parts])[:n] for key in parts[0]}


def _to_split(arrays: dict[str, np.ndarray]) -> ShapesSplit:
    return ShapesSplit(
        images=torch.from_numpy(arrays["images"].astype(np.float32) / 255.0),
        labels=torch.from_numpy(arrays["labels"].astype(np.int64)),
        masks=torch.from_numpy(arrays["masks"].astype(np.int64)),
        depth=torch.from_numpy(arrays["depth"].astype(np.float32)),
        n_shapes=torch.from_numpy(arrays["n_shapes"].astype(np.int64)),
    )


def _cache_path(n: int, seed: int, split: str, cfg: ShapesConfig) -> Path:
    key = json.dumps({"n": n, "seed": seed, "split": split, "v": GENERATOR_VERSION, **dataclasses.asdict(cfg)},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return config.cache_dir() / "shapes" / f"{split}-{n}-{digest}.npz"


def make_split(n: int, seed: int, split: str = "train", cfg: ShapesConfig | None = None,
               cache: bool = True) -> ShapesSplit:
    """``n`` scenes of ``split`` for ``seed`` as tensors, read from or written to the cache."""
    cfg = cfg or ShapesConfig()
    path = _cache_path(int(n), int(seed), split, cfg)
    if cache and path.is_file():
        with np.load(path) as stored:
            return _to_split({k: stored[k] for k in stored.files})
    arrays = generate_arrays(n, seed, split, cfg)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        # write to a temporary file and rename, so a reader never sees half a file
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    return _to_split(arrays)


def make_splits(sizes: dict[str, int], seed: int, cfg: ShapesConfig | None = None,
                cache: bool = True) -> dict[str, ShapesSplit]:
    """The splits named in ``sizes`` (e.g. ``{"train": 3000, "val": 500, "test": 1000}``), fixed by ``seed``."""
    return {split: make_split(n, seed, split, cfg, cache) for split, n in sizes.items()}
