"""Omniglot (Lake, Salakhutdinov and Tenenbaum 2015) from its official files, with the published splits.

Omniglot has 1,623 handwritten characters from 50 alphabets, each drawn by 20 people, as 105 x 105
black-on-white PNG files. Its authors publish it (MIT licence) at https://github.com/brendenlake/omniglot
(folder ``python/``) as zip files with this layout, which this loader reads as zip files or extracted::

    images_background.zip   images_background/<Alphabet>/characterNN/<id>_<drawer>.png   30 alphabets, 964 characters
    images_evaluation.zip   images_evaluation/<Alphabet>/characterNN/<id>_<drawer>.png   20 alphabets, 659 characters
    images_background_small1.zip, images_background_small2.zip   5 background alphabets each ("minimal" splits)

Put them (zipped or not) into one folder and pass it as ``path`` (or one of the zip files itself), or set
``MTML_DATA`` to that folder (or to a folder holding an ``omniglot/`` subfolder). Nothing is downloaded.

**Integrity.** What is read is checked against the official release (:data:`OFFICIAL_ALPHABETS`: every
alphabet and its number of characters, 20 drawers per character; ``background_small1`` holds Balinese,
Early_Aramaic, Greek, Korean and Latin, 136 characters; ``background_small2`` five other background
alphabets, each complete). A missing alphabet, a missing character or a character with fewer drawings
raises :class:`OmniglotIntegrityError` naming it; a user-made subset of the official alphabets loads only
when asked for (``check="subset"``), data of one's own in the same layout with ``check="none"``. The
decoded images are cached under ``mtml_lib.config.cache_dir()/omniglot``, keyed by the name and size of
every file read (and each zip member's checksum), so edited data is never served stale. Every read error
names the file (the zip and the member).

**Protocols** (:func:`load_protocol`, :data:`PROTOCOLS`): the character splits few-shot papers report on.

* ``vinyals``: Vinyals et al. (2016)'s split as used by Snell et al. (2017, Prototypical Networks) and Finn
  et al. (2017, MAML): 1,200 characters for training and 423 for testing, every character rotated by 0,
  90, 180 and 270 degrees (each rotation a class of its own), 28 x 28. With alphabets in alphabetical
  order, background before evaluation, the 1,200 training characters are the 964 background characters
  and the evaluation alphabets Angelic to Glagolitic with Gurmukhi characters 1-41; the test characters
  are Gurmukhi 42-45 and the twelve evaluation alphabets after it (Kannada to ULOG). Snell et al.'s split
  files hold out five background alphabets for validation (Armenian, Bengali, Early_Aramaic, Hebrew,
  Mkhedruli_(Georgian): 172 characters), leaving 1,028 for training: 4,112 / 688 / 1,692 classes with
  rotations, the counts they report. These lists are rebuilt from those counts and from the alphabet lists
  in the public record; the split files themselves could not be compared line by line offline.
* ``lake``: Lake et al. (2015)'s split: the 30 background alphabets for training, the 20 evaluation
  alphabets for testing, no rotations; validation holds out the same five background alphabets as
  ``vinyals`` (a choice of this package: Lake et al. use no validation split).
* ``small1``: for a machine that has only ``images_background_small1`` (not a published protocol):
  Greek, Korean and Latin for training, Early_Aramaic for validation, Balinese for testing, with rotations.

Numbers are comparable with a paper only on its protocol: the ProtoNet / MAML figures usually quoted for
Omniglot (98.8 % / 98.7 % 5-way 1-shot) are ``vinyals`` numbers.

Images come out in the conventions of :mod:`mtml_lib.data.glyphs`: one channel, ``image_size`` square,
ink = 1 on a background of 0 (Omniglot's black ink on white is inverted), values in ``[0, 1]``; the
official framing is kept (a character's longer side is about 0.64 of the frame, which glyphs imitate).
:func:`preprocess` is that transformation for one image file, :func:`locate` maps an official file name
to its (class, instance) in a loaded data set (for fixed, published lists of test episodes).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtml_lib import config
from mtml_lib.data.episodes import ClassDataset

#: split name -> folder / zip stem of the official release
SPLIT_NAMES: dict[str, str] = {
    "background": "images_background",
    "evaluation": "images_evaluation",
    "background_small1": "images_background_small1",
    "background_small2": "images_background_small2",
}
ROTATIONS = (0, 90, 180, 270)
CACHE_VERSION = 2
#: drawers (images) per character in the official release
DRAWERS = 20

#: the official release: split -> {alphabet folder: number of characters} (Lake et al. 2015)
OFFICIAL_ALPHABETS: dict[str, dict[str, int]] = {
    "background": {
        "Alphabet_of_the_Magi": 20, "Anglo-Saxon_Futhorc": 29, "Arcadian": 26, "Armenian": 41,
        "Asomtavruli_(Georgian)": 40, "Balinese": 24, "Bengali": 46, "Blackfoot_(Canadian_Aboriginal_Syllabics)": 14,
        "Braille": 26, "Burmese_(Myanmar)": 34, "Cyrillic": 33, "Early_Aramaic": 22, "Futurama": 26, "Grantha": 43,
        "Greek": 24, "Gujarati": 48, "Hebrew": 22, "Inuktitut_(Canadian_Aboriginal_Syllabics)": 16,
        "Japanese_(hiragana)": 52, "Japanese_(katakana)": 47, "Korean": 40, "Latin": 26, "Malay_(Jawi_-_Arabic)": 40,
        "Mkhedruli_(Georgian)": 41, "N_Ko": 33, "Ojibwe_(Canadian_Aboriginal_Syllabics)": 14, "Sanskrit": 42,
        "Syriac_(Estrangelo)": 23, "Tagalog": 17, "Tifinagh": 55,
    },
    "evaluation": {
        "Angelic": 20, "Atemayar_Qelisayer": 26, "Atlantean": 26, "Aurek-Besh": 26, "Avesta": 26, "Ge_ez": 26,
        "Glagolitic": 45, "Gurmukhi": 45, "Kannada": 41, "Keble": 26, "Malayalam": 47, "Manipuri": 40,
        "Mongolian": 30, "Old_Church_Slavonic_(Cyrillic)": 45, "Oriya": 46, "Sylheti": 28, "Syriac_(Serto)": 23,
        "Tengwar": 25, "Tibetan": 42, "ULOG": 26,
    },
}
#: the alphabets of the "minimal" background splits (None: five complete background alphabets, not pinned)
SMALL_SPLITS: dict[str, tuple[str, ...] | None] = {
    "background_small1": ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"),
    "background_small2": None,
}
CHECKS = ("official", "subset", "none")

HOW_TO_GET = (
    "Omniglot is not downloaded automatically. Get images_background.zip and images_evaluation.zip from "
    "https://github.com/brendenlake/omniglot (folder python/), put them (zipped or extracted) into one folder, "
    "and pass that folder as path=... or set the environment variable MTML_DATA to it."
)


class OmniglotNotFound(FileNotFoundError):
    """The Omniglot files are not where the loader looked; the message says where to put them."""


class OmniglotIntegrityError(ValueError):
    """The files read are not the official release (an alphabet, a character or drawings missing or extra),
    or a file cannot be read; the message names what and where."""


def data_root(path: str | os.PathLike | None = None) -> Path:
    """The folder to read Omniglot from: ``path``, else ``MTML_DATA`` (or its ``omniglot/`` subfolder).

    ``path`` may also be one of the official zip files itself; its folder is then the root."""
    if path is not None:
        root = Path(path).expanduser()
        if root.is_file():
            if root.suffix == ".zip" and root.stem in SPLIT_NAMES.values():
                return root.parent
            raise OmniglotNotFound(f"Omniglot path {str(root)!r} is a file, not a folder nor an official zip "
                                   f"({', '.join(f'{v}.zip' for v in SPLIT_NAMES.values())}). {HOW_TO_GET}")
        if not root.is_dir():
            raise OmniglotNotFound(f"Omniglot folder {str(root)!r} does not exist. {HOW_TO_GET}")
        return root
    env = os.environ.get("MTML_DATA")
    if not env:
        raise OmniglotNotFound(f"no Omniglot path given and MTML_DATA is not set. {HOW_TO_GET}")
    root = Path(env).expanduser()
    if (root / "omniglot").is_dir():
        root = root / "omniglot"
    if not root.is_dir():
        raise OmniglotNotFound(f"MTML_DATA={env!r} is not a folder. {HOW_TO_GET}")
    return root


def _source(root: Path, split: str) -> Path:
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown Omniglot split {split!r}; valid splits: {list(SPLIT_NAMES)}")
    stem = SPLIT_NAMES[split]
    for candidate in (root / stem, root / f"{stem}.zip"):
        if candidate.exists():
            return candidate
    present = sorted(p.name for p in root.iterdir())[:20]
    raise OmniglotNotFound(
        f"Omniglot split {split!r} not found in {str(root)!r}: looked for folder {stem}/ and file {stem}.zip; "
        f"the folder holds {present}. {HOW_TO_GET}"
    )


def available_splits(path: str | os.PathLike | None = None) -> list[str]:
    """The splits present under ``path`` (or ``MTML_DATA``); empty when there is no such folder."""
    try:
        root = data_root(path)
    except OmniglotNotFound:
        return []
    return [s for s, stem in SPLIT_NAMES.items() if (root / stem).exists() or (root / f"{stem}.zip").exists()]


def search_paths() -> list[Path]:
    """Where :func:`find_data` looks, in order: ``MTML_DATA`` (and its ``omniglot/``), ``<repo>/data/omniglot``,
    and ``<repo>/../shared/data/omniglot`` (a data folder shared by several checkouts of the project)."""
    paths = []
    env = os.environ.get("MTML_DATA")
    if env:
        paths += [Path(env).expanduser() / "omniglot", Path(env).expanduser()]
    root = config.repo_root()
    return paths + [root / "data" / "omniglot", root.parent / "shared" / "data" / "omniglot"]


def find_data(path: str | os.PathLike | None = None) -> Path | None:
    """The first folder holding an official Omniglot split: ``path`` if given, else :func:`search_paths`.

    Returns None when there is none (the caller decides whether that is an error)."""
    for candidate in [Path(path).expanduser()] if path is not None else search_paths():
        if candidate.is_dir() and available_splits(candidate):
            return candidate
    return None


# ------------------------------------------------------------------------------------- reading files
def _members(source: Path) -> list[tuple[str, str, str, str]]:
    """``[(alphabet, character, file name, where)]`` of every ``<Alphabet>/<character>/*.png`` of ``source``
    (a folder or a zip), sorted; ``where`` is the file's path (folder) or member name (zip)."""
    out = []
    if source.is_dir():
        for png in source.glob("*/*/*.png"):
            out.append((png.parent.parent.name, png.parent.name, png.name, str(png)))
    else:
        with _zip(source) as z:
            names = z.namelist()
        for name in names:
            parts = name.split("/")
            if name.endswith(".png") and len(parts) >= 3:
                out.append((parts[-3], parts[-2], parts[-1], name))
    return sorted(out)


def _zip(source: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise OmniglotIntegrityError(f"cannot read the zip file {str(source)!r} (truncated or not a zip?): {err}") from None


def _fingerprint(source: Path) -> str:
    """A digest of every file the split consists of: names and sizes (and modification times for a folder,
    checksums of the members for a zip), so that any edit, addition or deletion changes it."""
    h = hashlib.sha256()
    if source.is_dir():
        for png in sorted(source.glob("*/*/*.png")):
            st = png.stat()
            h.update(f"{png.relative_to(source)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        st = source.stat()
        h.update(f"{source.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        with _zip(source) as z:
            for info in sorted(z.infolist(), key=lambda i: i.filename):
                h.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
    return h.hexdigest()


def _read_files(source: Path) -> dict[tuple[str, str], list[tuple[str, bytes]]]:
    """``{(alphabet, character): [(file name, png bytes), ...]}`` from a zip or a folder."""
    classes: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    members = _members(source)
    if source.is_dir():
        for alphabet, character, name, where in members:
            try:
                data = Path(where).read_bytes()
            except OSError as err:
                raise OmniglotIntegrityError(f"cannot read {where!r}: {err}") from None
            classes.setdefault((alphabet, character), []).append((name, data))
    else:
        with _zip(source) as z:
            for alphabet, character, name, where in members:
                try:
                    data = z.read(where)
                except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
                    raise OmniglotIntegrityError(f"cannot read {where!r} in the zip file {str(source)!r}: {err}") from None
                classes.setdefault((alphabet, character), []).append((name, data))
    if not classes:
        raise OmniglotNotFound(f"{str(source)!r} holds no <Alphabet>/<character>/*.png files. {HOW_TO_GET}")
    return classes


def preprocess(image: bytes | str | os.PathLike, image_size: int = 28) -> np.ndarray:
    """One Omniglot image file (its bytes or its path) as the loader returns it: uint8 ``(image_size,
    image_size)``, greyscale, inverted (ink = 255 on 0), Lanczos-resized. Divide by 255 for the float images
    of a :class:`ClassDataset`. Raises ``ValueError`` naming the file when it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    what = "<bytes>" if isinstance(image, bytes) else str(image)
    try:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            grey = im.convert("L")
            if grey.size != (image_size, image_size):
                grey = grey.resize((image_size, image_size), Image.LANCZOS)
            return 255 - np.asarray(grey, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{what}: not a readable image ({err})") from None


def _check(split: str, files: dict[tuple[str, str], list[tuple[str, bytes]]], source: Path, check: str) -> None:
    """Raise :class:`OmniglotIntegrityError` when ``files`` are not the official ``split`` (see ``check``)."""
    per_alphabet: dict[str, list[str]] = {}
    for alphabet, character in files:
        per_alphabet.setdefault(alphabet, []).append(character)
    hint = ("; pass check='subset' to load a subset of the official alphabets on purpose, or check='none' for "
            "other data in the same layout")
    where = f"Omniglot {split!r} at {str(source)!r}"
    if check == "official":
        if split in ("background", "evaluation"):
            expected_alphabets = set(OFFICIAL_ALPHABETS[split])
        elif SMALL_SPLITS[split] is not None:
            expected_alphabets = set(SMALL_SPLITS[split])
        else:
            expected_alphabets = set(per_alphabet) if len(per_alphabet) == 5 else set()
        missing = sorted(expected_alphabets - set(per_alphabet))
        extra = sorted(set(per_alphabet) - expected_alphabets)
        if missing or extra or not expected_alphabets:
            what = (f"lacks alphabet(s) {missing}" if missing else
                    f"holds alphabet(s) {extra} that it should not" if extra else
                    f"holds {len(per_alphabet)} alphabets where the release has 5")
            raise OmniglotIntegrityError(f"{where} {what}{hint}")
    if check != "none":
        official = OFFICIAL_ALPHABETS["evaluation" if split == "evaluation" else "background"]
        unknown = sorted(set(per_alphabet) - set(official))
        if unknown:
            raise OmniglotIntegrityError(f"{where}: alphabet folder(s) {unknown} are not official {split} alphabets{hint}")
        short = {f"{a}/{c}": len(v) for (a, c), v in files.items() if len(v) != DRAWERS}
        if short:
            name, n = next(iter(sorted(short.items())))
            raise OmniglotIntegrityError(f"{where}: {len(short)} character(s) do not hold {DRAWERS} drawings, e.g. "
                                         f"{name} holds {n}{hint}")
        for alphabet, chars in sorted(per_alphabet.items()):
            expected = [f"character{i:02d}" for i in range(1, official[alphabet] + 1)]
            missing, extra = sorted(set(expected) - set(chars)), sorted(set(chars) - set(expected))
            if extra:
                raise OmniglotIntegrityError(f"{where}: {alphabet} holds character folder(s) {extra[:5]} beyond its "
                                             f"official {official[alphabet]}{hint}")
            if missing and check == "official":
                raise OmniglotIntegrityError(f"{where}: {alphabet} lacks {len(missing)} of its {official[alphabet]} "
                                             f"characters, e.g. {alphabet}/{missing[0]}{hint}")


def _cache_file(source: Path, image_size: int, check: str) -> Path:
    blob = json.dumps([CACHE_VERSION, str(source.resolve()), _fingerprint(source), image_size, check])
    return config.cache_dir() / "omniglot" / f"{source.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.npz"


def _load_unrotated(split: str, source: Path, image_size: int, cache: bool,
                    check: str = "official") -> tuple[np.ndarray, list[str], list[str], list[list[str]]]:
    path = _cache_file(source, image_size, check)
    if cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                return z["images"], meta["names"], meta["alphabets"], meta["files"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache file is rebuilt from the data
    files = _read_files(source)
    _check(split, files, source, check)
    sizes = {len(v) for v in files.values()}
    if len(sizes) != 1:
        smallest = min(files, key=lambda k: len(files[k]))
        raise OmniglotIntegrityError(
            f"Omniglot classes in {str(source)!r} hold different numbers of images {sorted(sizes)} "
            f"(e.g. {'/'.join(smallest)} has {len(files[smallest])}); the official data has {DRAWERS} each")
    keys = sorted(files)

    def decode(key, name, png):
        try:
            return preprocess(png, image_size)
        except ValueError as err:
            raise OmniglotIntegrityError(f"{str(source)!r}: {'/'.join(key)}/{name}: {str(err).split(': ', 1)[1]}") from None

    images = np.stack([np.stack([decode(k, name, png) for name, png in files[k]]) for k in keys])
    names, alphabets = [f"{a}/{c}" for a, c in keys], [a for a, _ in keys]
    file_names = [[name for name, _ in files[k]] for k in keys]
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, images=images, meta=np.array(json.dumps(
            {"names": names, "alphabets": alphabets, "files": file_names})))
        os.replace(tmp, path)
    return images, names, alphabets, file_names


def _rotated(images: np.ndarray, names: list[str], alphabets: list[str], rotations: tuple[int, ...], split: str,
             info: dict) -> ClassDataset:
    base = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(2)  # (C, M, 1, H, W)
    # rotate counter-clockwise in the image plane; each angle is a block of classes
    blocks = [torch.rot90(base, k=r // 90, dims=(-2, -1)) for r in rotations]
    suffix = (lambda r: f"/rot{r}") if rotations != (0,) else (lambda r: "")
    return ClassDataset(
        images=torch.cat(blocks).contiguous(),
        class_names=[f"{n}{suffix(r)}" for r in rotations for n in names],
        groups=[a for _ in rotations for a in alphabets],
        split=split,
        info={**info, "rotations": list(rotations)},
    )


def _check_args(image_size: int, rotations, check: str) -> tuple[int, ...]:
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if check not in CHECKS:
        raise ValueError(f"unknown check {check!r}; valid checks: {list(CHECKS)}")
    rotations = tuple(int(r) for r in rotations)
    bad = [r for r in rotations if r not in ROTATIONS]
    if not rotations or bad:
        raise ValueError(f"rotations must be a non-empty subset of {ROTATIONS}, got {tuple(rotations)}")
    return rotations


def load_omniglot(split: str = "evaluation", path: str | os.PathLike | None = None, image_size: int = 28,
                  rotations: Sequence[int] = (0,), cache: bool = True, check: str = "official") -> ClassDataset:
    """One official Omniglot file as a :class:`ClassDataset` of ``(n_classes, 20, 1, image_size, image_size)``.

    ``rotations``: angles in degrees, multiples of 90; each character gives one class per angle
    (``(0, 90, 180, 270)``: 4 x the classes). ``check``: ``"official"`` (the split must be complete),
    ``"subset"`` (official alphabets and characters, some may be missing) or ``"none"``. ``cache`` keeps the
    decoded images in ``mtml_lib.config.cache_dir()/omniglot``. Raises :class:`OmniglotNotFound` naming
    where to put the files when they are absent, :class:`OmniglotIntegrityError` when they are incomplete
    or unreadable. For the published train / validation / test protocols use :func:`load_protocol`.
    """
    rotations = _check_args(image_size, rotations, check)
    source = _source(data_root(path), split)
    images, names, alphabets, files = _load_unrotated(split, source, image_size, cache, check)
    return _rotated(images, names, alphabets, rotations, split,
                    {"source": "omniglot", "path": str(source), "files": files, "check": check})


# ---------------------------------------------------------------------------------------- protocols
@dataclass(frozen=True)
class Protocol:
    """A published (or documented) character split: for each part, the official file and the characters."""

    name: str
    rotations: tuple[int, ...]
    parts: dict  # part -> tuple of (split, alphabet, first character, last character) selections
    cite: str


def _whole(split: str, alphabets) -> tuple:
    return tuple((split, a, 1, OFFICIAL_ALPHABETS[split][a]) for a in alphabets)


_VAL5 = ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
_EVAL = list(OFFICIAL_ALPHABETS["evaluation"])
_GURMUKHI = _EVAL.index("Gurmukhi")
_VINYALS_TRAIN_EVAL = _whole("evaluation", _EVAL[:_GURMUKHI]) + (("evaluation", "Gurmukhi", 1, 41),)
_VINYALS_TEST = (("evaluation", "Gurmukhi", 42, 45),) + _whole("evaluation", _EVAL[_GURMUKHI + 1:])
_BACKGROUND_TRAIN = _whole("background", [a for a in OFFICIAL_ALPHABETS["background"] if a not in _VAL5])

PROTOCOLS: dict[str, Protocol] = {
    "vinyals": Protocol("vinyals", ROTATIONS, {
        "train": _BACKGROUND_TRAIN + _VINYALS_TRAIN_EVAL,
        "val": _whole("background", _VAL5),
        "trainval": _whole("background", OFFICIAL_ALPHABETS["background"]) + _VINYALS_TRAIN_EVAL,
        "test": _VINYALS_TEST,
    }, "Vinyals et al. 2016 (split as in Snell et al. 2017 and Finn et al. 2017)"),
    "lake": Protocol("lake", (0,), {
        "train": _BACKGROUND_TRAIN,
        "val": _whole("background", _VAL5),
        "trainval": _whole("background", OFFICIAL_ALPHABETS["background"]),
        "test": _whole("evaluation", _EVAL),
    }, "Lake et al. 2015 (background / evaluation alphabets)"),
    "small1": Protocol("small1", ROTATIONS, {
        "train": tuple(("background_small1", a, 1, OFFICIAL_ALPHABETS["background"][a]) for a in ("Greek", "Korean", "Latin")),
        "val": (("background_small1", "Early_Aramaic", 1, 22),),
        "trainval": tuple(("background_small1", a, 1, OFFICIAL_ALPHABETS["background"][a])
                          for a in ("Early_Aramaic", "Greek", "Korean", "Latin")),
        "test": (("background_small1", "Balinese", 1, 24),),
    }, "this package's split of images_background_small1 (not a published protocol)"),
}
PARTS = ("train", "val", "trainval", "test")


def protocol_counts(protocol: str) -> dict[str, int]:
    """Characters (before rotation) of each part of ``protocol``, from the official counts."""
    p = _protocol(protocol)
    return {part: sum(last - first + 1 for _, _, first, last in sel) for part, sel in p.parts.items()}


def _protocol(protocol: str) -> Protocol:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown Omniglot protocol {protocol!r}; valid protocols: {list(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def protocol_splits(protocol: str) -> list[str]:
    """The official files a protocol reads (all parts)."""
    return sorted({split for sel in _protocol(protocol).parts.values() for split, *_ in sel})


def available_protocols(path: str | os.PathLike | None = None) -> list[str]:
    """The protocols whose files are all present under ``path`` (or ``MTML_DATA``), in :data:`PROTOCOLS` order."""
    present = set(available_splits(path))
    return [name for name in PROTOCOLS if set(protocol_splits(name)) <= present]


def load_protocol(protocol: str, part: str, path: str | os.PathLike | None = None, image_size: int = 28,
                  cache: bool = True) -> ClassDataset:
    """One part (``"train"``, ``"val"``, ``"trainval"``, ``"test"``) of a protocol of :data:`PROTOCOLS`, with the
    protocol's rotations, as a :class:`ClassDataset`; the official files it reads are checked complete."""
    p = _protocol(protocol)
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r} of protocol {protocol!r}; valid parts: {list(PARTS)}")
    root = data_root(path)
    loaded, chosen_images, chosen_names, chosen_alphabets, chosen_files = {}, [], [], [], []
    for split, alphabet, first, last in p.parts[part]:
        if split not in loaded:
            loaded[split] = _load_unrotated(split, _source(root, split), image_size, cache, "official")
        images, names, alphabets, files = loaded[split]
        wanted = {f"{alphabet}/character{i:02d}" for i in range(first, last + 1)}
        for i, name in enumerate(names):
            if name in wanted:
                chosen_images.append(images[i])
                chosen_names.append(name)
                chosen_alphabets.append(alphabets[i])
                chosen_files.append(files[i])
    images = np.stack(chosen_images)
    return _rotated(images, chosen_names, chosen_alphabets, _check_args(image_size, p.rotations, "official"),
                    f"{protocol}/{part}", {"source": "omniglot", "protocol": protocol, "part": part,
                                           "path": str(root), "files": chosen_files})


def locate(data: ClassDataset, file: str) -> tuple[int, int]:
    """``(class, instance)`` of an official file name in an Omniglot data set of this module, e.g.
    ``"Gurmukhi/character42/1202_07.png"`` (``.../rot90`` style names select a rotated class:
    ``"Gurmukhi/character42/rot90/1202_07.png"``). Raises ``KeyError`` naming the file when it is not there."""
    parts = file.replace("\\", "/").strip("/").split("/")
    if len(parts) < 3:
        raise KeyError(f"{file!r}: expected <Alphabet>/<characterNN>[/rotR]/<file>.png")
    cls_name, name = "/".join(parts[:-1]), parts[-1]
    try:
        c = data.class_names.index(cls_name)
    except ValueError:
        rotated = [n for n in data.class_names if n.startswith(cls_name + "/rot")]
        hint = f" (this data set has rotated classes such as {rotated[0]!r})" if rotated else ""
        raise KeyError(f"{file!r}: class {cls_name!r} is not in this data set{hint}") from None
    files = data.info.get("files")
    if not files:
        raise KeyError(f"{file!r}: this data set does not record its file names")
    per_class = files[c % len(files)]
    if name not in per_class:
        raise KeyError(f"{file!r}: no file {name!r} in class {cls_name!r} (it holds {per_class[:3]}...)")
    return c, per_class.index(name)
