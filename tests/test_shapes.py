"""The shape-scene data set: geometry, labels, determinism, splits, cache, and bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtml_lib.data import shapes

SMALL = shapes.ShapesConfig(image_size=16)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTML_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("category", shapes.CATEGORIES)
def test_every_category_covers_the_same_area(category):
    grid = np.linspace(-2, 2, 801)
    u, v = np.meshgrid(grid, grid)
    area = shapes.inside(category, u, v).sum() * (grid[1] - grid[0]) ** 2
    assert area == pytest.approx(math.pi, rel=0.01)


def test_categories_are_different_shapes():
    grid = np.linspace(-2, 2, 201)
    u, v = np.meshgrid(grid, grid)
    masks = [shapes.inside(c, u, v) for c in shapes.CATEGORIES]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] != masks[j]).mean() > 0.03


def test_split_arrays_have_the_documented_shapes_and_ranges():
    split = shapes.make_split(64, seed=0, split="train", cfg=SMALL, cache=False)
    n, size = 64, SMALL.image_size
    assert split.images.shape == (n, 3, size, size) and split.images.dtype == torch.float32
    assert 0.0 <= split.images.min() and split.images.max() <= 1.0
    assert split.labels.shape == (n,) and split.labels.dtype == torch.int64
    assert split.labels.min() >= 0 and split.labels.max() < len(shapes.CATEGORIES)
    assert split.masks.shape == (n, size, size)
    values = set(split.masks.unique().tolist())
    assert values <= set(range(len(shapes.CATEGORIES) + 1)) | {shapes.IGNORE_INDEX}
    assert split.depth.shape == (n, size, size)
    assert set(split.targets()) == {"cls", "seg", "depth"}
    assert len(split.subset(slice(0, 10))) == 10


def test_labels_masks_and_depth_agree():
    cfg = shapes.ShapesConfig(image_size=16, max_shapes=1)
    split = shapes.make_split(128, seed=1, cfg=cfg, cache=False)
    for label, mask in zip(split.labels, split.masks):
        shape_values = set(mask.unique().tolist()) - {0, shapes.IGNORE_INDEX}
        assert shape_values == {1 + int(label)}  # one shape: its category is the label
    background = split.masks == 0  # at least 3/4 of the pixel is background; its depth is the pixel's mean
    assert split.depth[background].median() == shapes.BACKGROUND_DEPTH
    lo, hi = cfg.depth_range
    assert split.depth[background].min() >= shapes.BACKGROUND_DEPTH - (shapes.BACKGROUND_DEPTH - lo) / 4 - 0.01
    inside_shape = (split.masks > 0) & (split.masks != shapes.IGNORE_INDEX)
    assert split.depth[inside_shape].min() >= lo - 0.01 and split.depth[inside_shape].max() <= shapes.BACKGROUND_DEPTH


def test_label_is_the_category_with_a_large_visible_area():
    split = shapes.make_split(256, seed=2, cfg=SMALL, cache=False)
    for label, mask in zip(split.labels, split.masks):
        assert (mask == 1 + label).any()  # the labelled shape is visible


def test_ignore_pixels_are_a_thin_boundary_band():
    split = shapes.make_split(128, seed=3, cfg=SMALL, cache=False)
    ignore = split.masks == shapes.IGNORE_INDEX
    assert 0 < ignore.float().mean() < 0.1
    padded = torch.nn.functional.pad(split.masks, (1, 1, 1, 1), mode="replicate")
    neighbours = [padded[:, 1 + dy:1 + dy + 16, 1 + dx:1 + dx + 16] for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    differs = torch.stack([nb != split.masks for nb in neighbours]).any(0)
    assert differs[ignore].all()  # every ignored pixel sits on an edge


def test_classes_are_roughly_balanced():
    labels = shapes.make_split(1024, seed=0, cfg=SMALL, cache=False).labels
    counts = torch.bincount(labels, minlength=len(shapes.CATEGORIES)).double() / len(labels)
    assert counts.min() > 0.12 and counts.max() < 0.28


def test_same_seed_same_data_and_splits_differ():
    a = shapes.make_split(40, seed=5, split="train", cfg=SMALL, cache=False)
    b = shapes.make_split(40, seed=5, split="train", cfg=SMALL, cache=False)
    c = shapes.make_split(40, seed=6, split="train", cfg=SMALL, cache=False)
    val = shapes.make_split(40, seed=5, split="val", cfg=SMALL, cache=False)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and torch.equal(a.depth, b.depth)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images, val.images)


def test_a_smaller_split_is_a_prefix_of_a_bigger_one():
    small = shapes.make_split(300, seed=0, cfg=SMALL, cache=False)  # spans two chunks
    big = shapes.make_split(600, seed=0, cfg=SMALL, cache=False)
    assert torch.equal(small.images, big.images[:300]) and torch.equal(small.labels, big.labels[:300])


def test_cache_is_written_once_and_read_back(tmp_path):
    splits = shapes.make_splits({"train": 30, "val": 20}, seed=0, cfg=SMALL)
    files = sorted((tmp_path / "cache" / "shapes").glob("*.npz"))
    assert len(files) == 2
    stamp = [f.stat().st_mtime_ns for f in files]
    again = shapes.make_splits({"train": 30, "val": 20}, seed=0, cfg=SMALL)
    assert [f.stat().st_mtime_ns for f in files] == stamp
    assert torch.equal(again["train"].images, splits["train"].images)
    assert torch.equal(again["val"].depth, splits["val"].depth)
    shapes.make_split(30, seed=0, cfg=shapes.ShapesConfig(image_size=16, noise=0.0))
    assert len(list((tmp_path / "cache" / "shapes").glob("*.npz"))) == 3  # another config, another file


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"unknown split 'dev'; valid splits: \['train', 'val', 'test'\]"):
        shapes.make_split(10, seed=0, split="dev", cfg=SMALL)
    with pytest.raises(ValueError, match="unknown shape category 'hexagon'"):
        shapes.inside("hexagon", np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="min_shapes <= max_shapes"):
        shapes.ShapesConfig(min_shapes=3, max_shapes=2)
    with pytest.raises(ValueError, match="image_size"):
        shapes.ShapesConfig(image_size=4)
    with pytest.raises(ValueError, match="positive integer"):
        shapes.generate_arrays(0, seed=0)
