"""save_figure and results.record: files, provenance and the generated gallery."""

import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from mtml_lib import config, plotting, results


@pytest.fixture
def out(tmp_path, monkeypatch):
    monkeypatch.setenv("MTML_OUT", str(tmp_path))
    config.setup("00_overview", "quick", "cpu", seed=3, verbose=False)  # quick: the gallery of figures/
    return tmp_path


def test_save_figure_writes_png_pdf_and_index(out):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    entry = plotting.save_figure(fig, "00_test_line", caption="A line.")
    plt.close(fig)
    assert (out / "figures" / "00_test_line.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "figures" / "00_test_line.pdf").read_bytes()[:5] == b"%PDF-"
    index = json.loads((out / "figures" / "index.json").read_text())
    assert index["00_test_line"] == entry
    assert entry["notebook"] == "00_overview" and entry["caption"] == "A line."
    assert entry["provenance"]["profile"] == "quick" and entry["provenance"]["seed"] == 3


def test_save_figure_pdf_is_byte_identical_on_rerun(out):
    def draw():
        fig, ax = plt.subplots()
        ax.plot(np.arange(5), np.arange(5) ** 2)
        plotting.save_figure(fig, "00_same", caption="Same.")
        plt.close(fig)
        return (out / "figures" / "00_same.pdf").read_bytes()

    assert draw() == draw()


def test_save_figure_rejects_bad_names(out):
    fig = plt.figure()
    for bad in ["", "a/b", "x.png", "../up"]:
        with pytest.raises(ValueError, match="figure name"):
            plotting.save_figure(fig, bad, caption="c")
    with pytest.raises(ValueError, match="caption"):
        plotting.save_figure(fig, "ok", caption="  ")
    plt.close(fig)


def test_gallery_lists_figures_and_drops_missing(out):
    fig = plt.figure()
    plotting.save_figure(fig, "00_a", caption="Figure A.")
    plotting.save_figure(fig, "00_b", caption="Figure B.")
    plt.close(fig)
    (out / "figures" / "00_b.png").unlink()
    gallery = plotting.write_gallery().read_text()
    assert "![00_a](00_a.png)" in gallery and "Figure A." in gallery and "profile `quick`" in gallery
    assert "00_b" not in gallery
    assert "00_b" not in json.loads((out / "figures" / "index.json").read_text())


def test_record_writes_json_with_provenance(out):
    path = results.record(None, {"mse": torch.tensor(0.25), "acc": np.float32(0.5), "curve": np.arange(3)})
    assert path == out / "results" / "quick" / "00_overview.json"
    payload = results.load("00_overview", "quick")
    assert payload["metrics"] == {"mse": 0.25, "acc": 0.5, "curve": [0, 1, 2]}
    assert payload["provenance"]["profile"] == "quick" and payload["provenance"]["notebook"] == "00_overview"


def test_record_refuses_non_finite_and_empty(out):
    with pytest.raises(ValueError, match=r"metrics\.loss.*nan"):
        results.record(None, {"loss": math.nan})
    with pytest.raises(ValueError, match="non-empty"):
        results.record(None, {})
    with pytest.raises(FileNotFoundError, match="no results for notebook 'zz'"):
        results.load("zz", "smoke")


@pytest.mark.parametrize("path", sorted((config.repo_root() / "notebooks").glob("**/*.ipynb")), ids=lambda p: p.name)
def test_stored_notebooks_hold_no_widget_state(path):
    """A widget output shows as an empty or frozen progress bar in JupyterLab ("0% | 0/18"): stored runs
    must not keep any (mtml run sets TQDM_DISABLE, and every bar the library draws honours it)."""
    nb = json.loads(path.read_text())
    assert "widgets" not in nb.get("metadata", {}), path.name
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {}), path.name


def test_each_profile_but_quick_has_its_own_figure_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MTML_OUT", str(tmp_path))
    for profile, folder in (("quick", tmp_path / "figures"), ("full", tmp_path / "figures" / "full")):
        config.setup("00_overview", profile, "cpu", seed=0, verbose=False)
        fig, ax = plt.subplots()
        plotting.save_figure(fig, "00_same_name", caption=f"Made by the {profile} profile.")
        plt.close(fig)
        index = json.loads((folder / "index.json").read_text())
        assert index["00_same_name"]["provenance"]["profile"] == profile
    quick = json.loads((tmp_path / "figures" / "index.json").read_text())
    assert quick["00_same_name"]["caption"] == "Made by the quick profile."  # the full run did not replace it
