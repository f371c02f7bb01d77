"""Glyphs: an offline, Omniglot-like few-shot data set of characters rendered from matplotlib's fonts.

Omniglot (Lake et al. 2015) has 1,623 characters from 50 alphabets, each drawn once by 20 people. This
module builds the same kind of data from what every matplotlib installation already holds, the TrueType
fonts in ``mpl-data/fonts/ttf``:

* a **class** is a Unicode character that has a glyph in at least ``min_fonts`` usable fonts;
* an **instance** is that character in one of those fonts, distorted by a random affine map (rotation,
  scale, aspect, shear, translation) and a random change of stroke width, the way 20 drawers draw the
  same character differently;
* the **alphabet** of a character is its Unicode script (Latin, Greek, Georgian, ...), or its Unicode
  block for the script-less symbols (Arrows, Mathematical Operators, ...). Meta-train / meta-val /
  meta-test are made of whole alphabets (:data:`SPLIT_GROUPS`), as Omniglot's background / evaluation
  split is, so meta-test measures transfer to scripts never seen in training.

What is left out, and why:

* fonts that are not Unicode text fonts (:data:`EXCLUDED_FONTS`), and in the remaining fonts every
  code point whose glyph name disagrees with it (the Computer Modern fonts keep TeX's encoding in some
  ASCII slots: their ``<`` is an inverted exclamation mark);
* characters that are not letters, numbers or symbols, modifier letters and marks (diacritic-like
  specks), compatibility variants (NFKC maps them to another character: math bold A, ligatures, circled
  letters) and blocks of pictures rather than characters (:data:`EXCLUDED_BLOCKS`);
* solid shapes (■, ●: Omniglot characters are pen strokes), and the prototypes of a font that draws
  *another design* of a character than the other font families do (DejaVu Serif draws the Georgian
  capitals in another style than DejaVu Sans): one example of one design says little about the other;
* **near duplicates**: characters drawn alike by the same font (Latin A, Greek Alpha, Cyrillic A; l, I
  and ``|``; c and C, since the frame normalises size away). Walking the splits in the order train, val,
  test, a character is dropped when its glyph in some font correlates above ``duplicate_threshold``
  (``case_threshold`` for a lowercase letter and its capital) with the glyph of an already kept
  character in the same font. Thus no meta-test character is a look-alike of a meta-train one, and no
  split holds two classes that cannot be told apart.

Conventions shared with :mod:`mtml_lib.data.omniglot` (so that a model meta-trained here can be tested
on Omniglot directly): single channel, ``image_size`` x ``image_size`` (28 by default), ink = 1 on a
background of 0, float values in ``[0, 1]``, the character's longer side about 0.6 of the frame and
centred, strokes about one pixel wide at 28 x 28 (Omniglot's measured median: 1.2 px).

Speed: each (character, font) is rendered once with Pillow into a prototype at twice the output size and
cached on disk (``mtml_lib.config.cache_dir()/glyphs``, keyed by :data:`GLYPHS_VERSION`, the settings
and the font files); instances are then batched affine warps of prototypes with ``grid_sample``
(about 45 µs of one CPU thread per image measured here, prototype selection included), so the
36,000 training images are drawn in a couple of seconds and can be redrawn during training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

from mtml_lib import config
from mtml_lib.data.episodes import ClassDataset

#: bump when the selection, rendering or dedup rules change: invalidates every cached prototype file
#: (the cache key also covers the source of the functions that build prototypes, see _BUILD_FUNCTIONS)
GLYPHS_VERSION = 3

#: font-file name prefix -> why it is not used
EXCLUDED_FONTS: dict[str, str] = {
    "LastResort": "draws a placeholder box for every code point",
    "STIXNonUni": "holds private-use glyphs only, no Unicode text",
    "STIXSiz": "large display variants of operators and delimiters",
    "cmsy10": "TeX math-symbol encoding: ASCII slots hold other symbols",
    "cmex10": "TeX math-extension encoding: ASCII slots hold delimiter pieces",
    "cmmi10": "TeX math-italic encoding: ASCII slots hold other glyphs",
    "DejaVuSansDisplay": "display-size copies of a few DejaVu Sans glyphs",
    "DejaVuSerifDisplay": "display-size copies of a few DejaVu Serif glyphs",
}

#: Unicode blocks of pictures and patterns rather than characters (tiny details that do not survive 28 x 28,
#: or families of near-identical tiles)
EXCLUDED_BLOCKS: frozenset[str] = frozenset({
    "Braille Patterns", "Box Drawing", "Block Elements", "Control Pictures", "Domino Tiles", "Mahjong Tiles",
    "Playing Cards", "Emoticons", "Miscellaneous Symbols and Pictographs", "Yijing Hexagram Symbols",
    "Tai Xuan Jing Symbols", "Specials",
})

#: kept Unicode general categories (by first letter: letters, numbers, symbols) and the excluded ones inside
KEPT_CATEGORIES = ("L", "N", "S")
EXCLUDED_CATEGORIES = frozenset({"Lm", "Sk"})  # modifier letters and symbols: accents and tone marks

#: alphabets (scripts or blocks) of the meta-val and meta-test splits; every other alphabet is meta-train.
#: Meta-test holds seven scripts that meta-train does not contain (like Omniglot's 20
#: evaluation alphabets); meta-val holds Cyrillic and two symbol blocks, for model selection.
SPLIT_GROUPS: dict[str, tuple[str, ...]] = {
    "val": ("Cyrillic", "Miscellaneous Technical", "Supplemental Arrows-B"),
    "test": ("Armenian", "Arabic", "Coptic", "Georgian", "Hebrew", "Lao", "Old Italic"),
}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RenderSettings:
    """How prototypes are rendered and selected (all part of the cache key)."""

    image_size: int = 28  # output side in pixels
    supersample: int = 2  # prototypes are rendered at supersample * image_size, warped, then averaged down
    fill: float = 0.68  # longer side of a character / frame side (Omniglot's median: 0.64 measured at 28 x 28)
    min_fonts: int = 3  # a character is a class when at least this many fonts draw it
    duplicate_threshold: float = 0.95  # correlation (same font) above which two characters count as alike
    case_threshold: float = 0.8  # the same for a lowercase letter and its capital (the frame hides their sizes)
    solid_stroke: float = 3.0  # output px: a class whose median stroke is wider is a solid shape, dropped
    consistency: float = 0.4  # a prototype correlating below this with every other family's is another design
    stroke_target: float = 1.15  # output px: thicker prototypes are thinned towards it (Omniglot: 1.2)
    max_thinning: float = 1.0  # output px: at most this much thinner (keeps the hairlines of bold fonts)
    render_px: int = 64  # em size at which Pillow rasterises before resizing
    fonts: tuple[str, ...] | None = None  # font file stems to use (None: all usable fonts); smoke runs use a few


@dataclass(frozen=True)
class Distortion:
    """Ranges of the random per-instance distortion (uniform in each range)."""

    rotation_deg: float = 12.0  # +- degrees
    scale: tuple[float, float] = (0.75, 1.25)  # overall size factor
    aspect: float = 0.12  # +- relative difference between x and y scale
    shear: float = 0.2  # +- shear factor
    translate: float = 0.06  # +- shift, fraction of the frame side
    stroke: tuple[float, float] = (-0.45, 0.3)  # change of stroke width, output pixels

    def __post_init__(self):
        if not (0 < self.scale[0] <= self.scale[1]):
            raise ValueError(f"scale range must satisfy 0 < low <= high, got {self.scale}")
        if not (self.stroke[0] <= self.stroke[1]):
            raise ValueError(f"stroke range must satisfy low <= high, got {self.stroke}")


NO_DISTORTION = Distortion(rotation_deg=0.0, scale=(1.0, 1.0), aspect=0.0, shear=0.0, translate=0.0, stroke=(0.0, 0.0))


# ------------------------------------------------------------------------------------------ fonts
def font_dir() -> Path:
    """matplotlib's bundled TrueType fonts."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def usable_fonts(directory: Path | None = None) -> list[Path]:
    """The font files used for rendering: every ``.ttf`` except :data:`EXCLUDED_FONTS`, sorted by name."""
    directory = Path(directory) if directory is not None else font_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"font directory {directory} does not exist (matplotlib installation incomplete?)")
    fonts = sorted(p for p in directory.glob("*.ttf") if not p.name.startswith(tuple(EXCLUDED_FONTS)))
    if not fonts:
        raise FileNotFoundError(f"no usable .ttf fonts in {directory}")
    return fonts


