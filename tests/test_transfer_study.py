import dataclasses
import math

import pytest
import torch

from mtml_lib import transfer_study as ts
from mtml_lib.data.functions import TEST_FAMILIES, LineTasks, task_family
from mtml_lib.profiles.transfer import PROFILES


def test_line_tasks_are_lines_and_check_ranges():
    batch = LineTasks().sample(4, 3, 5, torch.Generator().manual_seed(0))
    a, b = batch.info["slope"].view(-1, 1, 1), batch.info["intercept"].view(-1, 1, 1)
    torch.testing.assert_close(batch.support_y, a * batch.support_x + b)
    torch.testing.assert_close(batch.query_y, a * batch.query_x + b)
    assert batch.support_x.shape == (4, 3, 1) and batch.query_x.shape == (4, 5, 1)
    with pytest.raises(ValueError, match="slope must be a finite range"):
        LineTasks(slope=(1.0, -1.0))
    with pytest.raises(ValueError, match="unknown task family 'circle'; valid families: sinusoid"):
        task_family("circle")


def test_shifted_sinusoid_families_leave_the_training_ranges():
    gen = torch.Generator().manual_seed(1)
    big = task_family("large_amplitude").sample(50, 2, 2, gen)
    shifted = task_family("unseen_phase").sample(50, 2, 2, gen)
    assert bool((big.info["amplitude"] >= 5.0).all())
    assert bool((shifted.info["phase"] >= math.pi).all())
    assert set(TEST_FAMILIES) == {"sinusoid", "large_amplitude", "unseen_phase", "line"}


def test_ridge_heads_plain_matches_least_squares_and_prior_pulls_to_mean():
    torch.manual_seed(0)
    feats, w_true = torch.randn(3, 30, 4, dtype=torch.float64), torch.randn(3, 5, 1, dtype=torch.float64)
    phi = torch.cat([feats, torch.ones_like(feats[..., :1])], -1)
    y = phi @ w_true
    torch.testing.assert_close(ts.ridge_heads(feats, y, 1e-9), w_true, rtol=1e-6, atol=1e-6)
    mean = torch.arange(5, dtype=torch.float64)
    prior = (mean, torch.eye(5, dtype=torch.float64))
    pulled = ts.ridge_heads(feats, y, 1e9, prior)
    torch.testing.assert_close(pulled, mean.view(1, -1, 1).expand(3, -1, -1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"features \(T, K, F\) and targets \(T, K, 1\)"):
        ts.ridge_heads(feats, y[:, :3], 1.0)
    with pytest.raises(ValueError, match="ridge must be > 0"):
        ts.ridge_heads(feats, y, 0.0)


@pytest.fixture(scope="module")
def small():
    return dataclasses.replace(PROFILES["smoke"], mt_tasks=30, mt_epochs=300, n_val_tasks=30, n_test_tasks=40)


def test_head_prior_is_the_heads_mean(small):
    model, _ = ts.train_multitask(dataclasses.replace(small, mt_epochs=5), seed=0)
    mean, precision = ts.head_prior(model)
    heads = torch.stack([torch.cat([h.weight.reshape(-1), h.bias]) for h in model.heads.values()]).detach().double()
    torch.testing.assert_close(mean, heads.mean(0))
    assert precision.shape == (41, 41) and bool(torch.isfinite(precision).all())


def test_multitask_trunk_transfers_better_than_scratch(small):
    torch.set_num_threads(1)
    methods = ts.train_methods(small, seed=0, methods=("scratch", "multitask"), log=None)
    chosen = ts.select_settings(methods, small, seed=0)
    assert chosen["scratch"] in small.step_size_grid and chosen["multitask"] in small.ridge_grid
    batch = ts.sample_tasks("sinusoid", 60, 5, 50, seed=123)
    mt = methods["multitask"].mse(batch, small.adapt_steps).mean()
    scratch = methods["scratch"].mse(batch, small.adapt_steps).mean()
    assert mt < 0.5 * scratch, (float(mt), float(scratch))


def test_curves_table_and_unknown_method(small):
    methods = ts.train_methods(small, seed=0, methods=("scratch",), log=None)
    ts.select_settings(methods, small, seed=0)
    curves = ts.transfer_curves(methods, small, seed=0, families=("sinusoid", "line"))
    assert curves.mse["line"]["scratch"].shape == (len(small.k_shots), small.n_test_tasks)
    table = ts.results_table(curves, k=small.k_shots[-1])
    assert list(table.columns) == ["sinusoid", "line"] and "±" in table.loc["scratch", "line"]
    with pytest.raises(ValueError, match="k = 7 was not evaluated"):
        ts.results_table(curves, k=7)
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        ts.train_methods(small, methods=("magic",), log=None)


def test_controls_swap_the_head_fitter_of_a_trunk(small):
    torch.set_num_threads(1)
    methods = ts.train_methods(small, seed=0, methods=("multitask", "multitask_gd", "anil_ridge"), log=None)
    assert methods["multitask_gd"].rule == "head" and methods["anil_ridge"].rule == "ridge"
    assert methods["multitask_gd"].model[0] is methods["multitask"].model.shared  # the same trunk, not a copy
    chosen = ts.select_settings(methods, small, seed=0)
    assert chosen["anil_ridge"] in small.ridge_grid and chosen["multitask_gd"] in small.step_size_grid
    batch = ts.sample_tasks("sinusoid", 5, 4, 7, seed=3)
    # no step: the gradient head predicts with the training heads' mean, as the ridge rule does at a huge penalty
    start = methods["multitask_gd"].predict(batch.support_x, batch.support_y, batch.query_x, steps=0)
    ridge = ts.ridge_predict(methods["multitask"].trunk, batch.support_x, batch.support_y, batch.query_x, 1e9,
                             methods["multitask"].prior)
    torch.testing.assert_close(start, ridge, rtol=1e-4, atol=1e-4)
    mean, _ = methods["anil_ridge"].prior
    assert mean.shape == (small.hidden[-1] + 1,)


def test_average_task_check_and_the_reading(small):
    methods = ts.train_methods(small, seed=0, methods=("scratch", "joint"), log=None)
    checks = {name: ts.average_task_check(methods[name]) for name in methods}
    assert checks["joint"]["sinusoid"]["cos_coefficient"] == pytest.approx(-2 / math.pi * 2.55, rel=1e-5)
    assert checks["joint"]["unseen_phase"]["cos_coefficient"] == pytest.approx(2 / math.pi * 2.55, rel=1e-5)
    with pytest.raises(ValueError, match="needs a sinusoid family"):
        ts.average_task_check(methods["joint"], families=("line",))
    curves = ts.Curves((5, 10), {f: {"scratch": torch.full((2, 3), 4.0), "joint": torch.full((2, 3), 5.0)}
                                 for f in ("sinusoid", "unseen_phase", "line")})
    text = ts.describe_results(curves, k=10, checks=checks)
    assert "0 of the 1 learned starts beat scratch" in text
    assert "Why joint pretraining loses to scratch on unseen phases** (5.000 vs 4.000)" in text
    assert "+1.62 cos x" in text and "-1.62 cos x" in text
