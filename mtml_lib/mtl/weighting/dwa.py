"""Dynamic weight average (DWA; Liu, Johns and Davison, CVPR 2019).

With r_i(t-1) = L_i(t-1) / L_i(t-2), the ratio of task i's mean loss over the last two epochs,

    w_i(t) = T exp(r_i(t-1) / τ) / Σ_j exp(r_j(t-1) / τ),

so the weights sum to T and a task whose loss falls slowly gets more weight. τ (``temperature``, 2 in
the paper) softens the weights. In the first two epochs (no ratio yet) every weight is 1.
"""

from __future__ import annotations

import torch

from mtml_lib.mtl.weighting.base import Weighting


def dwa_weights(previous: torch.Tensor, before_previous: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """DWA weights ``(T,)`` from the mean task losses of epochs t-1 and t-2 (each ``(T,)``)."""
    if previous.shape != before_previous.shape or previous.dim() != 1:
        raise ValueError(f"need two loss vectors (T,), got {tuple(previous.shape)} and {tuple(before_previous.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    ratio = previous / before_previous
    return previous.numel() * torch.softmax(ratio / temperature, dim=0)


class DynamicWeightAverage(Weighting):
    """DWA. The trainer passes the global step; with ``steps_per_epoch`` (batches in an epoch) the
    strategy averages the losses of each epoch itself. ``steps_per_epoch=1`` is the per-step variant."""

    name = "dwa"

    def __init__(self, n_tasks: int, temperature: float = 2.0, steps_per_epoch: int = 1):
        super().__init__(n_tasks)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
        self.temperature = temperature
        self.steps_per_epoch = steps_per_epoch
        self.epoch_means: list[torch.Tensor] = []  # mean loss vector of every finished epoch
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._epoch = 0

    def weights(self) -> torch.Tensor:
        if len(self.epoch_means) < 2:
            return torch.ones(self.n_tasks, dtype=torch.float64)
        return dwa_weights(self.epoch_means[-1], self.epoch_means[-2], self.temperature)

    def loss(self, losses: torch.Tensor, step: int = 0) -> torch.Tensor:
        self._check_losses(losses)
        epoch = step // self.steps_per_epoch
        if epoch != self._epoch and self._count > 0:
            self.epoch_means.append(self._sum / self._count)
            self._sum, self._count = None, 0
        self._epoch = epoch
        w = self.weights().to(dtype=losses.dtype, device=losses.device)
        detached = losses.detach().double().cpu()
        self._sum = detached if self._sum is None else self._sum + detached
        self._count += 1
        self.last_weights = w
        return (w * losses).sum()