def selected_fonts(settings: "RenderSettings") -> list[Path]:
    """The usable fonts, restricted to ``settings.fonts`` when given (unknown names raise)."""
    fonts = usable_fonts()
    if settings.fonts is None:
        return fonts
    by_stem = {p.stem: p for p in fonts}
    unknown = [name for name in settings.fonts if name not in by_stem]
    if unknown:
        raise ValueError(f"unknown or excluded fonts {unknown}; usable fonts: {sorted(by_stem)}")
    return [by_stem[name] for name in settings.fonts]


def font_coverage(path: Path) -> set[int]:
    """Code points that ``path`` maps to a glyph whose name agrees with the code point.

    A glyph name that the Adobe Glyph List decodes to a *different* character (cmr10's ``<`` slot holds
    ``exclamdown``) marks a slot that draws something else; names it cannot decode (``uni0237.alt``,
    ``glyph123``) are trusted.
    """
    from fontTools import agl
    from fontTools.ttLib import TTFont

    cmap = TTFont(str(path), lazy=True).getBestCmap() or {}
    covered = set()
    for code, name in cmap.items():
        decoded = agl.toUnicode(name)
        if decoded and decoded != chr(code):
            continue
        covered.add(code)
    return covered


# ------------------------------------------------------------------------------------- characters
def character_group(ch: str) -> str:
    """The alphabet of a character: its Unicode script name, or its block for Common/Inherited script."""
    from fontTools import unicodedata as fu

    script = fu.script(ch)
    if script in ("Zyyy", "Zinh", "Zzzz"):
        return fu.block(ch)
    return fu.script_name(script)


