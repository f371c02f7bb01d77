import random

import numpy as np
import pytest
import torch

from mtml_lib import config


def test_profile_explicit_beats_environment(monkeypatch):
    monkeypatch.setenv("MTML_PROFILE", "full")
    assert config.resolve_profile("smoke") == "smoke"


def test_profile_environment_beats_auto(monkeypatch):
    monkeypatch.setenv("MTML_PROFILE", "full")
    assert config.resolve_profile(None, "cpu") == "full"


def test_profile_auto_is_quick_on_cpu(monkeypatch):
    monkeypatch.delenv("MTML_PROFILE", raising=False)
    assert config.resolve_profile(None, "cpu") == "quick"


def test_profile_auto_is_full_on_gpu(monkeypatch):
    monkeypatch.delenv("MTML_PROFILE", raising=False)
    monkeypatch.setattr(config, "resolve_device", lambda device=None: torch.device("cuda"))
    assert config.resolve_profile(None) == "full"


@pytest.mark.parametrize("source", ["argument", "env"])
def test_unknown_profile_names_choices(monkeypatch, source):
    if source == "env":
        monkeypatch.setenv("MTML_PROFILE", "fast")
        value = None
    else:
        value = "fast"
    with pytest.raises(config.ConfigError, match=r"'fast'.*'smoke', 'quick', 'full'"):
        config.resolve_profile(value, "cpu")


def test_device_resolution(monkeypatch):
    monkeypatch.delenv("MTML_DEVICE", raising=False)
    assert config.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("MTML_DEVICE", "cpu")
    assert config.resolve_device(None) == torch.device("cpu")
    with pytest.raises(config.ConfigError, match=r"'tpu'.*'auto', 'cpu', 'cuda'"):
        config.resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(config.ConfigError, match="no CUDA GPU"):
        config.resolve_device("cuda")


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(3), torch.randn(5), torch.nn.Linear(4, 2).weight.detach().clone()

    config.seed_everything(123)
    first = draw()
    config.seed_everything(123)
    second = draw()
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])
    config.seed_everything(124)
    assert not torch.equal(torch.randn(5), first[2])


def test_seed_must_be_integer():
    with pytest.raises(config.ConfigError, match="integer"):
        config.seed_everything(1.5)


def test_load_profile_errors_and_frozen():
    settings = config.load_profile("00_overview", "smoke")
    with pytest.raises(Exception):
        settings.n_tasks = 99
    with pytest.raises(config.ConfigError, match=r"unknown notebook 'nope'.*00_overview"):
        config.load_profile("nope", "smoke")
    with pytest.raises(config.ConfigError, match="unknown profile"):
        config.load_profile("00_overview", "medium")


def test_every_profile_module_defines_all_profiles():
    import dataclasses
    import importlib

    from mtml_lib.profiles import NOTEBOOK_PROFILES

    for notebook, module in NOTEBOOK_PROFILES.items():
        try:
            profiles = importlib.import_module(f"mtml_lib.profiles.{module}").PROFILES
        except ModuleNotFoundError:
            continue  # a notebook whose profiles are not written yet has no notebook either
        assert set(config.REQUIRED_PROFILES) <= set(profiles) <= set(config.PROFILE_NAMES), notebook
        for settings in profiles.values():
            assert dataclasses.is_dataclass(settings) and type(settings).__dataclass_params__.frozen, notebook


def test_setup_records_provenance():
    run = config.setup("00_overview", "smoke", "cpu", seed=7, verbose=False)
    meta = run.metadata()
    assert config.current_run() is run
    assert meta["profile"] == "smoke" and meta["seed"] == 7 and meta["device"] == "cpu"
    assert meta["torch"] == torch.__version__
    assert meta["git_commit"] == "unknown" or len(meta["git_commit"].split("-")[0]) == 40
    assert meta["wall_time_s"] >= 0
    assert run.settings == config.load_profile("00_overview", "smoke")


def test_provenance_names_the_commit_and_only_code_changes_make_it_dirty(tmp_path, monkeypatch):
    import json
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    nb = {"cells": [{"cell_type": "code", "source": ["x = 1"], "outputs": [], "metadata": {}}], "metadata": {},
          "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "notebooks" / "01_a.ipynb").write_text(json.dumps(nb))
    (tmp_path / "results" / "r.json").write_text("{}")
    (tmp_path / "lib.py").write_text("A = 1\n")
    git("init", "-q")
    git("-c", "user.email=a@b", "-c", "user.name=a", "add", ".")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "code")
    monkeypatch.setattr(config, "repo_root", lambda: tmp_path)
    sha, dirty = config.git_state()
    assert len(sha) == 40 and dirty == []

    (tmp_path / "results" / "r.json").write_text('{"new": 1}')  # a result of the run: not code
    nb["cells"][0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["1\n"]}]
    (tmp_path / "notebooks" / "01_a.ipynb").write_text(json.dumps(nb))  # stored outputs only
    assert config.git_state() == (sha, []) and config.git_commit() == sha

    nb["cells"][0]["source"] = ["x = 2"]
    (tmp_path / "notebooks" / "01_a.ipynb").write_text(json.dumps(nb))
    (tmp_path / "lib.py").write_text("A = 2\n")
    assert config.git_state() == (sha, ["lib.py", "notebooks/01_a.ipynb"])
    run = config.setup("00_overview", "smoke", "cpu", seed=0, verbose=False)
    meta = run.metadata()
    assert meta["git_commit"] == f"{sha}-dirty" and meta["git_dirty_files"] == ["lib.py", "notebooks/01_a.ipynb"]


def test_progress_bars_follow_tqdm_disable(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert config.show_progress(True) and not config.show_progress(False)
    monkeypatch.setenv("TQDM_DISABLE", "1")  # as `mtml run` sets it: no widget state in stored notebooks
    assert not config.show_progress(True)
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert config.show_progress(True)


def test_paper_exists_where_a_published_protocol_does_and_is_never_automatic(monkeypatch):
    monkeypatch.delenv("MTML_PROFILE", raising=False)
    assert config.resolve_profile(None, "cpu") == "quick"
    assert config.has_profile("04_few_shot_classification", "paper")
    assert not config.has_profile("02_multitask_cls_seg", "paper")
    with pytest.raises(config.ConfigError, match="notebook '02_multitask_cls_seg' has no 'paper' profile.*"
                                                 "notebooks with one: '04_few_shot_classification'"):
        config.load_profile("02_multitask_cls_seg", "paper")
