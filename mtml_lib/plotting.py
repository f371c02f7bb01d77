"""One figure style for the whole project, and ``save_figure`` with provenance.

Every figure in ``figures/`` is written by exactly one notebook through :func:`save_figure`, which
stores a PNG (for reading), a PDF (for papers) and an entry in ``figures/index.json`` (caption, source
notebook, profile, seed, device, commit). :func:`write_gallery` turns that index into
``figures/README.md``; ``mtml figures`` calls it.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import seaborn as sns

from mtml_lib import config

INDEX_NAME = "index.json"
GALLERY_NAME = "README.md"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: the seaborn colour-blind palette; figures take a method's colour from :data:`METHOD_COLOURS`, not from here
PALETTE = sns.color_palette("colorblind")

# ------------------------------------------------------------------------------------- one colour per method
# A method keeps its colour in every figure of every notebook. Methods that stand for the same idea share
# it across notebooks: grey is "learn from the task's own data only", brown "one model for all tasks
# pooled", green "a representation shared by task heads", black (dashed) an oracle that no learner beats.
# Within one notebook no colour means two things (tests/test_plotting_colours.py checks both).
_GREY, _BROWN, _GREEN, _BLACK = "#949494", "#ca9161", "#029e73", "#000000"
_BLUE, _LIGHT_BLUE, _ORANGE, _VERMILLION = "#0173b2", "#56b4e9", "#de8f05", "#d55e00"
_PURPLE, _WINE, _INDIGO, _TEAL, _ROSE = "#cc78bc", "#882255", "#332288", "#44aa99", "#cc6677"

#: canonical method name (as figures and tables print it) -> colour (hex)
METHOD_COLOURS: dict[str, str] = {
    # notebook 01's estimators and transfer modes (05 and 02 reuse the ideas)
    "independent": _GREY,
    "scratch": _GREY,
    "single-task": _GREY,
    "pooled": _BROWN,
    "joint pretraining": _BROWN,
    "pretrained": _BROWN,
    "shared": _GREEN,
    "frozen θ": _GREEN,
    "multi-task θ + new head": _GREEN,
    "multi-task θ + gradient head": _GREEN,
    "fine-tuned θ": _ROSE,
    "oracle": _BLACK,
    # notebook 02's loss-weighting and gradient-combination strategies
    "EW": _BLUE,
    "UW": _ORANGE,
    "DWA": _GREEN,
    "RLW": _BROWN,
    "GradNorm": _PURPLE,
    "PCGrad": _LIGHT_BLUE,
    "MGDA": _WINE,
    "CAGrad": _INDIGO,
    # notebooks 03-05's meta-learners
    "MAML": _BLUE,
    "FOMAML": _LIGHT_BLUE,
    "ANIL": _ORANGE,
    "ANIL θ + ridge head": _ORANGE,
    "Meta-SGD": _PURPLE,
    "Reptile": _WINE,
    "ProtoNet": _TEAL,
}

#: methods drawn dashed: the reference lines, and the 05 controls that pair a trunk with the other head fitter
METHOD_LINESTYLES: dict[str, str] = {
    "oracle": "--",
    "single-task": "--",
    "multi-task θ + gradient head": "--",
    "ANIL θ + ridge head": "--",
}

#: code names (the keys of the libraries' method tables) -> canonical names
METHOD_ALIASES: dict[str, str] = {
    "stl": "single-task",
    "joint": "joint pretraining",
    "multitask": "multi-task θ + new head",
    "multitask_gd": "multi-task θ + gradient head",
    "anil_ridge": "ANIL θ + ridge head",
    "metasgd": "Meta-SGD",
    "protonet": "ProtoNet",
    "frozen": "frozen θ",
    "fine-tuned": "fine-tuned θ",
}

# a label may carry a setting after the method's name: "MAML 5-way", "ProtoNet 1-shot", "ProtoNet (no steps)"
_LABEL_SUFFIX = re.compile(r"(\s+\d+-(way|shot)|\s*\([^)]*\))+$")
_BY_FOLDED = {name.casefold(): name for name in METHOD_COLOURS} | {k.casefold(): v for k, v in METHOD_ALIASES.items()}


def canonical_method(label: str) -> str:
    """The :data:`METHOD_COLOURS` key of a method label: case-insensitive, code names (``"metasgd"``,
    ``"stl"``) mapped by :data:`METHOD_ALIASES`, settings after the name (``" 5-way"``, ``" 1-shot"``,
    ``" (no steps)"``) ignored. Raises ``KeyError`` naming the known methods when there is no entry."""
    folded = str(label).strip().casefold()
    for candidate in (folded, _LABEL_SUFFIX.sub("", folded)):
        if candidate in _BY_FOLDED:
            return _BY_FOLDED[candidate]
    raise KeyError(f"no colour for method {label!r}; add it to plotting.METHOD_COLOURS "
                   f"(known: {', '.join(METHOD_COLOURS)})")


def method_colour(label: str) -> str:
    """The colour (hex) of a method in every figure, e.g. ``method_colour("MAML 5-way") == method_colour("maml")``."""
    return METHOD_COLOURS[canonical_method(label)]


def method_style(label: str) -> dict[str, str]:
    """Keyword arguments for ``ax.plot``/``ax.errorbar``: the method's colour and line style."""
    name = canonical_method(label)
    return {"color": METHOD_COLOURS[name], "linestyle": METHOD_LINESTYLES.get(name, "-")}