def split_of_group(group: str) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for an alphabet (see :data:`SPLIT_GROUPS`)."""
    for split, groups in SPLIT_GROUPS.items():
        if group in groups:
            return split
    return "train"


def is_candidate(ch: str) -> bool:
    """Whether ``ch`` may be a class: a letter, number or symbol that is not a mark, variant or picture."""
    from fontTools import unicodedata as fu

    category = unicodedata.category(ch)
    return (
        category[0] in KEPT_CATEGORIES
        and category not in EXCLUDED_CATEGORIES
        and unicodedata.normalize("NFKC", ch) == ch
        and fu.block(ch) not in EXCLUDED_BLOCKS
    )


# -------------------------------------------------------------------------------------- rendering
def _render(font, ch: str, settings: RenderSettings) -> np.ndarray | None:
    """One prototype: uint8 ``(S, S)``, S = supersample * image_size, character centred, longer side = fill * S.

    Returns None when the font draws nothing visible for ``ch``.
    """
    from PIL import Image

    mask = font.getmask(ch, mode="L")
    if mask.size[0] == 0 or mask.size[1] == 0:
        return None
    ink = Image.frombytes("L", mask.size, bytes(mask))
    bbox = ink.getbbox()
    if bbox is None or (bbox[2] - bbox[0]) * (bbox[3] - bbox[1]) < 4:
        return None
    ink = ink.crop(bbox)
    side = settings.supersample * settings.image_size
    scale = settings.fill * side / max(ink.size)
    size = (max(1, round(ink.size[0] * scale)), max(1, round(ink.size[1] * scale)))
    canvas = Image.new("L", (side, side))
    canvas.paste(ink.resize(size, Image.LANCZOS), ((side - size[0]) // 2, (side - size[1]) // 2))
    return np.asarray(canvas)


def _extremum3x3(x: torch.Tensor, op=torch.maximum) -> torch.Tensor:
    """3 x 3 maximum (``op=torch.maximum``, a grey-level dilation) or minimum (``torch.minimum``, an erosion)
    filter of ``(..., H, W)``, from shifted slices.

    ``F.max_pool2d`` with stride 1 computes the maximum too but is several times slower on CPU.
    """
    rows = x.clone()
    op(rows[..., 1:], x[..., :-1], out=rows[..., 1:])
    op(rows[..., :-1], x[..., 1:], out=rows[..., :-1])
    out = rows.clone()
    op(out[..., 1:, :], rows[..., :-1, :], out=out[..., 1:, :])
    op(out[..., :-1, :], rows[..., 1:, :], out=out[..., :-1, :])
    return out


def _change_stroke(x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Thicken (``steps > 0``) or thin (``< 0``) the strokes of float images ``(n, 1, S, S)``.

    ``steps`` ``(n,)`` in ``[-1, 1]``: the fraction of a one-pixel grey-level dilation or erosion to blend
    in. Each image is moved only towards the one it needs.
    """
    if steps.abs().max() > 1:
        raise ValueError(f"stroke steps must lie in [-1, 1], got {steps.abs().max().item():.3f}")
    x = x.clone()
    for sign, op in ((1, torch.maximum), (-1, torch.minimum)):
        idx = (steps * sign > 0).nonzero().flatten()
        if len(idx):
            part = x[idx]
            x[idx] = part.lerp_(_extremum3x3(part, op), (steps[idx] * sign).to(part.dtype).view(-1, 1, 1, 1))
    return x


