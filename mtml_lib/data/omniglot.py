"""Omniglot (Lake, Salakhutdinov and Tenenbaum 2015) from its official files. Never downloads anything.

Omniglot has 1,623 handwritten characters from 50 alphabets, each drawn by 20 people, as 105 x 105
black-on-white PNG files. Its authors publish it (MIT licence) at https://github.com/brendenlake/omniglot
(folder ``python/``) as zip files with this layout, which this loader reads as zip files or extracted::

    images_background.zip   images_background/<Alphabet>/characterNN/<id>_<drawer>.png   30 alphabets, 964 characters
    images_evaluation.zip   images_evaluation/<Alphabet>/characterNN/<id>_<drawer>.png   20 alphabets, 659 characters
    images_background_small1.zip, images_background_small2.zip   5 alphabets each ("minimal" splits)

Put them (zipped or not) into one folder and pass it as ``path``, or set ``MTML_DATA`` to that folder
(or to a folder holding an ``omniglot/`` subfolder).

The standard few-shot protocol (Vinyals et al. 2016; Finn et al. 2017): images resized to 28 x 28, the
background split for meta-training and the evaluation split for meta-testing, and more classes by
rotating every character by 90, 180 and 270 degrees (each rotation is a class of its own).

Images come out in the conventions of :mod:`mtml_lib.data.glyphs`: one channel, ``image_size`` square,
ink = 1 on a background of 0 (Omniglot's black ink on white is inverted), values in ``[0, 1]``; the
official framing is kept (a character's longer side is about 0.64 of the frame, which glyphs imitate).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Sequence
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
CACHE_VERSION = 1

HOW_TO_GET = (
    "Omniglot is not downloaded automatically. Get images_background.zip and images_evaluation.zip from "
    "https://github.com/brendenlake/omniglot (folder python/), put them (zipped or extracted) into one folder, "
    "and pass that folder as path=... or set the environment variable MTML_DATA to it."
)


class OmniglotNotFound(FileNotFoundError):
    """The Omniglot files are not where the loader looked; the message says where to put them."""


def data_root(path: str | os.PathLike | None = None) -> Path:
    """The folder to read Omniglot from: ``path``, else ``MTML_DATA`` (or its ``omniglot/`` subfolder)."""
    if path is not None:
        root = Path(path).expanduser()
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


def _read_files(source: Path) -> dict[tuple[str, str], list[tuple[str, bytes]]]:
    """``{(alphabet, character): [(file name, png bytes), ...]}`` from a zip or a folder."""
    classes: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    if source.is_dir():
        for png in sorted(source.glob("*/*/*.png")):
            classes.setdefault((png.parent.parent.name, png.parent.name), []).append((png.name, png.read_bytes()))
    else:
        with zipfile.ZipFile(source) as z:
            for name in sorted(z.namelist()):
                parts = name.split("/")
                if name.endswith(".png") and len(parts) >= 3:
                    classes.setdefault((parts[-3], parts[-2]), []).append((parts[-1], z.read(name)))
    if not classes:
        raise OmniglotNotFound(f"{str(source)!r} holds no <Alphabet>/<character>/*.png files. {HOW_TO_GET}")
    return classes


def _to_array(png: bytes, image_size: int) -> np.ndarray:
    """One official PNG -> uint8 ``(image_size, image_size)`` with ink = 255 (inverted, Lanczos resized)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        grey = im.convert("L")
        if grey.size != (image_size, image_size):
            grey = grey.resize((image_size, image_size), Image.LANCZOS)
        return 255 - np.asarray(grey, dtype=np.uint8)


def _cache_file(source: Path, image_size: int) -> Path:
    stat = source.stat()
    blob = json.dumps([CACHE_VERSION, str(source.resolve()), stat.st_size, int(stat.st_mtime), image_size])
    return config.cache_dir() / "omniglot" / f"{source.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.npz"


def _load_unrotated(source: Path, image_size: int, cache: bool) -> tuple[np.ndarray, list[str], list[str]]:
    path = _cache_file(source, image_size)
    if cache and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return z["images"], meta["names"], meta["alphabets"]
    files = _read_files(source)
    sizes = {len(v) for v in files.values()}
    if len(sizes) != 1:
        smallest = min(files, key=lambda k: len(files[k]))
        raise ValueError(f"Omniglot classes in {str(source)!r} hold different numbers of images {sorted(sizes)} "
                         f"(e.g. {'/'.join(smallest)} has {len(files[smallest])}); the official data has 20 each")
    keys = sorted(files)
    images = np.stack([np.stack([_to_array(png, image_size) for _, png in files[k]]) for k in keys])
    names, alphabets = [f"{a}/{c}" for a, c in keys], [a for a, _ in keys]
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, images=images, meta=np.array(json.dumps({"names": names, "alphabets": alphabets})))
        os.replace(tmp, path)
    return images, names, alphabets


def load_omniglot(split: str = "evaluation", path: str | os.PathLike | None = None, image_size: int = 28,
                  rotations: Sequence[int] = (0,), cache: bool = True) -> ClassDataset:
    """One Omniglot split as a :class:`ClassDataset` of ``(n_classes, 20, 1, image_size, image_size)`` images.

    ``rotations``: angles in degrees, multiples of 90; each character gives one class per angle
    (``(0, 90, 180, 270)`` is the standard augmentation, 4 x the classes). ``cache`` keeps the decoded
    images in ``mtml_lib.config.cache_dir()/omniglot`` (keyed by the source file, its size and time).
    Raises :class:`OmniglotNotFound` naming where to put the files when they are absent.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    rotations = tuple(int(r) for r in rotations)
    bad = [r for r in rotations if r not in ROTATIONS]
    if not rotations or bad:
        raise ValueError(f"rotations must be a non-empty subset of {ROTATIONS}, got {tuple(rotations)}")
    source = _source(data_root(path), split)
    images, names, alphabets = _load_unrotated(source, image_size, cache)
    base = torch.from_numpy(images).unsqueeze(2)  # (C, M, 1, H, W)
    # rotate counter-clockwise in the image plane; each angle is a block of classes
    blocks = [torch.rot90(base, k=r // 90, dims=(-2, -1)) for r in rotations]
    suffix = (lambda r: f"/rot{r}") if rotations != (0,) else (lambda r: "")
    return ClassDataset(
        images=torch.cat(blocks).contiguous(),
        class_names=[f"{n}{suffix(r)}" for r in rotations for n in names],
        groups=[a for _ in rotations for a in alphabets],
        split=split,
        info={"source": "omniglot", "path": str(source), "rotations": list(rotations)},
    )
