"""The weighting strategies' mathematics on small hand-made inputs, and their interface."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mtml_lib.mtl.weighting import WEIGHTINGS, get_weighting
from mtml_lib.mtl.weighting.cagrad import CAGrad, cagrad_direction, cagrad_weights, project_simplex
from mtml_lib.mtl.weighting.dwa import DynamicWeightAverage, dwa_weights
from mtml_lib.mtl.weighting.gradnorm import GradNorm, gradnorm_targets, gradnorm_weight_grad, renormalise
from mtml_lib.mtl.weighting.mgda import MGDA, mgda_direction, min_norm_weights
from mtml_lib.mtl.weighting.pcgrad import PCGrad, pcgrad
from mtml_lib.mtl.weighting.rlw import RandomLossWeighting
from mtml_lib.mtl.weighting.uncertainty import UncertaintyWeighting, uncertainty_loss

D = torch.float64


def simplex_grid(n_tasks: int, steps: int) -> torch.Tensor:
    """Every point of the simplex with coordinates in multiples of 1/steps."""
    points = [c for c in itertools.product(range(steps + 1), repeat=n_tasks - 1) if sum(c) <= steps]
    return torch.tensor([[*c, steps - sum(c)] for c in points], dtype=D) / steps


# --------------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_every_registered_strategy_builds_and_combines(name):
    strategy = get_weighting(name, 3)
    losses = torch.tensor([1.0, 2.0, 0.5], dtype=D, requires_grad=True)
    if strategy.uses_gradients:
        grads = torch.randn(3, 7, dtype=D, generator=torch.Generator().manual_seed(0))
        direction = strategy.combine(grads, losses.detach(), 0)
        assert direction.shape == (7,) and torch.isfinite(direction).all()
    else:
        total = strategy.loss(losses, 0)
        assert total.dim() == 0 and torch.isfinite(total)
        total.backward()
        assert losses.grad is not None
    if strategy.last_weights is not None:
        assert strategy.last_weights.shape == (3,)


def test_unknown_strategy_raises_with_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown weighting strategy 'nash'.*'cagrad'.*'uw'"):
        get_weighting("nash", 2)


def test_wrong_number_of_losses_raises():
    with pytest.raises(ValueError, match="expected 3 task losses, got shape"):
        get_weighting("uw", 3).loss(torch.ones(2))
    with pytest.raises(ValueError, match="expected 2 task losses"):
        get_weighting("mgda", 2).combine(torch.ones(2, 4), torch.ones(3))
    with pytest.raises(ValueError, match=r"per-task gradients \(T, P\)"):
        pcgrad(torch.ones(4))


# -------------------------------------------------------------------------------------- uncertainty (UW)
def test_uncertainty_gradients_match_the_formulas():
    losses = torch.tensor([0.7, 1.3, 2.0], dtype=D, requires_grad=True)
    uw = UncertaintyWeighting(3, kinds=["classification", "segmentation", "depth"])
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.2, -0.5, 1.1]))
    total = uw.loss(losses)
    total.backward()
    s = uw.log_vars.detach().double()
    c = torch.tensor([1.0, 1.0, 0.5], dtype=D)  # classification: L/σ², regression: L/(2σ²)
    L = losses.detach()
    assert total.item() == pytest.approx(float((c * torch.exp(-s) * L + 0.5 * s).sum()))
    # d/dL_i = c_i e^{-s_i};  d/ds_i = -c_i e^{-s_i} L_i + 1/2
    assert torch.allclose(losses.grad, c * torch.exp(-s))
    assert torch.allclose(uw.log_vars.grad.double(), -c * torch.exp(-s) * L + 0.5, atol=1e-6)
    assert torch.allclose(uw.last_weights.double(), c * torch.exp(-s), atol=1e-6)


def test_uncertainty_matches_the_sigma_form_and_its_optimum():
    L = torch.tensor([0.8, 3.0], dtype=D)
    sigma = torch.tensor([0.5, 2.0], dtype=D)
    s = torch.log(sigma**2)
    regression = uncertainty_loss(L, s, torch.full((2,), 0.5, dtype=D))
    classification = uncertainty_loss(L, s, torch.ones(2, dtype=D))
    assert regression.item() == pytest.approx(float((L / (2 * sigma**2) + torch.log(sigma)).sum()))
    assert classification.item() == pytest.approx(float((L / sigma**2 + torch.log(sigma)).sum()))
    # at fixed L the best s is log L (regression) and log 2L (classification)
    for factor, best in [(0.5, torch.log(L)), (1.0, torch.log(2 * L))]:
        s_var = best.clone().requires_grad_(True)
        uncertainty_loss(L, s_var, torch.full((2,), factor, dtype=D)).backward()
        assert torch.allclose(s_var.grad, torch.zeros(2, dtype=D), atol=1e-12)


def test_uncertainty_rejects_unknown_kinds():
    with pytest.raises(ValueError, match=r"unknown task kind 'ranking'.*'classification'"):
        UncertaintyWeighting(2, kinds=["classification", "ranking"])
    with pytest.raises(ValueError, match="2 tasks but 1 kinds"):
        UncertaintyWeighting(2, kinds=["depth"])


# --------------------------------------------------------------------------------------------------- DWA
def test_dwa_weights_follow_the_definition():
    previous = torch.tensor([0.5, 1.0, 0.9], dtype=D)
    before = torch.tensor([1.0, 1.0, 1.0], dtype=D)
    w = dwa_weights(previous, before, temperature=2.0)
    r = previous / before
    expected = 3 * torch.exp(r / 2) / torch.exp(r / 2).sum()
    assert torch.allclose(w, expected)
    assert w.sum().item() == pytest.approx(3.0)
    assert w[0] < w[2] < w[1]  # the task whose loss fell fastest gets the least weight


def test_dwa_uses_epoch_means_and_starts_with_equal_weights():
    dwa = DynamicWeightAverage(2, temperature=1.0, steps_per_epoch=2)
    epochs = [[[4.0, 2.0], [2.0, 2.0]], [[1.0, 2.0], [2.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]
    seen = []
    step = 0
    for epoch in epochs:
        for losses in epoch:
            dwa.loss(torch.tensor(losses, dtype=D), step)
            seen.append(dwa.last_weights.clone())
            step += 1
    assert all(torch.equal(w, torch.ones(2, dtype=D)) for w in seen[:4])
    means = [torch.tensor([3.0, 2.0], dtype=D), torch.tensor([1.5, 1.5], dtype=D)]
    assert torch.allclose(seen[4], dwa_weights(means[1], means[0], 1.0))
    assert torch.allclose(seen[5], seen[4])  # weights are constant within an epoch


# --------------------------------------------------------------------------------------------------- RLW
def test_rlw_weights_are_random_positive_sum_to_t_and_repeatable():
    a, b = RandomLossWeighting(3, seed=7), RandomLossWeighting(3, seed=7)
    losses = torch.ones(3, dtype=D)
    draws = []
    for step in range(5):
        a.loss(losses, step)
        b.loss(losses, step)
        assert torch.equal(a.last_weights, b.last_weights)
        assert (a.last_weights > 0).all() and a.last_weights.sum().item() == pytest.approx(3.0)
        draws.append(a.last_weights)
    assert not torch.allclose(draws[0], draws[1])


# ---------------------------------------------------------------------------------------------- GradNorm
def test_gradnorm_weight_gradient_by_hand():
    w = torch.ones(2, dtype=D)
    norms = torch.tensor([1.0, 2.0], dtype=D)
    losses = torch.ones(2, dtype=D)
    # equal training rates: target = mean(w n) = 1.5 for both; task 1 is below (raise it), task 2 above
    assert torch.allclose(gradnorm_targets(w, norms, losses, losses, 1.5), torch.tensor([1.5, 1.5], dtype=D))
    assert torch.allclose(gradnorm_weight_grad(w, norms, losses, losses), torch.tensor([-1.0, 2.0], dtype=D))
    # a task that trains more slowly (higher L/L0) gets a higher target: r = (2/3, 4/3)
    targets = gradnorm_targets(w, norms, torch.tensor([0.5, 1.0], dtype=D), torch.ones(2, dtype=D), alpha=1.0)
    assert torch.allclose(targets, 1.5 * torch.tensor([2 / 3, 4 / 3], dtype=D))


def test_gradnorm_updates_equalise_weighted_gradient_norms():
    norms = torch.tensor([1.0, 2.0], dtype=D)
    losses = torch.ones(2, dtype=D)
    w = torch.ones(2, dtype=D)
    for _ in range(400):
        w = renormalise(w - 0.005 * gradnorm_weight_grad(w, norms, losses, losses))
    # equal rates -> w_1 n_1 = w_2 n_2 with w_1 + w_2 = 2: w = (4/3, 2/3)
    assert torch.allclose(w, torch.tensor([4 / 3, 2 / 3], dtype=D), atol=0.02)


def test_gradnorm_strategy_combines_with_current_weights_and_sets_their_gradient():
    gn = GradNorm(2, alpha=1.0)
    grads = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    with torch.no_grad():
        gn.weights.copy_(torch.tensor([3.0, 1.0]))  # renormalised to sum T = 2 before use
    direction = gn.combine(grads, torch.tensor([1.0, 1.0]))
    assert torch.allclose(gn.last_weights, torch.tensor([1.5, 0.5]))
    assert torch.allclose(direction, torch.tensor([1.5, 1.0]))
    # w n = (1.5, 1.0), target 1.25 each: lower w_1, raise w_2
    assert torch.allclose(gn.weights.grad, torch.tensor([1.0, -2.0]))


# ------------------------------------------------------------------------------------------------ PCGrad
def test_pcgrad_removes_the_conflicting_component():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=D)  # g1 · g2 = -1 < 0
    direction = pcgrad(g)
    g1_pc = g[0] - (g[0] @ g[1]) / (g[1] @ g[1]) * g[1]
    g2_pc = g[1] - (g[1] @ g[0]) / (g[0] @ g[0]) * g[0]
    assert torch.allclose(direction, g1_pc + g2_pc)
    assert torch.allclose(direction, torch.tensor([0.5, 1.5], dtype=D))
    assert g1_pc @ g[1] == pytest.approx(0.0) and g2_pc @ g[0] == pytest.approx(0.0)
    # the update no longer hurts either task (to first order)
    assert (g @ direction >= -1e-12).all()


def test_pcgrad_leaves_non_conflicting_gradients_alone():
    g = torch.tensor([[1.0, 0.0, 1.0], [0.5, 1.0, 0.0], [0.0, 0.2, 2.0]], dtype=D)
    assert (g @ g.T >= 0).all()
    assert torch.allclose(pcgrad(g, torch.Generator().manual_seed(3)), g.sum(0))


def test_pcgrad_random_order_is_repeatable_by_seed():
    g = torch.randn(4, 10, dtype=D, generator=torch.Generator().manual_seed(1))
    a = PCGrad(4, seed=5).combine(g, torch.ones(4))
    b = PCGrad(4, seed=5).combine(g, torch.ones(4))
    assert torch.equal(a, b)


# -------------------------------------------------------------------------------------------------- MGDA
def test_mgda_two_tasks_closed_form():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=D)
    direction, alpha = mgda_direction(g)
    # α₁ = (g₂ - g₁)·g₂ / ||g₁ - g₂||² on the segment between g₁ and g₂
    a1 = float((g[1] - g[0]) @ g[1] / ((g[0] - g[1]) @ (g[0] - g[1])))
    assert alpha.tolist() == pytest.approx([a1, 1 - a1])
    assert direction.tolist() == pytest.approx([0.2, 0.4])
    assert (g @ direction > 0).all()  # a common descent direction


@pytest.mark.parametrize("n_tasks", [3, 4, 6])
def test_mgda_is_the_min_norm_point_of_the_convex_hull(n_tasks):
    gen = torch.Generator().manual_seed(n_tasks)
    for _ in range(20):
        g = torch.randn(n_tasks, 5, dtype=D, generator=gen) + torch.tensor([0.5, 0, 0, 0, 0], dtype=D)
        direction, alpha = mgda_direction(g)
        assert alpha.min() >= 0 and alpha.sum().item() == pytest.approx(1.0)
        # optimality on the simplex: g_j · d >= ||d||² for all j, with equality where α_j > 0
        slack = g @ direction - direction @ direction
        assert slack.min() >= -1e-9
        assert slack[alpha > 1e-8].abs().max() <= 1e-8
    # and no point of a fine grid of the hull is shorter (three tasks)
    g = torch.randn(3, 4, dtype=D, generator=gen)
    direction, _ = mgda_direction(g)
    grid_norms = (simplex_grid(3, 60) @ g).norm(dim=1)
    assert direction.norm() <= grid_norms.min() + 1e-12


def test_mgda_special_cases():
    g = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=D)  # 0 lies in the hull: Pareto-stationary
    assert torch.allclose(mgda_direction(g)[0], torch.zeros(2, dtype=D), atol=1e-12)
    same = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], dtype=D)
    assert torch.allclose(mgda_direction(same)[0], same[0])
    assert torch.allclose(min_norm_weights(torch.zeros(2, 2, dtype=D)), torch.full((2,), 0.5, dtype=D))
    # the strategy returns T d, so that equal α would give Σ g_i
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=D)
    assert torch.allclose(MGDA(2).combine(g, torch.ones(2)), 2 * mgda_direction(g)[0])


# ------------------------------------------------------------------------------------------------ CAGrad
def test_project_simplex():
    assert project_simplex(np.array([0.2, 0.3, 0.5])) == pytest.approx([0.2, 0.3, 0.5])
    assert project_simplex(np.array([2.0, 0.0])) == pytest.approx([1.0, 0.0])
    assert project_simplex(np.array([1.0, 1.0, -5.0])) == pytest.approx([0.5, 0.5, 0.0])


def test_cagrad_with_zero_radius_is_equal_weighting():
    g = torch.randn(3, 6, dtype=D, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(CAGrad(3, c=0.0).combine(g, torch.ones(3)), g.sum(0))


@pytest.mark.parametrize("c", [0.4, 0.8])
def test_cagrad_solves_its_dual_and_improves_the_worst_task(c):
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        g = torch.randn(3, 5, dtype=D, generator=gen)
        gram = g @ g.T
        w = cagrad_weights(gram, c)
        g0 = g.mean(0)

        def dual(v: torch.Tensor) -> torch.Tensor:
            return v @ (g @ g0) + c * g0.norm() * (v @ g).norm(dim=-1)

        grid = simplex_grid(3, 80)
        assert dual(w) <= dual(grid).min() + 1e-9
        d, _ = cagrad_direction(g, c)
        d = d * (1 + c**2)  # undo the rescaling: d lies on the ball around g0
        assert (d - g0).norm().item() == pytest.approx(c * g0.norm().item(), rel=1e-6)
        # the worst task improves at least as much as under the average gradient (g0 is in the ball)
        assert (g @ d).min() >= (g @ g0).min() - 1e-9
