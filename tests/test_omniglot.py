"""Omniglot loader on a fixture in the official layout (folders and zip), errors, and the real data when present."""

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mtml_lib import config
from mtml_lib.data import glyphs as G
from mtml_lib.data import omniglot as O
from mtml_lib.data.episodes import EpisodeSampler

ALPHABETS = {"Alpha_Script": 3, "Beta_(Test)": 2}  # alphabet -> characters
DRAWERS = 4
REAL = config.repo_root().parent / "shared" / "data" / "omniglot"


def draw_character(alphabet: int, character: int, drawer: int) -> Image.Image:
    """A 105 x 105 binary image like Omniglot's: black strokes on white; a different L per character."""
    im = Image.new("1", (105, 105), 1)
    d = ImageDraw.Draw(im)
    x0 = 20 + 10 * character + drawer
    d.line([(x0, 15 + 5 * alphabet), (x0, 80), (x0 + 30, 80)], fill=0, width=4)
    return im


def write_split(root, folder: str, as_zip: bool):
    files = {}
    for a, (alphabet, n_chars) in enumerate(ALPHABETS.items()):
        for c in range(n_chars):
            for d in range(DRAWERS):
                files[f"{folder}/{alphabet}/character{c + 1:02d}/{a}{c:02d}_{d + 1:02d}.png"] = draw_character(a, c, d)
    if as_zip:
        with zipfile.ZipFile(root / f"{folder}.zip", "w") as z:
            for name, im in files.items():
                path = root / "tmp.png"
                im.save(path)
                z.write(path, name)
                path.unlink()
    else:
        for name, im in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            im.save(root / name)


@pytest.fixture
def fixture_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MTML_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MTML_DATA", raising=False)
    root = tmp_path / "omniglot"
    root.mkdir()
    write_split(root, "images_background", as_zip=False)
    write_split(root, "images_evaluation", as_zip=True)
    return root


def test_folder_layout_counts_shapes_and_conventions(fixture_root):
    ds = O.load_omniglot("background", path=fixture_root)
    assert ds.images.shape == (5, DRAWERS, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.class_names[0] == "Alpha_Script/character01" and ds.class_names[-1] == "Beta_(Test)/character02"
    assert ds.groups == ["Alpha_Script"] * 3 + ["Beta_(Test)"] * 2
    x = ds[0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    # ink is 1 (the black strokes), background 0 (the white paper)
    assert x[..., 0, 0].max() == 0 and x.amax(dim=(-1, -2)).min() > 0.9
    assert 0.02 < x.mean() < 0.3


def test_zip_equals_folder(fixture_root, tmp_path):
    from_zip = O.load_omniglot("evaluation", path=fixture_root)
    other = tmp_path / "other"
    other.mkdir()
    write_split(other, "images_evaluation", as_zip=False)
    from_folder = O.load_omniglot("evaluation", path=other)
    assert torch.equal(from_zip.images, from_folder.images) and from_zip.class_names == from_folder.class_names
    assert O.available_splits(fixture_root) == ["background", "evaluation"]


def test_rotation_augmentation_makes_new_classes(fixture_root):
    base = O.load_omniglot("background", path=fixture_root)
    rot = O.load_omniglot("background", path=fixture_root, rotations=(0, 90, 180, 270))
    assert len(rot) == 4 * len(base) and rot.class_names[5] == "Alpha_Script/character01/rot90"
    for k in range(4):
        block = rot.images[k * len(base):(k + 1) * len(base)]
        assert torch.equal(block, torch.rot90(base.images, k=k, dims=(-2, -1)))
    assert not torch.equal(rot.images[0], rot.images[5])
    with pytest.raises(ValueError, match=r"rotations must be a non-empty subset of \(0, 90, 180, 270\)"):
        O.load_omniglot("background", path=fixture_root, rotations=(45,))


def test_environment_variable_and_cache(fixture_root, monkeypatch):
    monkeypatch.setenv("MTML_DATA", str(fixture_root.parent))  # the parent holds omniglot/
    first = O.load_omniglot("background")
    cached = list((fixture_root.parent / "cache" / "omniglot").glob("*.npz"))
    assert len(cached) == 1
    monkeypatch.setattr(O, "_read_files", lambda source: pytest.fail("cache not used"))
    assert torch.equal(O.load_omniglot("background").images, first.images)
    monkeypatch.setenv("MTML_DATA", str(fixture_root))
    assert O.load_omniglot("background").class_names == first.class_names


def test_clear_errors_when_data_is_absent(fixture_root, tmp_path, monkeypatch):
    with pytest.raises(O.OmniglotNotFound, match="MTML_DATA is not set.*github.com/brendenlake/omniglot"):
        O.load_omniglot("background")
    missing = tmp_path / "nowhere"
    with pytest.raises(O.OmniglotNotFound, match=f"folder '{missing}' does not exist"):
        O.load_omniglot("background", path=missing)
    monkeypatch.setenv("MTML_DATA", str(missing))
    with pytest.raises(O.OmniglotNotFound, match="is not a folder"):
        O.load_omniglot("background")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(O.OmniglotNotFound, match="looked for folder images_background/ and file images_background.zip"):
        O.load_omniglot("background", path=empty)
    with pytest.raises(ValueError, match="unknown Omniglot split 'test'.*'background', 'evaluation'"):
        O.load_omniglot("test", path=fixture_root)
    assert O.available_splits(missing) == []


def test_unequal_classes_raise(fixture_root):
    extra = fixture_root / "images_background" / "Alpha_Script" / "character01" / "extra_05.png"
    draw_character(0, 0, 5).save(extra)
    with pytest.raises(ValueError, match="different numbers of images"):
        O.load_omniglot("background", path=fixture_root, cache=False)


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real Omniglot files not present at {REAL}")
def test_real_omniglot_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("MTML_CACHE", str(tmp_path))
    splits = O.available_splits(REAL)
    assert splits, f"{REAL} holds no official Omniglot split"
    ds = O.load_omniglot(splits[0], path=REAL, rotations=(0, 90, 180, 270))
    n_chars = len(ds) // 4
    assert ds.images.shape[1:] == (20, 1, 28, 28) and len(set(ds.groups)) >= 5
    if splits[0] == "background_small1":
        assert n_chars == 136
    # the same conventions as glyphs: ink 1 on 0, similar ink coverage and stroke width at 28 x 28
    x = ds.images[:n_chars].flatten(0, 1).float() / 255
    protos = G.build_prototypes(G.RenderSettings(fonts=("DejaVuSans", "DejaVuSerif", "DejaVuSansMono")),
                                chars="აბგდევზთიკლმნოპ")
    glyphs = G.make_instances(protos, list(range(len(protos.chars))), 10, seed=0).flatten(0, 1).float() / 255
    assert glyphs[:, 0, 0, 0].max() == 0 and glyphs.shape[1:] == x.shape[1:]
    assert x[:, 0, 0, 0].max() == 0 and x.amax(dim=(-1, -2, -3)).min() > 0.6
    assert 0.04 < x.mean() < 0.15 and 0.5 < glyphs.mean() / x.mean() < 2
    stroke_omniglot, stroke_glyphs = (float(np.median(G.stroke_width(v).numpy())) for v in (x, glyphs))
    assert 0.9 < stroke_omniglot < 1.6 and abs(stroke_glyphs - stroke_omniglot) < 0.5
    batch = EpisodeSampler(ds, 20, 1, 5, seed=0).sample(2)
    assert batch.support_x.shape == (2, 20, 1, 28, 28)