def stroke_width(images: torch.Tensor) -> torch.Tensor:
    """Mean stroke width of ``(n, ..., H, W)`` images in pixels: ink area / half the ink outline length.

    A stroke of width w and length L has area wL and outline 2L; exact for long strokes, too small for
    blobs. Pixels above half intensity count as ink.
    """
    b = images.flatten(0, -3) > (127 if images.dtype == torch.uint8 else 0.5)
    outline = (b[:, 1:, :] != b[:, :-1, :]).sum((1, 2)) + (b[:, :, 1:] != b[:, :, :-1]).sum((1, 2))
    return b.sum((1, 2)).float() / (outline.float() / 2).clamp_min(1.0)


@dataclass
class GlyphPrototypes:
    """Every (character, font) prototype of the data set, with the class and split tables.

    ``images``: uint8 ``(P, S, S)``; ``proto_class`` and ``proto_font``: ``(P,)`` indices into ``chars``
    and ``fonts``. Per class: ``chars`` (the character), ``groups`` (alphabet), ``splits``.
    ``dropped``: near-duplicate characters left out, mapped to the kept character they resemble;
    ``solid``: characters left out as solid shapes; ``inconsistent``: characters left out because fewer
    than ``min_fonts`` fonts draw the same design; ``other_designs``: prototypes left out as another design.
    """

    images: torch.Tensor
    proto_class: torch.Tensor
    proto_font: torch.Tensor
    chars: list[str]
    groups: list[str]
    splits: list[str]
    fonts: list[str]
    settings: RenderSettings
    dropped: dict[str, str]
    solid: str = ""
    inconsistent: str = ""
    other_designs: int = 0

    def classes_of(self, split: str) -> list[int]:
        """Indices of the classes of ``split`` (``"train"``, ``"val"``, ``"test"``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
        return [i for i, s in enumerate(self.splits) if s == split]

    def summary(self) -> dict[str, dict[str, int]]:
        """Per split: number of classes, alphabets and prototypes."""
        out = {}
        counts = torch.bincount(self.proto_class, minlength=len(self.chars))
        for split in SPLITS:
            idx = self.classes_of(split)
            out[split] = {
                "classes": len(idx),
                "alphabets": len({self.groups[i] for i in idx}),
                "prototypes": int(counts[idx].sum()) if idx else 0,
            }
        return out


def _features(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Centred, unit-norm images at output size for the look-alike test: ``(P, S, S)`` uint8 -> ``(P, D)``."""
    x = F.adaptive_avg_pool2d(images.float().unsqueeze(1) / 255.0, image_size).flatten(1)
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)


def font_family(path: Path) -> str:
    """The family name a font declares (``"DejaVu Sans"`` for DejaVuSans-Bold.ttf)."""
    from fontTools.ttLib import TTFont

    return TTFont(str(path), lazy=True)["name"].getDebugName(1) or path.stem


def find_other_designs(images: torch.Tensor, proto_class: torch.Tensor, proto_family: torch.Tensor,
                       threshold: float, image_size: int) -> torch.Tensor:
    """``(P,)`` bool: prototypes that draw another design of their character than the other font families.

    A prototype is flagged when its best correlation with the prototypes of the same character in the
    *other* font families (in its own family's other fonts, for a character of one family) is below
    ``threshold``: DejaVu Serif, for instance, draws the Georgian capitals in another style than DejaVu
    Sans, and one example of one style says little about the other.
    """
    feats = _features(images, image_size)
    flagged = torch.zeros(len(images), dtype=torch.bool)
    order = torch.argsort(proto_class, stable=True)
    counts = torch.bincount(proto_class)
    for idx in torch.split(order, counts[counts > 0].tolist()):
        if len(idx) < 2:
            continue
        sim = feats[idx] @ feats[idx].T
        fam = proto_family[idx]
        other = fam.unsqueeze(0) != fam.unsqueeze(1)
        lonely = ~other.any(1)  # a family alone: compare with its own other fonts
        allowed = other | (lonely.unsqueeze(1) & ~torch.eye(len(idx), dtype=torch.bool))
        best = sim.masked_fill(~allowed, -2.0).max(1).values
        flagged[idx] = best < threshold
    return flagged


