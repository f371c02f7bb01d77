"""MGDA: the multiple-gradient descent algorithm as a min-norm problem (Sener and Koltun, NeurIPS 2018).

The update is the point of smallest norm in the convex hull of the task gradients,

    α* = argmin_{α ∈ Δ_T} || Σ_i α_i g_i ||²,     d = Σ_i α*_i g_i,

a common descent direction for every task (or 0 at a Pareto-stationary point). Only the Gram matrix
M = G Gᵀ ``(T, T)`` is needed. It is solved exactly with Wolfe's (1976) min-norm-point algorithm, which
keeps a set of active gradients, moves to the min-norm point of their affine hull and drops gradients
whose weight would turn negative; it ends in finitely many steps. Sener and Koltun use Frank-Wolfe, which
only approaches α* as the iterations grow.

The direction is returned as T d, so that equal α (α_i = 1/T) gives Σ_i g_i, the scale of equal
weighting; ``last_weights`` holds T α*.
"""

from __future__ import annotations

import numpy as np
import torch

from mtml_lib.mtl.weighting.base import Weighting


def min_norm_weights(gram: torch.Tensor, tol: float = 1e-10, max_iter: int = 1000) -> torch.Tensor:
    """α* ``(T,)`` on the simplex minimising αᵀ M α, for a Gram matrix ``M`` ``(T, T)`` (Wolfe's algorithm)."""
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"expected a square Gram matrix (T, T), got shape {tuple(gram.shape)}")
    m = gram.detach().double().cpu().numpy()
    n = m.shape[0]
    scale = float(np.max(np.diag(m)))
    if scale <= 0:  # every gradient is zero: any α is optimal
        return torch.full((n,), 1.0 / n, dtype=gram.dtype, device=gram.device)
    m = m / scale
    lam = np.zeros(n)
    first = int(np.argmin(np.diag(m)))
    lam[first] = 1.0
    active = [first]
    for _ in range(max_iter):
        mx = m @ lam  # p_k · x for every gradient p_k, where x = Σ λ_i p_i
        k = int(np.argmin(mx))
        if lam @ mx - mx[k] <= tol or k in active:  # no gradient points below the current point
            break
        active.append(k)
        while True:  # minor cycle: min-norm point of the affine hull of the active set
            a = len(active)
            system = np.zeros((a + 1, a + 1))
            system[:a, :a] = m[np.ix_(active, active)]
            system[:a, a] = system[a, :a] = 1.0
            rhs = np.zeros(a + 1)
            rhs[a] = 1.0
            mu = np.linalg.lstsq(system, rhs, rcond=None)[0][:a]
            current = lam[active]
            if np.all(mu > tol):
                lam[:] = 0.0
                lam[active] = mu
                break
            # walk from λ towards μ until the first weight reaches 0, then drop it
            blocked = mu <= tol
            steps = current[blocked] / np.maximum(current[blocked] - mu[blocked], 1e-300)
            theta = float(np.min(steps))
            new = current + theta * (mu - current)
            drop = int(np.flatnonzero(blocked)[np.argmin(steps)])
            new[drop] = 0.0
            lam[:] = 0.0
            lam[active] = np.clip(new, 0.0, None)
            active = [idx for idx, value in zip(active, new) if value > tol]
    lam = np.clip(lam, 0.0, None)
    return torch.as_tensor(lam / lam.sum(), dtype=gram.dtype, device=gram.device)


def mgda_direction(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, α*)``: the min-norm point d ``(P,)`` of the convex hull of the rows of ``grads`` ``(T, P)``."""
    if grads.dim() != 2:
        raise ValueError(f"mgda expects per-task gradients (T, P), got shape {tuple(grads.shape)}")
    gram = grads.double() @ grads.double().T
    alpha = min_norm_weights(gram).to(grads.dtype)
    return alpha @ grads, alpha


class MGDA(Weighting):
    """MGDA-UB style min-norm combination of the shared-parameter gradients (scaled by T, see above)."""

    name = "mgda"
    uses_gradients = True

    def combine(self, grads: torch.Tensor, losses: torch.Tensor, step: int = 0) -> torch.Tensor:
        self._check_losses(losses)
        direction, alpha = mgda_direction(grads)
        self.last_weights = self.n_tasks * alpha.detach()
        return self.n_tasks * direction
