"""PCGrad: projecting conflicting gradients (Yu et al., NeurIPS 2020).

For each task i, in turn for every other task j (in random order): if g_i^PC · g_j < 0 (the gradients
conflict), remove from g_i^PC its component along g_j,

    g_i^PC  <-  g_i^PC − (g_i^PC · g_j / ||g_j||²) g_j,

always projecting against the *original* g_j. The update is Σ_i g_i^PC. Gradients that do not conflict
are left unchanged, so with no conflict PCGrad equals equal weighting.
"""

from __future__ import annotations

import torch

from mtml_lib.mtl.weighting.base import Weighting


def pcgrad(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The PCGrad direction ``(P,)`` from per-task gradients ``(T, P)``. Without ``generator`` the
    other tasks are visited in index order (deterministic, for tests); with it, in a random order."""
    if grads.dim() != 2:
        raise ValueError(f"pcgrad expects per-task gradients (T, P), got shape {tuple(grads.shape)}")
    n_tasks = grads.shape[0]
    sq_norms = (grads * grads).sum(dim=1)
    projected = grads.clone()
    for i in range(n_tasks):
        order = torch.randperm(n_tasks, generator=generator).tolist() if generator is not None else range(n_tasks)
        for j in order:
            if j == i or sq_norms[j] == 0:
                continue
            dot = projected[i] @ grads[j]
            if dot < 0:
                projected[i] = projected[i] - (dot / sq_norms[j]) * grads[j]
    return projected.sum(dim=0)


class PCGrad(Weighting):
    """PCGrad with its own random stream (``seed``) for the projection order."""

    name = "pcgrad"
    uses_gradients = True

    def __init__(self, n_tasks: int, seed: int = 0):
        super().__init__(n_tasks)
        self.generator = torch.Generator().manual_seed(int(seed))

    def combine(self, grads: torch.Tensor, losses: torch.Tensor, step: int = 0) -> torch.Tensor:
        self._check_losses(losses)
        return pcgrad(grads, self.generator)
