"""Glyph data set: font and character selection, splits, look-alike removal, rendering, warps, cache.

The tests build small prototype sets (a few fonts, a few dozen characters) so that they run in seconds.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtml_lib.data import glyphs as G

FOUR_FONTS = ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "STIXGeneral")
SMALL = G.RenderSettings(fonts=FOUR_FONTS)
# Latin (train) and look-alikes in Greek (train), Cyrillic (val), Armenian and Georgian (test)
CHARS = "ABCEHKOPZabcez" + "ΑΒΕΗΚΟΡαβγδ" + "АВЕНКОРабвгдж" + "ԱԲԳՕոսաբգդ" + "აბგდევზთ"




@pytest.fixture(scope="module")
def small_protos():
    return G.build_prototypes(SMALL, chars=CHARS)


def test_usable_fonts_exclude_non_text_fonts():
    names = [p.name for p in G.usable_fonts()]
    assert "DejaVuSans.ttf" in names and "STIXGeneral.ttf" in names and "cmr10.ttf" in names
    for bad in ("LastResortHE-Regular.ttf", "STIXNonUni.ttf", "STIXSizOneSymReg.ttf", "cmsy10.ttf", "cmex10.ttf",
                "cmmi10.ttf", "DejaVuSansDisplay.ttf"):
        assert bad not in names
    with pytest.raises(ValueError, match="unknown or excluded fonts.*LastResortHE-Regular"):
        G.selected_fonts(G.RenderSettings(fonts=("DejaVuSans", "LastResortHE-Regular")))


def test_font_coverage_drops_slots_drawing_another_glyph():
    cmr = next(p for p in G.usable_fonts() if p.stem == "cmr10")
    covered = G.font_coverage(cmr)
    assert ord("A") in covered and ord("7") in covered
    assert ord("<") not in covered  # cmr10 draws an inverted exclamation mark there


def test_candidate_characters_and_groups():
    assert G.is_candidate("A") and G.is_candidate("ა") and G.is_candidate("→")
    for ch in ("𝐀", "ﬁ", "ⓐ", "ˆ", "ʰ", ".", "⠁", "─", " "):
        assert not G.is_candidate(ch), ch  # compatibility variant, modifier, punctuation, picture block, space
    assert G.character_group("A") == "Latin" and G.character_group("α") == "Greek"
    assert G.character_group("ж") == "Cyrillic" and G.character_group("→") == "Arrows"
    assert [G.split_of_group(g) for g in ("Latin", "Cyrillic", "Georgian")] == ["train", "val", "test"]


def test_split_tables_are_disjoint():
    val, test = set(G.SPLIT_GROUPS["val"]), set(G.SPLIT_GROUPS["test"])
    assert val and test and not val & test


def test_splits_are_disjoint_and_follow_alphabets(small_protos):
    p = small_protos
    ids = {s: set(p.classes_of(s)) for s in G.SPLITS}
    assert ids["train"] and ids["val"] and ids["test"]
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert sum(len(v) for v in ids.values()) == len(p.chars)
    for i, ch in enumerate(p.chars):
        assert p.groups[i] == G.character_group(ch) and p.splits[i] == G.split_of_group(p.groups[i])
    # alphabets never straddle splits
    by_group = {}
    for g, s in zip(p.groups, p.splits):
        by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        p.classes_of("dev")


def test_look_alikes_are_dropped_across_splits(small_protos):
    p = small_protos
    kept = set(p.chars)
    # Greek Alpha and Cyrillic A are drawn like Latin A by these fonts; Latin (train) comes first
    for latin, others in (("A", "ΑА"), ("O", "ΟО"), ("K", "ΚК")):
        assert latin in kept
        for other in others:
            assert other not in kept and p.dropped[other] in kept
    assert "ж" in kept and "δ" in kept and "ა" in kept  # distinct letters stay
    # a lowercase letter drawn like its capital (the frame normalises size away) goes too; a and b stay
    assert p.dropped.get("c") == "C" and p.dropped.get("z") == "Z"
    assert "a" in kept and "b" in kept
    # no kept val/test class correlates above the threshold with a train class in a shared font
    feats = G._features(p.images, p.settings.image_size)
    train = torch.tensor([p.splits[c] == "train" for c in p.proto_class.tolist()])
    for font in p.proto_font.unique():
        in_font = p.proto_font == font
        a, b = feats[in_font & train], feats[in_font & ~train]
        if len(a) and len(b):
            assert (a @ b.T).max() <= p.settings.duplicate_threshold


def test_other_designs_are_flagged():
    g = torch.Generator().manual_seed(0)
    pattern, other = (torch.rand(2, 56, 56, generator=g) > 0.7).to(torch.uint8) * 255
    images = torch.stack([pattern, pattern, other, pattern, other, other])
    classes = torch.tensor([0, 0, 0, 1, 1, 1])
    families = torch.tensor([0, 1, 0, 2, 2, 2])
    flagged = G.find_other_designs(images, classes, families, threshold=0.4, image_size=28)
    # class 0: family 1 agrees with the first family-0 font, the second family-0 font draws another design;
    # class 1 has one family: its fonts are compared with each other (two of three agree)
    assert flagged.tolist() == [False, False, True, True, False, False]


def test_prototypes_are_framed_like_omniglot(small_protos):
    p = small_protos
    side = p.settings.supersample * p.settings.image_size
    assert p.images.shape[1:] == (side, side) and p.images.dtype == torch.uint8
    for img in p.images[::7]:
        rows, cols = np.nonzero(img.numpy() > 0)
        extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        assert abs(extent - p.settings.fill * side) <= 4  # longer side = fill x frame (thinning may take 2 px)
        centre = ((rows.max() + rows.min()) / 2, (cols.max() + cols.min()) / 2)
        assert abs(centre[0] - (side - 1) / 2) <= 2 and abs(centre[1] - (side - 1) / 2) <= 2
    assert (torch.bincount(p.proto_class) >= p.settings.min_fonts).all()


def test_helpers_match_their_reference_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 10, 10, generator=g)
    assert torch.equal(G._extremum3x3(x), F.max_pool2d(x, 3, stride=1, padding=1))
    assert torch.equal(G._extremum3x3(x, torch.minimum), -F.max_pool2d(-x, 3, stride=1, padding=1))
    blur = torch.tensor([1.0, 2.0, 1.0]) / 4
    kernel = (blur[:, None] * blur[None])[None, None]  # the separable [1, 2, 1] / 4 blur, zero padding
    assert torch.allclose(G._blur121(x), F.conv2d(x, kernel, padding=1), atol=1e-6)
    steps = torch.tensor([0.5, -0.25, 0.0])
    ref = x + steps.view(-1, 1, 1, 1) * torch.where(steps.view(-1, 1, 1, 1) > 0, F.max_pool2d(x, 3, 1, 1) - x,
                                                      x + F.max_pool2d(-x, 3, 1, 1))
    assert torch.allclose(G._change_stroke(x, steps), ref, atol=1e-6)
    params = G.sample_distortions(4, g)
    theta = G._sampling_grids(params)
    assert torch.allclose(G._grid(theta, 12), F.affine_grid(theta, [4, 1, 12, 12], align_corners=False), atol=1e-6)
    bar = torch.zeros(1, 40, 40, dtype=torch.uint8)
    bar[0, 5:35, 10:13] = 255  # a stroke 3 px wide, 30 px long: area 90, outline 2 * (30 + 3)
    assert G.stroke_width(bar).item() == pytest.approx(90 / 33)


def test_undistorted_warp_reproduces_the_prototype(small_protos):
    p = small_protos
    protos = p.images[:5]
    params = G.sample_distortions(5, torch.Generator(), G.NO_DISTORTION)
    out = G.warp(protos, params, p.settings.supersample)
    assert out.shape == (5, 1, 28, 28) and out.dtype == torch.float32
    reference = F.avg_pool2d(protos.float().unsqueeze(1) / 255, 2)
    assert (out - reference).abs().mean() < 0.02
    with pytest.raises(ValueError, match="stroke change"):
        G.warp(protos, {**params, "stroke": torch.full((5,), 2.0, dtype=torch.float64)}, 2)


def test_instances_are_deterministic_and_distorted(small_protos):
    p = small_protos
    classes = p.classes_of("train")[:6]
    a = G.make_instances(p, classes, 7, seed=3)
    b = G.make_instances(p, classes, 7, seed=3)
    c = G.make_instances(p, classes, 7, seed=4)
    assert a.shape == (6, 7, 1, 28, 28) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    # instances of a class differ from one another (fonts and distortions), ink is 255 on a 0 background
    assert (a[:, 0].float() - a[:, 1].float()).abs().mean() > 1
    assert a[..., 0, 0].max() == 0 and a.amax(dim=(-1, -2, -3)).min() > 150


def test_load_glyphs_split(small_protos):
    ds = G.load_glyphs("test", n_per_class=5, seed=0, protos=small_protos)
    assert ds.split == "test" and ds.images.shape == (len(small_protos.classes_of("test")), 5, 1, 28, 28)
    assert all(G.split_of_group(g) == "test" for g in ds.groups)
    sub = G.load_glyphs("train", n_per_class=3, seed=0, protos=small_protos, max_classes=4)
    assert len(sub) == 4 and set(sub.class_names) <= {small_protos.chars[c] for c in small_protos.classes_of("train")}
    with pytest.raises(ValueError, match="n_per_class"):
        G.load_glyphs("test", n_per_class=0, protos=small_protos)


def test_prototype_cache_round_trip(tmp_path, monkeypatch, small_protos):
    monkeypatch.setenv("MTML_CACHE", str(tmp_path))
    calls = []

    def fake_build(settings):
        calls.append(settings)
        return small_protos

    monkeypatch.setattr(G, "build_prototypes", fake_build)
    first = G.load_prototypes(SMALL)
    path = G.prototype_cache_path(SMALL)
    assert path.is_file() and path.parent == tmp_path / "glyphs" and f"-v{G.GLYPHS_VERSION}-" in path.name
    second = G.load_prototypes(SMALL)  # read back, not rebuilt
    assert len(calls) == 1
    assert torch.equal(first.images, second.images) and torch.equal(first.proto_class, second.proto_class)
    assert second.chars == small_protos.chars and second.splits == small_protos.splits
    assert second.dropped == json.loads(json.dumps(small_protos.dropped))
    assert (second.solid, second.inconsistent, second.other_designs) == (
        small_protos.solid, small_protos.inconsistent, small_protos.other_designs)
    # another setting, another key
    assert G.prototype_cache_path(G.RenderSettings(fonts=FOUR_FONTS, fill=0.5)) != path


def test_the_cache_key_follows_the_code_that_builds_prototypes(monkeypatch):
    before = G.prototype_cache_path(SMALL)
    assert G.prototype_cache_path(SMALL) == before  # stable

    def thinner(x, steps):  # an edited stroke rule must not read prototypes built by the old one
        return x

    monkeypatch.setattr(G, "_change_stroke", thinner)
    assert G.prototype_cache_path(SMALL) != before
    monkeypatch.undo()
    assert G.prototype_cache_path(SMALL) == before
    assert set(G._BUILD_FUNCTIONS) <= set(dir(G))