# ------------------------------------------------------------------------------- data sets and glyph images
#: data sets, task families and tasks that figures draw as coloured lines (not methods)
DATASET_COLOURS: dict[str, str] = {
    "glyphs": _BLUE,
    "Omniglot": _VERMILLION,
    "cls": _BLUE,
    "seg": _ORANGE,
    "depth": _GREEN,
}

#: every glyph image is drawn dark ink on white paper: pixel values in [0, 1], 1 = ink
GLYPH_CMAP = "gray_r"


def dataset_colour(name: str) -> str:
    """The colour of a data set or task (:data:`DATASET_COLOURS`), case-insensitive."""
    for key, colour in DATASET_COLOURS.items():
        if key.casefold() == str(name).strip().casefold():
            return colour
    raise KeyError(f"no colour for data set {name!r}; add it to plotting.DATASET_COLOURS (known: {', '.join(DATASET_COLOURS)})")


def show_glyph(ax, image, **kwargs):
    """Draw a glyph image ``(H, W)`` (values in [0, 1], 1 = ink) as dark ink on white, without ticks."""
    style = {"cmap": GLYPH_CMAP, "vmin": 0.0, "vmax": 1.0, "interpolation": "nearest"} | kwargs
    shown = ax.imshow(image, **style)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    return shown


