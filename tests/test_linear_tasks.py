"""The linear task family, the hand-derived gradient, the estimators, and the notebook-01 claims."""

from __future__ import annotations

import math

import pytest
import torch

from mtml_lib.data.linear_tasks import LinearTaskFamily
from mtml_lib.mtl import linear_experiment as le
from mtml_lib.mtl import linear_models as lm
from mtml_lib.mtl.trainer import batch_losses
from mtml_lib.mtl.weighting.base import FixedWeights


# ------------------------------------------------------------------------------------------ the family
def test_family_is_deterministic_and_structured():
    fam = LinearTaskFamily(dim=12, rank=3, noise=0.1, spread=0.6, seed=4)
    a, b = fam.sample(5, 7, seed=1), LinearTaskFamily(12, 3, 0.1, 0.6, seed=4).sample(5, 7, seed=1)
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y) and torch.equal(a.weights, b.weights)
    assert a.X.shape == (5, 7, 12) and a.y.shape == (5, 7) and a.weights.shape == (5, 12)
    assert a.names == ("task0", "task1", "task2", "task3", "task4")
    torch.testing.assert_close(fam.basis.T @ fam.basis, torch.eye(3, dtype=torch.float64))
    # ρ = 0: every true weight lies in span(B); ρ = 1: most of the deviation leaves it
    project = fam.basis @ fam.basis.T
    assert (a.weights - a.weights @ project).abs().max() < 1e-12
    off = LinearTaskFamily(12, 3, 0.1, 0.6, off_subspace=1.0, seed=4).sample(200, 1, seed=1).weights
    outside = ((off - off @ project) ** 2).sum(-1).mean()
    assert 0.6 * 0.7 < outside < 0.6 * 0.8  # spread · (d − k)/d = 0.45 of the energy
    assert not torch.equal(fam.sample(5, 7, seed=2).X, a.X)


def test_signal_has_unit_energy_and_targets_follow_the_noise_level():
    fam = LinearTaskFamily(dim=10, rank=2, noise=0.5, spread=0.5, off_subspace=0.3, seed=0)
    tasks = fam.sample(4000, 50, seed=0)
    assert abs((tasks.weights ** 2).sum(-1).mean().item() - 1.0) < 0.05
    residual = tasks.y - torch.einsum("tnd,td->tn", tasks.X, tasks.weights)
    assert abs(residual.std().item() - 0.5) < 0.01


def test_excess_risk_is_the_test_error_above_the_noise():
    fam = LinearTaskFamily(dim=6, rank=2, noise=0.2, seed=1)
    tasks = fam.sample(3, 200_000, seed=5)
    estimate = tasks.weights + 0.3
    empirical = ((torch.einsum("tnd,td->tn", tasks.X, estimate) - tasks.y) ** 2).mean(-1) - 0.2 ** 2
    torch.testing.assert_close(empirical, tasks.excess_risk(estimate), atol=0.01, rtol=0.02)
    assert torch.equal(tasks.excess_risk(tasks.weights), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(tasks.excess_risk(torch.zeros(6)), (tasks.weights ** 2).sum(-1))
    with pytest.raises(ValueError, match=r"estimate has shape \(5,\)"):
        tasks.excess_risk(torch.zeros(5))


def test_subset_keeps_the_first_examples():
    tasks = LinearTaskFamily(dim=5, rank=1, seed=0).sample(2, 10, seed=0)
    part = tasks.subset(3)
    assert torch.equal(part.X, tasks.X[:, :3]) and torch.equal(part.weights, tasks.weights)
    with pytest.raises(ValueError, match="asked for 11 examples per task, the set has 10"):
        tasks.subset(11)


def test_bad_family_arguments_raise_clear_errors():
    fam = LinearTaskFamily(dim=5, rank=2, seed=0)
    with pytest.raises(ValueError, match=r"n_tasks must be >= 1 \(T = 0"):
        fam.sample(0, 4)
    with pytest.raises(ValueError, match="n_samples must be a positive integer, got 0"):
        fam.sample(2, 0)
    with pytest.raises(ValueError, match="rank must be <= dim"):
        LinearTaskFamily(dim=3, rank=4)
    with pytest.raises(ValueError, match=r"spread must be a number in \[0, 1\], got 1.5"):
        LinearTaskFamily(dim=3, rank=1, spread=1.5)
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        LinearTaskFamily(dim=3, rank=1, noise=-1.0)
    with pytest.raises(ValueError, match="at least one task name"):
        lm.low_rank_model(5, 2, [])
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, dim=5\]"):
        lm.low_rank_model(5, 6, ["a"])


# ------------------------------------------------------------------------------------ the gradient
def test_hand_derived_gradient_equals_autograd_float64():
    fam = LinearTaskFamily(dim=7, rank=3, noise=0.3, off_subspace=0.5, seed=2)
    tasks = fam.sample(4, 9, seed=3)
    torch.manual_seed(0)
    model = lm.low_rank_model(7, 3, tasks.names)
    w = torch.tensor([0.5, 1.0, 2.0, 0.25], dtype=torch.float64)
    objective = FixedWeights(4, w).loss(batch_losses(model, tasks.batch(), tasks.names))
    objective.backward()
    B = lm.shared_basis(model)
    A = torch.cat([model.heads[n].weight.detach() for n in tasks.names])
    grad_B, grad_A = lm.objective_gradients(B, A, tasks.X, tasks.y, w)
    torch.testing.assert_close(grad_B, model.shared.weight.grad.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_A, torch.cat([model.heads[n].weight.grad for n in tasks.names]), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="do not fit"):
        lm.objective_gradients(B, A[:2], tasks.X, tasks.y)


