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


def official_like_fixture(monkeypatch):
    """Make the fixture's alphabets the "official release" (the real tables are checked on the real data)."""
    monkeypatch.setattr(O, "OFFICIAL_ALPHABETS", {"background": dict(ALPHABETS), "evaluation": dict(ALPHABETS)})
    monkeypatch.setattr(O, "DRAWERS", DRAWERS)


@pytest.fixture
def fixture_root(tmp_path, monkeypatch):
    official_like_fixture(monkeypatch)
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
    with pytest.raises(O.OmniglotIntegrityError, match="Alpha_Script/character01 holds 5"):
        O.load_omniglot("background", path=fixture_root, cache=False)
    with pytest.raises(O.OmniglotIntegrityError, match="different numbers of images"):
        O.load_omniglot("background", path=fixture_root, cache=False, check="none")


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


# ------------------------------------------------------------------ the official release, its protocols
REAL_TABLES = {split: dict(t) for split, t in O.OFFICIAL_ALPHABETS.items()}


def write_official(root, split: str, alphabets=None, as_zip=False, size=8):
    """The official layout and counts of ``split`` (all its alphabets, or ``alphabets``), with tiny images
    whose pixels encode (alphabet, character, drawer) so that selections can be checked."""
    folder = O.SPLIT_NAMES[split]
    table = REAL_TABLES["evaluation" if split == "evaluation" else "background"]
    alphabets = alphabets or list(table)
    buffers = {}
    ident = 1 if split != "evaluation" else 965
    for a, alphabet in enumerate(alphabets):
        for c in range(table[alphabet]):
            for d in range(20):
                im = Image.new("L", (size, size), 255)
                im.putpixel((a % size, 0), 0)
                im.putpixel((c % size, 1), 0)
                im.putpixel((d % size, 2), 0)
                import io
                b = io.BytesIO()
                im.save(b, format="PNG")
                buffers[f"{folder}/{alphabet}/character{c + 1:02d}/{ident:04d}_{d + 1:02d}.png"] = b.getvalue()
            ident += 1
    if as_zip:
        with zipfile.ZipFile(root / f"{folder}.zip", "w") as z:
            for name, data in buffers.items():
                z.writestr(name, data)
    else:
        for name, data in buffers.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def official_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    write_official(root, "background", as_zip=True)
    write_official(root, "evaluation", as_zip=True)
    write_official(root, "background_small1", alphabets=list(O.SMALL_SPLITS["background_small1"]))
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTML_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_official_tables_match_the_published_totals():
    assert len(O.OFFICIAL_ALPHABETS["background"]) == 30 and sum(O.OFFICIAL_ALPHABETS["background"].values()) == 964
    assert len(O.OFFICIAL_ALPHABETS["evaluation"]) == 20 and sum(O.OFFICIAL_ALPHABETS["evaluation"].values()) == 659
    small1 = O.SMALL_SPLITS["background_small1"]
    assert sum(O.OFFICIAL_ALPHABETS["background"][a] for a in small1) == 136


def test_protocol_counts_are_the_published_ones():
    # Vinyals et al. 2016 / Snell et al. 2017: 1,028 + 172 training characters, 423 test; x4 with rotations
    assert O.protocol_counts("vinyals") == {"train": 1028, "val": 172, "trainval": 1200, "test": 423}
    assert O.protocol_counts("lake") == {"train": 792, "val": 172, "trainval": 964, "test": 659}
    assert O.protocol_counts("small1") == {"train": 90, "val": 22, "trainval": 112, "test": 24}
    with pytest.raises(ValueError, match="unknown Omniglot protocol 'snell'; valid protocols: \\['vinyals', 'lake', 'small1'\\]"):
        O.protocol_counts("snell")


def test_protocols_load_disjoint_parts_with_the_published_class_counts(official_root, cache):
    assert O.available_protocols(official_root) == ["vinyals", "lake", "small1"]
    parts = {part: O.load_protocol("vinyals", part, path=official_root, image_size=8) for part in O.PARTS}
    assert {p: len(d) for p, d in parts.items()} == {"train": 4112, "val": 688, "trainval": 4800, "test": 1692}
    names = {p: set(d.class_names) for p, d in parts.items()}
    assert not names["train"] & names["val"] and not names["trainval"] & names["test"]
    assert names["train"] | names["val"] == names["trainval"]
    assert "Gurmukhi/character41/rot90" in names["train"] and "Gurmukhi/character42/rot90" in names["test"]
    assert {g for g in parts["val"].groups} == {"Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"}
    # the same character, rotated: a class of its own, the same pixels turned by 90 degrees
    test = parts["test"]
    k, k90 = test.class_names.index("Kannada/character03/rot0"), test.class_names.index("Kannada/character03/rot90")
    assert torch.equal(test.images[k90], torch.rot90(test.images[k], 1, dims=(-2, -1)))
    lake = O.load_protocol("lake", "test", path=official_root, image_size=8)
    assert len(lake) == 659 and len(set(lake.groups)) == 20 and not any("/rot" in n for n in lake.class_names)
    small = {p: O.load_protocol("small1", p, path=official_root, image_size=8) for p in ("train", "val", "test")}
    assert {p: len(d) for p, d in small.items()} == {"train": 360, "val": 88, "test": 96}
    with pytest.raises(ValueError, match="unknown part 'dev'.*'train', 'val', 'trainval', 'test'"):
        O.load_protocol("lake", "dev", path=official_root)