def plain_log_axis(ax, axis: str = "y") -> None:
    """Label a logarithmic axis with plain numbers (0.5, 1, 2 rather than 5×10⁻¹, 10⁰, 2×10⁰) and enough
    ticks to read it even when the data span less than a decade."""
    from matplotlib.ticker import LogLocator, NullFormatter, FuncFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def set_theme() -> None:
    """The project's plotting theme (seaborn ``whitegrid``, colour-blind palette, readable sizes)."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight", "axes.titlesize": "medium"})


def _read_index(directory: Path) -> dict[str, Any]:
    path = directory / INDEX_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"figure index {path} is not valid JSON ({err}); delete it and rerun the notebooks") from None


@contextlib.contextmanager
def _locked(directory: Path):
    """Hold an exclusive lock on the figure index while it is rewritten (notebooks may run side by side)."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: one writer at a time is assumed
        yield
        return
    with open(directory / ".index.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_figure(fig: "matplotlib.figure.Figure", name: str, caption: str, notebook: str | None = None) -> dict[str, Any]:
    """Write ``fig`` as ``figures/<name>.png`` and ``.pdf`` and record it in the gallery index (the folder
    of the current run's profile, :func:`mtml_lib.config.figures_dir`: ``figures/<profile>/`` for a profile
    other than quick).

    ``notebook`` defaults to the notebook of the current run (:func:`mtml_lib.config.setup`).
    Returns the index entry.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith((".png", ".pdf")):
        raise ValueError(f"figure name must be letters, digits, '_', '-', '.' without extension, got {name!r}")
    if not caption or not str(caption).strip():
        raise ValueError(f"figure {name!r} needs a caption")
    run = config.current_run()
    provenance = run.metadata() if run is not None else {}
    notebook = notebook or (run.notebook if run is not None else "interactive")
    directory = config.figures_dir()
    directory.mkdir(parents=True, exist_ok=True)
    fig.savefig(directory / f"{name}.png", metadata={"Software": None})
    fig.savefig(directory / f"{name}.pdf", metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None})
    entry = {
        "png": f"{name}.png",
        "pdf": f"{name}.pdf",
        "caption": str(caption).strip(),
        "notebook": notebook,
        "provenance": provenance,
    }
    with _locked(directory):
        index = _read_index(directory)
        index[name] = entry
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return entry


def write_gallery(directory: Path | None = None) -> Path:
    """Regenerate ``figures/README.md`` from ``figures/index.json``, grouped by notebook in order.

    Entries whose PNG is missing are dropped from the index, so the gallery shows what exists.
    """
    directory = Path(directory) if directory is not None else config.figures_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        index = {k: v for k, v in _read_index(directory).items() if (directory / v["png"]).is_file()}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    by_notebook: dict[str, list[tuple[str, dict]]] = {}
    for name, entry in sorted(index.items()):
        by_notebook.setdefault(entry["notebook"], []).append((name, entry))
    lines = [
        "# Figure gallery",
        "",
        "Generated by `mtml figures` from `index.json`; do not edit by hand. Each figure is written by one",
        "notebook through `mtml_lib.plotting.save_figure` (PNG here, PDF beside it for papers).",
        "",
    ]
    for notebook in sorted(by_notebook):
        lines += [f"## {notebook}", ""]
        for name, entry in by_notebook[notebook]:
            prov = entry.get("provenance", {})
            lines += [
                f"### {name}",
                "",
                f"![{name}]({entry['png']})",
                "",
                entry["caption"],
                "",
                f"Source: `notebooks/{notebook}.ipynb` · profile `{prov.get('profile', '?')}` · seed "
                f"{prov.get('seed', '?')} · device `{prov.get('device', '?')}` · torch {prov.get('torch', '?')} · "
                f"[PDF]({entry['pdf']})",
                "",
            ]
    if not index:
        lines += ["No figures yet: run `make reproduce` (or `mtml run`).", ""]
    path = directory / GALLERY_NAME
    path.write_text("\n".join(lines))
    return path


set_theme()


def multitask_diagram(n_tasks: int = 3) -> "matplotlib.figure.Figure":
    """A schematic of the multi-task model: inputs X_i -> shared θ -> heads θ_i -> losses L_i."""
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.9 * n_tasks))
    ax.set_axis_off()
    height = n_tasks
    ys = [height - 0.5 - i for i in range(n_tasks)]

    def box(x, y, w, h, text, color):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05",
                                    facecolor=color, edgecolor="0.2", alpha=0.9))
        ax.text(x, y, text, ha="center", va="center", fontsize=11)

    def arrow(x0, y0, x1, y1):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12, color="0.3"))

    box(4.0, height / 2, 1.6, max(1.0, height - 0.4), "shared\n$\\theta$", PALETTE[0])
    for i, y in enumerate(ys, 1):
        box(1.0, y, 1.1, 0.6, f"$X_{i}$", "0.92")
        arrow(1.6, y, 3.15, height / 2 + (y - height / 2) * 0.6)
        box(6.6, y, 1.2, 0.6, f"head $\\theta_{i}$", PALETTE[1])
        arrow(4.85, height / 2 + (y - height / 2) * 0.6, 5.95, y)
        box(8.9, y, 2.2, 0.6, f"$L_{i}(f(\\theta,\\theta_{i},X_{i}), Y_{i})$", PALETTE[2])
        arrow(7.25, y, 7.75, y)
    ax.text(5.0, -0.35, r"$\min_{\theta,\theta_1,\dots,\theta_T}\ \sum_i w_i\,L_i(f(\theta,\theta_i,X_i),Y_i)$",
            ha="center", va="center", fontsize=12)
    ax.set_xlim(0.2, 10.2)
    ax.set_ylim(-0.7, height + 0.1)
    return fig
