"""The sinusoid regression tasks of Finn et al. (2017), sampled in one vectorised draw per meta-batch.

A task is ``y = A sin(x − φ)`` with amplitude ``A ~ U[0.1, 5.0]`` and phase ``φ ~ U[0, π]``; its inputs
are ``x ~ U[−5, 5]``. Each task gets ``k_support`` support points and ``k_query`` query points, all drawn
independently (the paper's K = 10 uses 10 of each). Everything is drawn from an explicit
``torch.Generator``, so a seed gives the same tasks on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mtml_lib.meta.tasks import TaskBatch


def check_ranges(obj, names: tuple[str, ...]) -> None:
    """Every field in ``names`` of ``obj`` must be a finite range ``(low, high)`` with ``low < high``."""
    for name in names:
        lo, hi = getattr(obj, name)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{name} must be a finite range (low < high), got {(lo, hi)}")


def check_sizes(**sizes: int) -> None:
    """Task and example counts must be integers >= 1."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def uniform(shape: tuple[int, ...], bounds: tuple[float, float], generator: torch.Generator | None,
            dtype: torch.dtype) -> torch.Tensor:
    """``U[low, high)`` samples of ``shape`` from ``generator``."""
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=dtype)


@dataclass(frozen=True)
class SinusoidTasks:
    """The task distribution. The defaults are the paper's ranges; shapes are ``(T, K, 1)``."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self):
        check_ranges(self, ("amplitude", "phase", "x_range"))

    @staticmethod
    def function(amplitude: torch.Tensor, phase: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``A sin(x − φ)`` for tasks ``(T,)`` at points ``x`` ``(T, n, 1)`` -> ``(T, n, 1)``."""
        return amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))

    def sample(self, n_tasks: int, k_support: int, k_query: int | None = None,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> TaskBatch:
        """``n_tasks`` tasks with ``k_support`` support and ``k_query`` (default ``k_support``) query points.

        Returns a :class:`TaskBatch` whose ``info`` holds ``amplitude`` and ``phase`` ``(T,)``.
        """
        k_query = k_support if k_query is None else k_query
        check_sizes(n_tasks=n_tasks, k_support=k_support, k_query=k_query)
        amplitude = uniform((n_tasks,), self.amplitude, generator, dtype)
        phase = uniform((n_tasks,), self.phase, generator, dtype)
        x = uniform((n_tasks, k_support + k_query, 1), self.x_range, generator, dtype)
        y = self.function(amplitude, phase, x)
        return TaskBatch(x[:, :k_support], y[:, :k_support], x[:, k_support:], y[:, k_support:],
                         info={"amplitude": amplitude, "phase": phase})

    def sampler(self, k_support: int, k_query: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float32):
        """A task sampler ``sample(n_tasks) -> TaskBatch`` with its own generator seeded by ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        return lambda n_tasks: self.sample(n_tasks, k_support, k_query, generator, dtype)

    def mean_function(self, x: torch.Tensor) -> torch.Tensor:
        """The family's average task ``E[A sin(x − φ)]`` at ``x`` (any shape), in closed form.

        A and φ are independent and uniform, so the mean is ``E[A] · E[sin(x − φ)]`` with
        ``E[sin(x − φ)] = (cos(x − φ_hi) − cos(x − φ_lo)) / (φ_hi − φ_lo)``. For the paper's ranges
        (φ ~ U[0, π]) this is ``−(2/π) E[A] cos x ≈ −1.62 cos x``; for φ ~ U[π, 2π] it is ``+(2/π) E[A] cos x``.
        """
        lo, hi = self.phase
        mean_amplitude = (self.amplitude[0] + self.amplitude[1]) / 2
        return mean_amplitude * (torch.cos(x - hi) - torch.cos(x - lo)) / (hi - lo)

    def grid(self, n_points: int = 200, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``n_points`` evenly spaced inputs over ``x_range``, shape ``(n_points, 1)`` (for plots)."""
        return torch.linspace(*self.x_range, n_points, dtype=dtype).unsqueeze(-1)
