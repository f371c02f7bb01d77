"""The strategy interface, and the two simplest strategies (equal and fixed weights)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Weighting:
    """Base class of all strategies.

    Loss-based strategies (``uses_gradients = False``) implement :meth:`loss`: the scalar the trainer
    back-propagates, built from the task losses ``(T,)`` (differentiable). Gradient-based strategies
    (``uses_gradients = True``) implement :meth:`combine`: the update direction ``(P,)`` for the shared
    parameters from per-task gradients ``(T, P)``; heads still receive the gradient of Σ_i L_i.
    Strategies with learnable state (UW's log-variances) return it from :meth:`parameters`, and the
    trainer optimises it with the model. ``last_weights`` holds the task weights of the latest step
    (for plots), or None when a strategy has no such weights.
    """

    name: str = "base"
    uses_gradients: bool = False

    def __init__(self, n_tasks: int):
        if not isinstance(n_tasks, int) or n_tasks < 1:
            raise ValueError(f"a weighting strategy needs n_tasks >= 1, got {n_tasks!r}")
        self.n_tasks = n_tasks
        self.last_weights: torch.Tensor | None = None

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def _check_losses(self, losses: torch.Tensor) -> None:
        if losses.shape != (self.n_tasks,):
            raise ValueError(f"{self.name}: expected {self.n_tasks} task losses, got shape {tuple(losses.shape)}")

    def loss(self, losses: torch.Tensor, step: int = 0) -> torch.Tensor:
        raise TypeError(f"{self.name} is gradient-based: call combine(grads, losses)")

    def combine(self, grads: torch.Tensor, losses: torch.Tensor, step: int = 0) -> torch.Tensor:
        raise TypeError(f"{self.name} is loss-based: call loss(losses)")


class FixedWeights(Weighting):
    """Σ_i w_i L_i with fixed weights ``w`` (the objective of notebook 01)."""

    name = "fixed"

    def __init__(self, n_tasks: int, weights: Sequence[float] | torch.Tensor | None = None):
        super().__init__(n_tasks)
        w = torch.ones(n_tasks) if weights is None else torch.as_tensor(weights, dtype=torch.float64).flatten()
        if w.shape != (n_tasks,):
            raise ValueError(f"{self.name}: need {n_tasks} weights, got {tuple(w.shape)}")
        if not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"{self.name}: weights must be finite and non-negative, got {w.tolist()}")
        self.weights = w

    def loss(self, losses: torch.Tensor, step: int = 0) -> torch.Tensor:
        self._check_losses(losses)
        w = self.weights.to(dtype=losses.dtype, device=losses.device)
        self.last_weights = w.detach()
        return (w * losses).sum()


class EqualWeights(FixedWeights):
    """EW: Σ_i L_i, every task weight 1."""

    name = "ew"

    def __init__(self, n_tasks: int):
        super().__init__(n_tasks, None)