def find_duplicates(images: torch.Tensor, proto_class: torch.Tensor, proto_font: torch.Tensor, order: list[int],
                    threshold: float, image_size: int, case_pairs: list[tuple[int, int]] = (),
                    case_threshold: float = 1.0) -> dict[int, int]:
    """Greedy look-alike removal. Returns ``{dropped class: kept class it resembles}``.

    Classes are visited in ``order``; a class is dropped when, in some font that draws both, its prototype
    correlates above ``threshold`` with the prototype of a class kept before it; for the pairs of
    ``case_pairs`` (a lowercase letter and its capital) above ``case_threshold``.
    """
    feats = _features(images, image_size)
    n_classes = int(proto_class.max()) + 1
    rank = torch.empty(n_classes, dtype=torch.long)
    rank[torch.as_tensor(order)] = torch.arange(len(order))
    pairs = torch.as_tensor(list(case_pairs), dtype=torch.long).view(-1, 2)
    firsts, laters = [], []
    for font in proto_font.unique().tolist():
        idx = (proto_font == font).nonzero().flatten()
        sim = feats[idx] @ feats[idx].T
        alike = sim > threshold
        row = torch.full((n_classes,), -1, dtype=torch.long)
        row[proto_class[idx]] = torch.arange(len(idx))  # one prototype per (character, font)
        ra, rb = row[pairs[:, 0]], row[pairs[:, 1]]
        both = (ra >= 0) & (rb >= 0)
        ra, rb = ra[both], rb[both]
        alike[ra, rb] |= sim[ra, rb] > case_threshold
        alike[rb, ra] |= sim[rb, ra] > case_threshold
        a, b = torch.triu(alike, diagonal=1).nonzero(as_tuple=True)
        ca, cb = proto_class[idx[a]], proto_class[idx[b]]
        swap = rank[ca] > rank[cb]
        firsts.append(torch.where(swap, cb, ca))
        laters.append(torch.where(swap, ca, cb))
    first, later = torch.cat(firsts), torch.cat(laters)
    alike: dict[int, list[int]] = {}
    for f, l in torch.stack([first, later], 1).unique(dim=0).tolist():
        if f != l:
            alike.setdefault(l, []).append(f)
    dropped: dict[int, int] = {}
    for c in order:
        for other in sorted(alike.get(c, ()), key=lambda o: int(rank[o])):
            if other not in dropped:
                dropped[c] = other
                break
    return dropped