def test_locate_maps_official_file_names_to_class_and_instance(official_root, cache):
    test = O.load_protocol("vinyals", "test", path=official_root, image_size=8)
    c, i = O.locate(test, "Gurmukhi/character42/rot90/1201_07.png")
    assert test.class_names[c] == "Gurmukhi/character42/rot90" and i == 6
    # the pixels encode the drawer: drawer 7 inked at x = 6 of row 2 (before rotation)
    c0, _ = O.locate(test, "Gurmukhi/character42/rot0/1201_07.png")
    img = test.images[c0, i, 0]
    assert img[2, 6] > 200 and img[2, 5] < 50
    with pytest.raises(KeyError, match="no file '1201_21.png'"):
        O.locate(test, "Gurmukhi/character42/rot0/1201_21.png")
    with pytest.raises(KeyError, match="rotated classes such as 'Gurmukhi/character42/rot0'"):
        O.locate(test, "Gurmukhi/character42/1201_07.png")
    with pytest.raises(KeyError, match="class 'Gurmukhi/character01' is not in this data set"):
        O.locate(test, "Gurmukhi/character01/1160_01.png")


def small1_copy(tmp_path):
    return write_official(tmp_path / "data", "background_small1", alphabets=list(O.SMALL_SPLITS["background_small1"])) \
        if (tmp_path / "data").mkdir() is None else None


def test_integrity_errors_name_what_is_missing(tmp_path, cache):
    import shutil
    root = small1_copy(tmp_path)
    folder = root / "images_background_small1"
    assert len(O.load_omniglot("background_small1", path=root)) == 136
    shutil.rmtree(folder / "Greek" / "character07")
    with pytest.raises(O.OmniglotIntegrityError, match=r"Greek lacks 1 of its 24 characters, e\.g\. Greek/character07.*check='subset'"):
        O.load_omniglot("background_small1", path=root)
    # the cache never serves the old classes after a deletion (its key covers every file)
    assert len(O.load_omniglot("background_small1", path=root, check="subset")) == 135
    shutil.rmtree(folder / "Latin")
    with pytest.raises(O.OmniglotIntegrityError, match=r"lacks alphabet\(s\) \['Latin'\]"):
        O.load_omniglot("background_small1", path=root, check="official")
    assert len(O.load_omniglot("background_small1", path=root, check="subset")) == 135 - 26
    next((folder / "Korean" / "character02").glob("*.png")).unlink()
    with pytest.raises(O.OmniglotIntegrityError, match="Korean/character02 holds 19"):
        O.load_omniglot("background_small1", path=root, check="subset")
    (folder / "Klingon" / "character01").mkdir(parents=True)
    shutil.copy(next((folder / "Greek" / "character01").glob("*.png")), folder / "Klingon" / "character01" / "x_01.png")
    with pytest.raises(O.OmniglotIntegrityError, match=r"\['Klingon'\] are not official"):
        O.load_omniglot("background_small1", path=root, check="subset")
    with pytest.raises(ValueError, match="unknown check 'strict'; valid checks: \\['official', 'subset', 'none'\\]"):
        O.load_omniglot("background_small1", path=root, check="strict")


def test_edited_image_is_not_served_stale(tmp_path, cache):
    root = small1_copy(tmp_path)
    first = O.load_omniglot("background_small1", path=root)
    png = root / "images_background_small1" / "Balinese" / "character01" / "0001_01.png"
    Image.new("L", (8, 8), 0).save(png)  # all ink
    second = O.load_omniglot("background_small1", path=root)
    assert not torch.equal(first.images[0, 0], second.images[0, 0]) and second.images[0, 0].min() == 255


def test_unreadable_files_are_named(tmp_path, cache):
    root = small1_copy(tmp_path)
    png = root / "images_background_small1" / "Greek" / "character03" / "0049_05.png"
    png.write_bytes(png.read_bytes()[:20])
    with pytest.raises(O.OmniglotIntegrityError, match=r"Greek/character03/0049_05\.png: not a readable image|Greek/character03/0049_05\.png"):
        O.load_omniglot("background_small1", path=root, cache=False)
    # a truncated zip: named, not a bare BadZipFile
    zroot = tmp_path / "z"
    zroot.mkdir()
    write_official(zroot, "background_small1", alphabets=list(O.SMALL_SPLITS["background_small1"]), as_zip=True)
    z = zroot / "images_background_small1.zip"
    z.write_bytes(z.read_bytes()[: z.stat().st_size // 2])
    with pytest.raises(O.OmniglotIntegrityError, match=f"cannot read the zip file '{z}'"):
        O.load_omniglot("background_small1", path=zroot)


def test_zip_file_itself_as_the_path(tmp_path, cache):
    zroot = tmp_path / "z"
    zroot.mkdir()
    write_official(zroot, "background_small1", alphabets=list(O.SMALL_SPLITS["background_small1"]), as_zip=True)
    z = zroot / "images_background_small1.zip"
    assert len(O.load_omniglot("background_small1", path=z)) == 136
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(O.OmniglotNotFound, match="is a file, not a folder nor an official zip"):
        O.load_omniglot("background_small1", path=other)


@pytest.mark.skipif(not (REAL / "images_background_small1.zip").is_file(), reason=f"real small1 not present at {REAL}")
def test_real_small1_passes_the_integrity_check_and_its_protocol(cache):
    data = O.load_omniglot("background_small1", path=REAL)
    assert len(data) == 136 and data.n_per_class == 20
    assert {g: data.groups.count(g) for g in set(data.groups)} == {a: REAL_TABLES["background"][a]
                                                                  for a in O.SMALL_SPLITS["background_small1"]}
    test = O.load_protocol("small1", "test", path=REAL)
    assert len(test) == 96 and set(test.groups) == {"Balinese"}
    c, i = O.locate(test, "Balinese/character01/rot0/0108_03.png")
    assert (c, i) == (0, 2) and torch.equal(test.images[c, i], data.images[data.class_names.index("Balinese/character01"), 2])
