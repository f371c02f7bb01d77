"""Uncertainty weighting (UW; Kendall, Gal and Cipolla, CVPR 2018).

Each task i has a learnable log-variance s_i = log σ_i², and the objective is

    regression     (Gaussian likelihood):   L_i / (2 σ_i²) + log σ_i  =  ½ e^{-s_i} L_i + ½ s_i
    classification (scaled softmax):        L_i /  σ_i²  + log σ_i  =    e^{-s_i} L_i + ½ s_i

Learning s rather than σ keeps the optimisation free of the positivity constraint and of divisions by
zero. At fixed L_i the optimum is s_i = log L_i (regression) or s_i = log 2 L_i (classification): a task
with a large loss is weighted down. The log terms can make the total negative; that is expected.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtml_lib.mtl.weighting.base import Weighting

#: task kinds (``Task.kind``) that take the classification form; the others listed take the regression form
CLASSIFICATION_KINDS = ("classification", "segmentation")
REGRESSION_KINDS = ("regression", "depth")


def uncertainty_factors(kinds: Sequence[str]) -> torch.Tensor:
    """The factor c_i in c_i e^{-s_i} L_i: ½ for regression-like kinds, 1 for classification-like ones."""
    factors = []
    for kind in kinds:
        if kind in CLASSIFICATION_KINDS:
            factors.append(1.0)
        elif kind in REGRESSION_KINDS:
            factors.append(0.5)
        else:
            raise ValueError(f"uncertainty weighting: unknown task kind {kind!r}; valid: "
                             f"{list(CLASSIFICATION_KINDS + REGRESSION_KINDS)}")
    return torch.tensor(factors)


def uncertainty_loss(losses: torch.Tensor, log_vars: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Σ_i c_i e^{-s_i} L_i + ½ s_i for losses ``(T,)``, log-variances s ``(T,)`` and factors c ``(T,)``."""
    if not (losses.shape == log_vars.shape == factors.shape):
        raise ValueError(f"shapes differ: losses {tuple(losses.shape)}, log_vars {tuple(log_vars.shape)}, "
                         f"factors {tuple(factors.shape)}")
    return (factors * torch.exp(-log_vars) * losses + 0.5 * log_vars).sum()


class UncertaintyWeighting(Weighting):
    """UW with learnable s = log σ² (initialised at ``init``). ``kinds``: one task kind per task
    (``"classification"``/``"segmentation"`` or ``"regression"``/``"depth"``); default all regression.
    ``last_weights`` holds the effective weights c_i e^{-s_i}."""

    name = "uw"

    def __init__(self, n_tasks: int, kinds: Sequence[str] | None = None, init: float = 0.0):
        super().__init__(n_tasks)
        kinds = ["regression"] * n_tasks if kinds is None else list(kinds)
        if len(kinds) != n_tasks:
            raise ValueError(f"uncertainty weighting: {n_tasks} tasks but {len(kinds)} kinds {kinds}")
        self.kinds = kinds
        self.factors = uncertainty_factors(kinds)
        self.log_vars = nn.Parameter(torch.full((n_tasks,), float(init)))

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]

    def to(self, device: torch.device | str) -> "UncertaintyWeighting":
        self.log_vars.data = self.log_vars.data.to(device)
        return self

    def loss(self, losses: torch.Tensor, step: int = 0) -> torch.Tensor:
        self._check_losses(losses)
        s = self.log_vars.to(losses.dtype)
        c = self.factors.to(dtype=losses.dtype, device=losses.device)
        self.last_weights = (c * torch.exp(-s)).detach()
        return uncertainty_loss(losses, s, c)