def build_prototypes(settings: RenderSettings = RenderSettings(), chars: str | None = None) -> GlyphPrototypes:
    """Render every prototype from scratch (no cache). ``chars`` restricts the candidates (tests)."""
    from PIL import ImageFont

    fonts = selected_fonts(settings)
    coverage = [font_coverage(p) for p in fonts]
    if chars is None:
        counts: dict[int, int] = {}
        for cov in coverage:
            for code in cov:
                counts[code] = counts.get(code, 0) + 1
        codes = sorted(c for c, n in counts.items() if n >= settings.min_fonts and is_candidate(chr(c)))
    else:
        codes = sorted({ord(ch) for ch in chars})
    loaded = [ImageFont.truetype(str(p), settings.render_px) for p in fonts]

    images, proto_code, proto_font = [], [], []
    for code in codes:
        rendered = []
        for f, (cov, font) in enumerate(zip(coverage, loaded)):
            if code in cov:
                proto = _render(font, chr(code), settings)
                if proto is not None:
                    rendered.append((proto, f))
        if len(rendered) >= settings.min_fonts:
            for proto, f in rendered:
                images.append(proto)
                proto_code.append(code)
                proto_font.append(f)
    if not images:
        raise ValueError(f"no character is drawn by at least {settings.min_fonts} of the {len(fonts)} fonts")

    images_t = torch.from_numpy(np.stack(images))
    code_t = torch.tensor(proto_code)
    font_t = torch.tensor(proto_font)

    # strokes: drop solid shapes (Omniglot characters are pen strokes), thin bold prototypes towards the target
    width = torch.cat([stroke_width(chunk) for chunk in images_t.split(1024)]) / settings.supersample
    solid = {c for c in set(proto_code) if width[code_t == c].median() > settings.solid_stroke}
    thinning = (width - settings.stroke_target).clamp(0.0, settings.max_thinning) * (settings.supersample / 2.0)
    for start in range(0, len(images_t), 1024):
        sl = slice(start, start + 1024)
        if thinning[sl].max() > 0:
            x = _change_stroke(images_t[sl].float().unsqueeze(1) / 255.0, -thinning[sl])
            images_t[sl] = x.squeeze(1).mul_(255.0).round_().to(torch.uint8)

    # designs: drop prototypes no other font family draws alike, then characters left with too few fonts
    families = [font_family(p) for p in fonts]
    family_t = torch.tensor([sorted(set(families)).index(families[f]) for f in proto_font])
    other_design = find_other_designs(images_t, code_t, family_t, settings.consistency, settings.image_size)
    images_t, code_t, font_t = images_t[~other_design], code_t[~other_design], font_t[~other_design]
    n_fonts = torch.bincount(code_t, minlength=max(proto_code) + 1)
    inconsistent = {c for c in set(proto_code) if n_fonts[c] < settings.min_fonts} - solid

    kept_codes = sorted(set(proto_code) - solid - inconsistent)
    chars_all = [chr(c) for c in kept_codes]
    groups_all = [character_group(ch) for ch in chars_all]
    splits_all = [split_of_group(g) for g in groups_all]
    index = torch.full((max(proto_code) + 1,), -1, dtype=torch.long)
    index[torch.as_tensor(kept_codes)] = torch.arange(len(kept_codes))
    cls_t = index[code_t]
    mask = cls_t >= 0
    images_t, cls_t, font_t = images_t[mask], cls_t[mask], font_t[mask]

    order = sorted(range(len(chars_all)), key=lambda i: (SPLITS.index(splits_all[i]), kept_codes[i]))
    position = {ch: i for i, ch in enumerate(chars_all)}
    case_pairs = [(i, position[ch.upper()]) for i, ch in enumerate(chars_all)
                  if ch.upper() != ch and ch.upper() in position]
    dup = find_duplicates(images_t, cls_t, font_t, order, settings.duplicate_threshold, settings.image_size,
                          case_pairs, settings.case_threshold)
    keep = [i for i in range(len(chars_all)) if i not in dup]
    remap = torch.full((len(chars_all),), -1, dtype=torch.long)
    remap[torch.as_tensor(keep)] = torch.arange(len(keep))
    mask = remap[cls_t] >= 0
    return GlyphPrototypes(
        images=images_t[mask],
        proto_class=remap[cls_t[mask]],
        proto_font=font_t[mask],
        chars=[chars_all[i] for i in keep],
        groups=[groups_all[i] for i in keep],
        splits=[splits_all[i] for i in keep],
        fonts=[p.stem for p in fonts],
        settings=settings,
        dropped={chars_all[d]: chars_all[k] for d, k in dup.items()},
        solid="".join(chr(c) for c in sorted(solid)),
        inconsistent="".join(chr(c) for c in sorted(inconsistent)),
        other_designs=int(other_design.sum()),
    )


# ------------------------------------------------------------------------------------------ cache
#: the functions whose code decides the prototypes' pixels: their source is part of the cache key, so an
#: edited rule or filter never reads prototypes that the old code built
_BUILD_FUNCTIONS = ("build_prototypes", "_render", "_features", "find_other_designs", "find_duplicates",
                    "_change_stroke", "_extremum3x3", "stroke_width", "character_group", "split_of_group",
                    "is_candidate", "font_coverage", "usable_fonts", "selected_fonts", "font_family")


def _source_digest() -> str:
    import inspect

    module = sys.modules[__name__]
    h = hashlib.sha256()
    for name in _BUILD_FUNCTIONS:
        h.update(inspect.getsource(getattr(module, name)).encode())
    return h.hexdigest()[:16]


