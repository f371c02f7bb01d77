"""mtml_lib.data.sinusoid: the task distribution of Finn et al. (2017), seeded and vectorised."""

import math

import pytest
import torch

from mtml_lib.data.sinusoid import SinusoidTasks


def test_shapes_ranges_and_the_function():
    batch = SinusoidTasks().sample(2000, 10, 15, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == batch.support_y.shape == (2000, 10, 1)
    assert batch.query_x.shape == batch.query_y.shape == (2000, 15, 1)
    a, phi = batch.info["amplitude"], batch.info["phase"]
    assert a.shape == phi.shape == (2000,)
    assert 0.1 <= a.min() and a.max() <= 5.0 and 0.0 <= phi.min() and phi.max() <= math.pi
    x = torch.cat([batch.support_x, batch.query_x], 1)
    assert -5.0 <= x.min() and x.max() <= 5.0
    # uniform draws: means near the middle of each range
    assert abs(a.mean().item() - 2.55) < 0.1 and abs(phi.mean().item() - math.pi / 2) < 0.1 and abs(x.mean().item()) < 0.05
    y = a.view(-1, 1, 1) * torch.sin(batch.query_x - phi.view(-1, 1, 1))
    assert torch.allclose(batch.query_y, y)


def test_seeded_and_independent():
    tasks = SinusoidTasks()
    one = tasks.sample(5, 10, generator=torch.Generator().manual_seed(3))
    two = tasks.sample(5, 10, generator=torch.Generator().manual_seed(3))
    other = tasks.sample(5, 10, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(one.tensors(), two.tensors()))
    assert not torch.equal(one.support_x, other.support_x)
    assert not torch.equal(one.support_x, one.query_x)  # query points are drawn apart from the support
    sample = tasks.sampler(10, seed=3)
    assert torch.equal(sample(5).support_x, one.support_x)
    assert not torch.equal(sample(5).support_x, one.support_x)  # the sampler's stream moves on


def test_dtype_and_grid():
    batch = SinusoidTasks().sample(2, 3, dtype=torch.float64)
    assert batch.support_x.dtype == batch.query_y.dtype == torch.float64
    grid = SinusoidTasks().grid(11)
    assert grid.shape == (11, 1) and grid[0, 0] == -5.0 and grid[-1, 0] == 5.0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="k_support must be an integer >= 1, got 0"):
        SinusoidTasks().sample(3, 0)
    with pytest.raises(ValueError, match="n_tasks must be an integer >= 1"):
        SinusoidTasks().sample(0, 5)
    with pytest.raises(ValueError, match=r"amplitude must be a finite range.*\(5.0, 0.1\)"):
        SinusoidTasks(amplitude=(5.0, 0.1))


def test_mean_function_is_the_family_average_in_closed_form():
    x = torch.linspace(-5, 5, 11, dtype=torch.float64)
    paper = SinusoidTasks()
    torch.testing.assert_close(paper.mean_function(x), -(2 / math.pi) * 2.55 * torch.cos(x))
    shifted = SinusoidTasks(phase=(math.pi, 2 * math.pi))
    torch.testing.assert_close(shifted.mean_function(x), (2 / math.pi) * 2.55 * torch.cos(x))
    batch = paper.sample(100_000, 1, 1, torch.Generator().manual_seed(0), torch.float64)
    grid = x.view(1, -1, 1).expand(100_000, -1, -1)
    monte_carlo = SinusoidTasks.function(batch.info["amplitude"], batch.info["phase"], grid).mean(0).flatten()
    assert (monte_carlo - paper.mean_function(x)).abs().max() < 0.03