# ------------------------------------------------------------------------------------ the estimators
def test_principal_angles():
    e = torch.eye(4, dtype=torch.float64)
    assert lm.principal_angles(e[:, :2], e[:, :2] @ torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)).max() < 1e-7
    torch.testing.assert_close(lm.principal_angles(e[:, :2], e[:, 2:]), torch.full((2,), math.pi / 2, dtype=torch.float64))
    tilted = torch.tensor([[1.0], [1.0], [0.0], [0.0]], dtype=torch.float64)
    torch.testing.assert_close(lm.principal_angles(e[:, :1], tilted), torch.tensor([math.pi / 4], dtype=torch.float64))
    with pytest.raises(ValueError, match="same d"):
        lm.principal_angles(e[:3, :1], e[:, :1])


def test_ridge_leave_one_out_matches_brute_force():
    tasks = LinearTaskFamily(dim=6, rank=2, noise=0.5, seed=0).sample(2, 8, seed=1)
    X, y = tasks.X[0], tasks.y[0]
    grid = (10.0, 0.1, 0.001)
    W, lam = lm.ridge_loocv(tasks.X, tasks.y, grid)

    def ridge(Xs, ys, l):
        return torch.linalg.solve(Xs.T @ Xs + l * torch.eye(6, dtype=torch.float64), Xs.T @ ys)

    errors = []
    for c in grid:
        l = c * 8
        loo = [(y[j] - X[j] @ ridge(torch.cat([X[:j], X[j + 1:]]), torch.cat([y[:j], y[j + 1:]]), l)) ** 2 for j in range(8)]
        errors.append(torch.stack(loo).mean())
    best = grid[int(torch.stack(errors).argmin())] * 8
    assert lam[0].item() == pytest.approx(best)
    torch.testing.assert_close(W[0], ridge(X, y, best))


def test_oracle_is_exact_on_noiseless_structured_data():
    fam = LinearTaskFamily(dim=10, rank=3, noise=0.0, spread=0.8, seed=3)
    tasks = fam.sample(4, 3, seed=1)  # n = k examples pin down a_i when the basis is known
    assert tasks.excess_risk(lm.oracle_estimate(fam, tasks)).max() < 1e-10


# ------------------------------------------------------------------------------------ the claims of notebook 01
def test_shared_model_recovers_the_true_subspace_on_noiseless_data():
    fam = LinearTaskFamily(dim=10, rank=2, noise=0.0, seed=7)
    tasks = fam.sample(8, 30, seed=1)
    model, history = lm.fit_shared(tasks, rank=2, epochs=20)
    angles = lm.principal_angles(lm.shared_basis(model), fam.basis)
    assert angles.max() < 1e-3
    assert tasks.excess_risk(lm.task_weights(model)).max() < 1e-6
    assert history.objective[-1] < 1e-8 * history.objective[0]


def test_with_few_samples_sharing_beats_independent_models_by_a_margin():
    spec = le.FamilySpec(dim=20, rank=2, noise=0.3, spread=0.7)
    rows = le.sample_size_sweep(spec, le.SharedFit(rank=2, epochs=10), n_tasks=20, sample_sizes=[8], seeds=[0, 1, 2])
    mean = rows.groupby("method")["risk"].mean()
    # n = 8 examples for d = 20 weights: the shared model needs only the k = 2 coefficients per task
    assert mean["shared"] < 0.5 * mean["independent"]
    assert mean["oracle"] < mean["shared"]
    assert set(rows["method"]) == set(le.METHODS) and len(rows) == 3 * len(le.METHODS)


def test_without_shared_structure_and_with_plenty_of_data_sharing_hurts():
    spec = le.FamilySpec(dim=20, rank=2, noise=0.3, spread=0.7, off_subspace=1.0)
    rows = le.sample_size_sweep(spec, le.SharedFit(rank=2, epochs=10), n_tasks=10, sample_sizes=[64], seeds=[0, 1])
    mean = rows.groupby("method")["risk"].mean()
    assert mean["independent"] < 0.5 * mean["shared"]


def test_frozen_transfer_beats_scratch_with_few_samples():
    spec = le.FamilySpec(dim=12, rank=2, noise=0.2, spread=0.7)
    rows = le.transfer_sweep(spec, le.SharedFit(rank=2, epochs=10), n_tasks=10, n_pretrain=24,
                             new_sample_sizes=[4], n_new_tasks=4, seeds=[0, 1])
    mean = rows.groupby("method")["risk"].mean()
    assert mean["frozen θ"] < 0.5 * mean["scratch"]
    assert "fine-tuned θ" not in mean


def test_summaries_and_winners():
    rows = le.pd.DataFrame([
        {"seed": s, "n": n, "method": m, "risk": r + 0.01 * s}
        for s in (0, 1) for n, m, r in ((2, "a", 1.0), (2, "b", 2.0), (4, "a", 3.0), (4, "b", 0.5), (4, "oracle", 0.1))
    ])
    table = le.summarise(rows, "n")
    assert table.loc[(table.n == 2) & (table.method == "a"), "mean"].item() == pytest.approx(1.005)
    assert table["seeds"].max() == 2
    assert le.winners(rows, "n") == {2: "a", 4: "b"}
