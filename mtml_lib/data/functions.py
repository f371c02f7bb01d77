"""Families of 1-D regression tasks for transfer experiments, all sampled as :class:`TaskBatch`.

The sinusoid family of Finn et al. (2017) (:class:`~mtml_lib.data.sinusoid.SinusoidTasks`) is where
models are trained; the transfer notebook then tests them on new tasks from the same family and from
families that differ from it in a controlled way (:data:`TEST_FAMILIES`): larger amplitudes, phases
never seen, and straight lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mtml_lib.data.sinusoid import SinusoidTasks, check_ranges, check_sizes, uniform
from mtml_lib.meta.tasks import TaskBatch


@dataclass(frozen=True)
class LineTasks:
    """``y = a x + b`` with slope ``a ~ U[slope]`` and intercept ``b ~ U[intercept]``, inputs ``x ~ U[x_range]``."""

    slope: tuple[float, float] = (-1.0, 1.0)
    intercept: tuple[float, float] = (-3.0, 3.0)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self):
        check_ranges(self, ("slope", "intercept", "x_range"))

    def sample(self, n_tasks: int, k_support: int, k_query: int | None = None,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> TaskBatch:
        """``n_tasks`` lines with ``k_support`` support and ``k_query`` (default ``k_support``) query points."""
        k_query = k_support if k_query is None else k_query
        check_sizes(n_tasks=n_tasks, k_support=k_support, k_query=k_query)
        slope = uniform((n_tasks,), self.slope, generator, dtype)
        intercept = uniform((n_tasks,), self.intercept, generator, dtype)
        x = uniform((n_tasks, k_support + k_query, 1), self.x_range, generator, dtype)
        y = slope.view(-1, 1, 1) * x + intercept.view(-1, 1, 1)
        return TaskBatch(x[:, :k_support], y[:, :k_support], x[:, k_support:], y[:, k_support:],
                         info={"slope": slope, "intercept": intercept})


#: test families of the transfer notebook: name -> (description, task distribution)
TEST_FAMILIES: dict[str, tuple[str, SinusoidTasks | LineTasks]] = {
    "sinusoid": ("same family: A ~ U[0.1, 5], φ ~ U[0, π]", SinusoidTasks()),
    "large_amplitude": ("larger amplitudes: A ~ U[5, 10]", SinusoidTasks(amplitude=(5.0, 10.0))),
    "unseen_phase": ("unseen phases: φ ~ U[π, 2π]", SinusoidTasks(phase=(math.pi, 2 * math.pi))),
    "line": ("another family: y = a x + b, a ~ U[-1, 1], b ~ U[-3, 3]", LineTasks()),
}


def task_family(name: str) -> SinusoidTasks | LineTasks:
    """The task distribution called ``name`` in :data:`TEST_FAMILIES`."""
    if name not in TEST_FAMILIES:
        raise ValueError(f"unknown task family {name!r}; valid families: {', '.join(TEST_FAMILIES)}")
    return TEST_FAMILIES[name][1]
