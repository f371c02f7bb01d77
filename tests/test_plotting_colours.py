"""One colour per method for the whole package (``mtml_lib.plotting.METHOD_COLOURS``).

Every method a notebook plots must have an entry, a colour must not mean two methods in one figure,
and the colours of one figure must be told apart (CIE76 distance in Lab space).
"""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from mtml_lib import plotting
from mtml_lib.meta import sinusoid_experiment as ex
from mtml_lib.mtl import case_study as cs
from mtml_lib.mtl import linear_experiment as le
from mtml_lib import transfer_study as ts

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MIN_DISTANCE = 25.0  # CIE76 ΔE between two colours of one figure; about 2.3 is "just noticeable"


def _strategies() -> list[str]:
    from mtml_lib.profiles.cls_seg import PROFILES

    return sorted({name for profile in PROFILES.values() for name in profile.strategies})


def _few_shot_learners() -> list[str]:
    from mtml_lib.fewshot import LEARNERS
    from mtml_lib.profiles.few_shot import PROFILES

    names = set(LEARNERS)
    for profile in PROFILES.values():
        names |= {spec.name for spec in profile.learners}
        names |= {f"{spec.name} (no steps)" for spec in profile.learners if spec.learner == "protonet"}
    return sorted(names)


#: the methods of each figure family, as the notebooks and the library's plotting helpers label them
FIGURE_GROUPS: dict[str, list[str]] = {
    "01 estimators": list(le.METHODS),
    "01 transfer": list(le.TRANSFER_METHODS),
    "01 one fit": ["independent", "shared"],
    "02 strategies": [cs.STL, *_strategies()],
    "02 toy directions": ["EW", "PCGrad", "MGDA", "CAGrad"],
    "03 meta-learners": [*ex.METHODS, *ex.METHODS.values()],
    "04 learners": _few_shot_learners(),
    "05 transfer": [*ts.METHODS, *ts.METHODS.values()],
}


def _lab(colour: str) -> np.ndarray:
    rgb = np.array(to_rgb(colour))
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


@pytest.mark.parametrize("group", list(FIGURE_GROUPS))
def test_every_plotted_method_has_a_colour(group):
    missing = []
    for label in FIGURE_GROUPS[group]:
        try:
            plotting.method_colour(label)
        except KeyError:
            missing.append(label)
    assert not missing, f"{group}: no entry in plotting.METHOD_COLOURS for {missing}"


@pytest.mark.parametrize("group", list(FIGURE_GROUPS))
def test_colours_of_one_figure_are_distinct(group):
    methods = sorted({plotting.canonical_method(label) for label in FIGURE_GROUPS[group]})
    styles = {m: (plotting.method_style(m)["color"], plotting.method_style(m)["linestyle"]) for m in methods}
    for a, b in itertools.combinations(methods, 2):
        assert styles[a] != styles[b], f"{group}: {a!r} and {b!r} are drawn alike {styles[a]}"
        if styles[a][0] != styles[b][0]:
            distance = float(np.linalg.norm(_lab(styles[a][0]) - _lab(styles[b][0])))
            assert distance >= MIN_DISTANCE, f"{group}: {a!r} and {b!r} are hard to tell apart (ΔE {distance:.0f})"


def test_one_idea_keeps_its_colour_across_notebooks():
    colour = plotting.method_colour
    assert colour("independent") == colour("scratch") == colour("single-task") == colour("stl")
    assert colour("pooled") == colour("joint pretraining") == colour("pretrained")
    assert colour("shared") == colour("frozen θ") == colour("multi-task θ + new head")
    assert colour("MAML") == colour("maml") == colour("MAML 5-way") == colour("MAML 20-way 5-shot")
    assert colour("Meta-SGD") == colour("metasgd") and colour("ProtoNet (no steps)") == colour("protonet")


def test_labels_resolve_and_unknown_methods_are_refused():
    assert plotting.canonical_method("ProtoNet 1-shot") == "ProtoNet"
    assert plotting.canonical_method("  fomaml ") == "FOMAML"
    assert plotting.method_style("oracle") == {"color": "#000000", "linestyle": "--"}
    with pytest.raises(KeyError, match=r"no colour for method 'MAML\+\+'"):
        plotting.method_colour("MAML++")
    with pytest.raises(KeyError, match="DATASET_COLOURS"):
        plotting.dataset_colour("cifar")
    assert plotting.dataset_colour("Omniglot") == plotting.DATASET_COLOURS["Omniglot"]


@pytest.mark.parametrize("notebook", ["01_math_model", "02_multitask_cls_seg", "03_maml_sinusoid", "04_few_shot_classification",
                                      "05_knowledge_transfer"])
def test_notebook_figures_take_colours_from_the_map(notebook):
    """A notebook that picks colours by position in the palette gives one method different colours in
    different figures; its code must go through ``method_colour``/``method_style`` instead."""
    cells = json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for pattern in ("PALETTE[", "COLORS[", "color_palette("):
        assert pattern not in code, f"{notebook} chooses colours with {pattern!r}"


@pytest.mark.parametrize("module", [le, cs, ex, ts])
def test_library_figures_take_colours_from_the_map(module):
    source = Path(module.__file__).read_text()
    for pattern in ("PALETTE[", "color_palette("):
        assert pattern not in source, f"{module.__name__} chooses colours with {pattern!r}"


def test_show_glyph_draws_ink_dark_on_white():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    image = np.zeros((4, 4))
    image[1:3, 1:3] = 1.0
    shown = plotting.show_glyph(ax, image)
    rgba = shown.to_rgba(shown.get_array())
    assert rgba[0, 0, :3].min() > 0.99 and rgba[1, 1, :3].max() < 0.01
    plt.close(fig)