def _cache_key(settings: RenderSettings, fonts: list[Path]) -> str:
    from PIL import features

    blob = json.dumps({
        "source": _source_digest(),
        "version": GLYPHS_VERSION,
        "settings": dataclasses.asdict(settings),
        "fonts": [(p.name, p.stat().st_size) for p in fonts],
        "matplotlib": matplotlib.__version__,
        "freetype": features.version("freetype2"),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prototype_cache_path(settings: RenderSettings = RenderSettings()) -> Path:
    """Where :func:`load_prototypes` caches the prototypes built with ``settings``."""
    return config.cache_dir() / "glyphs" / f"prototypes-v{GLYPHS_VERSION}-{_cache_key(settings, selected_fonts(settings))}.npz"


def data_key(settings: RenderSettings, n_per_class: int, max_classes: int | None) -> str:
    """A string that identifies the glyph data of :func:`load_glyphs` with these arguments (the prototypes'
    cache key, which covers version, settings, fonts and building code, and the instance counts): what a
    resumable training keys its checkpoint by (:func:`mtml_lib.fewshot.checkpoint_path`)."""
    return f"{prototype_cache_path(settings).stem}/{n_per_class}/{max_classes}"


def load_prototypes(settings: RenderSettings = RenderSettings(), cache: bool = True) -> GlyphPrototypes:
    """The full prototype set, from the on-disk cache when present (built and cached otherwise)."""
    path = prototype_cache_path(settings)
    if cache and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return GlyphPrototypes(
                images=torch.from_numpy(z["images"]),
                proto_class=torch.from_numpy(z["proto_class"]).long(),
                proto_font=torch.from_numpy(z["proto_font"]).long(),
                chars=meta["chars"], groups=meta["groups"], splits=meta["splits"], fonts=meta["fonts"],
                settings=settings, dropped=meta["dropped"], solid=meta["solid"],
                inconsistent=meta["inconsistent"], other_designs=meta["other_designs"],
            )
    protos = build_prototypes(settings)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: getattr(protos, k) for k in ("chars", "groups", "splits", "fonts", "dropped", "solid", "inconsistent",
                                               "other_designs")}
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, images=protos.images.numpy(), proto_class=protos.proto_class.numpy().astype(np.int32),
                            proto_font=protos.proto_font.numpy().astype(np.int16), meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)  # atomic: concurrent builders never see a half-written file
    return protos


# ------------------------------------------------------------------------------------ distortions
def sample_distortions(n: int, generator: torch.Generator, distortion: Distortion = Distortion()) -> dict[str, torch.Tensor]:
    """``n`` random distortions: each entry a ``(n,)`` tensor (angles in radians, stroke in output pixels)."""
    def uniform(low, high):
        return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

    d = distortion
    return {
        "rotation": uniform(-d.rotation_deg, d.rotation_deg) * (np.pi / 180.0),
        "scale": torch.exp(uniform(np.log(d.scale[0]), np.log(d.scale[1]))),
        "aspect": uniform(-d.aspect, d.aspect),
        "shear": uniform(-d.shear, d.shear),
        "tx": uniform(-d.translate, d.translate),
        "ty": uniform(-d.translate, d.translate),
        "stroke": uniform(d.stroke[0], d.stroke[1]),
    }


def _sampling_grids(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(n, 2, 3)`` matrices that map output coordinates to prototype coordinates (``affine_grid`` convention).

    The forward map is ``o = R(rotation) · Shear · diag(sx, sy) · p + t`` in ``[-1, 1]`` frame coordinates;
    the grid needs its inverse.
    """
    a, s, k = params["rotation"], params["scale"], params["shear"]
    sx, sy = s * (1 + params["aspect"]), s * (1 - params["aspect"])
    cos, sin = torch.cos(a), torch.sin(a)
    # R @ [[1, k], [0, 1]] @ diag(sx, sy)
    m00, m01 = cos * sx, (cos * k - sin) * sy
    m10, m11 = sin * sx, (sin * k + cos) * sy
    det = m00 * m11 - m01 * m10
    i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det
    t = torch.stack([params["tx"], params["ty"]], dim=-1) * 2  # fraction of the frame -> [-1, 1] units
    inv = torch.stack([torch.stack([i00, i01], -1), torch.stack([i10, i11], -1)], dim=-2)
    shift = -(inv @ t.unsqueeze(-1))
    return torch.cat([inv, shift], dim=-1).float()


def _grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``affine_grid`` for a square output of side ``size`` (``align_corners=False``), written elementwise.

    Same values as ``F.affine_grid``, which goes through a batched matmul that is several times slower on CPU.
    """
    lin = (torch.arange(size, dtype=theta.dtype) + 0.5) * (2.0 / size) - 1.0
    x, y = lin.view(1, 1, size), lin.view(1, size, 1)
    t = theta.reshape(-1, 6, 1, 1)
    return torch.stack([t[:, 0] * x + t[:, 1] * y + t[:, 2], t[:, 3] * x + t[:, 4] * y + t[:, 5]], dim=-1)


def _blur121(x: torch.Tensor) -> torch.Tensor:
    """Separable [1, 2, 1] / 4 blur of ``(..., H, W)``: the antialiasing filter before 2x subsampling."""
    y = x * 0.5
    y[..., 1:].add_(x[..., :-1], alpha=0.25)
    y[..., :-1].add_(x[..., 1:], alpha=0.25)
    z = y * 0.5
    z[..., 1:, :].add_(y[..., :-1, :], alpha=0.25)
    z[..., :-1, :].add_(y[..., 1:, :], alpha=0.25)
    return z


def warp(prototypes: torch.Tensor, params: dict[str, torch.Tensor], supersample: int) -> torch.Tensor:
    """Distort a batch of prototypes: uint8 ``(n, S, S)`` -> float32 ``(n, 1, S / supersample, S / supersample)``.

    The stroke width changes first (a blend towards a one-pixel grey-level dilation or erosion at prototype
    resolution: at ``supersample`` 2 one full step moves each stroke edge by half an output pixel, so the
    width by one output pixel), then the prototype is low-pass filtered and sampled bilinearly on the
    affinely transformed output grid.
    """
    x = prototypes.float().unsqueeze(1).mul_(1.0 / 255.0)
    steps = params["stroke"].float() * (supersample / 2.0)
    if steps.abs().max() > 1:
        raise ValueError(f"stroke change {params['stroke'].abs().max().item():.2f} px exceeds the supported "
                         f"{2.0 / supersample:.2f} px at supersample {supersample}")
    if steps.abs().max() > 0:
        x = _change_stroke(x, steps)
    if supersample > 1:
        x = _blur121(x)
    grid = _grid(_sampling_grids(params), x.shape[-1] // supersample)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0.0, 1.0)


# ------------------------------------------------------------------------------------------ splits
def _split_seed(seed: int, split: str) -> int:
    # each split gets its own random stream, so drawing val does not change test
    return (int(seed) * 1_000_003 + zlib.crc32(split.encode())) % (2**63)


def make_instances(protos: GlyphPrototypes, classes: list[int], n_per_class: int, seed: int,
                   distortion: Distortion = Distortion(), batch_size: int = 512) -> torch.Tensor:
    """uint8 ``(len(classes), n_per_class, 1, H, W)`` instances, deterministic in ``seed``.

    Instance ``j`` of a class uses the class's fonts in a random order, cycling when ``n_per_class``
    exceeds the number of fonts, each with its own random distortion.
    """
    g = torch.Generator().manual_seed(int(seed))
    by_class: dict[int, list[int]] = {}
    for p, c in enumerate(protos.proto_class.tolist()):
        by_class.setdefault(c, []).append(p)
    chosen = []
    for c in classes:
        members = torch.as_tensor(by_class[c])
        perm = members[torch.randperm(len(members), generator=g)]
        chosen.append(perm[torch.arange(n_per_class) % len(perm)])
    proto_idx = torch.stack(chosen).flatten()
    params = sample_distortions(len(proto_idx), g, distortion)
    s = protos.settings
    out = torch.empty(len(proto_idx), 1, s.image_size, s.image_size, dtype=torch.uint8)
    for start in range(0, len(proto_idx), batch_size):
        sl = slice(start, start + batch_size)
        images = warp(protos.images[proto_idx[sl]], {k: v[sl] for k, v in params.items()}, s.supersample)
        out[sl] = images.mul_(255.0).round_().to(torch.uint8)
    return out.view(len(classes), n_per_class, 1, s.image_size, s.image_size)


def load_glyphs(split: str = "train", n_per_class: int = 20, seed: int = 0, distortion: Distortion = Distortion(),
                settings: RenderSettings = RenderSettings(), max_classes: int | None = None,
                protos: GlyphPrototypes | None = None, draw: int = 0) -> ClassDataset:
    """One split of the glyph data set: ``n_per_class`` distorted instances of each of its characters.

    ``max_classes`` keeps a seeded random subset of the classes (for quick runs). ``protos`` reuses
    prototypes already loaded (:func:`load_prototypes`). ``draw`` numbers independent draws of the
    instances of the same classes (fresh fonts order and distortions). Deterministic in ``seed`` and ``draw``.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    protos = protos if protos is not None else load_prototypes(settings)
    classes = protos.classes_of(split)
    if not classes:
        raise ValueError(f"the {split} split has no classes with these settings")
    if max_classes is not None and max_classes < len(classes):
        g = torch.Generator().manual_seed(_split_seed(seed, split + "/subset"))
        pick = torch.randperm(len(classes), generator=g)[:max_classes].sort().values
        classes = [classes[i] for i in pick.tolist()]
    images = make_instances(protos, classes, n_per_class, _split_seed(seed, f"{split}/{draw}"), distortion)
    return ClassDataset(
        images=images,
        class_names=[protos.chars[c] for c in classes],
        groups=[protos.groups[c] for c in classes],
        split=split,
        info={"source": "glyphs", "version": GLYPHS_VERSION, "seed": seed, "draw": draw,
              "distortion": dataclasses.asdict(distortion)},
    )
