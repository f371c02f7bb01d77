"""CAGrad: conflict-averse gradient descent (Liu, Liu, Jin, Stone and Liu, NeurIPS 2021).

Look for the direction d within a ball around the average gradient g₀ = (1/T) Σ_i g_i that maximises
the worst task's improvement:  max_d min_i g_i · d  subject to  ||d − g₀|| ≤ c ||g₀||. Its dual is a
problem over the simplex,

    w* = argmin_{w ∈ Δ_T}  g_w · g₀ + c ||g₀|| ||g_w||,     g_w = Σ_i w_i g_i,

and then d = g₀ + (c ||g₀|| / ||g_w*||) g_w*. As in the authors' code the result is divided by 1 + c²,
and here multiplied by T so that c = 0 gives Σ_i g_i, the update of equal weighting. c = 0.4 to 0.5 is
the range the paper recommends. Only the Gram matrix M = G Gᵀ enters the dual; it is solved by projected
gradient descent with backtracking (the authors call SciPy's SLSQP).
"""

from __future__ import annotations

import numpy as np
import torch

from mtml_lib.mtl.weighting.base import Weighting


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``v`` ``(T,)`` onto the probability simplex (Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    rho = np.flatnonzero(u - css / np.arange(1, v.size + 1) > 0)[-1]
    return np.maximum(v - css[rho] / (rho + 1), 0.0)


def cagrad_weights(gram: torch.Tensor, c: float = 0.5, max_iter: int = 500, tol: float = 1e-12) -> torch.Tensor:
    """w* ``(T,)`` minimising wᵀ M 1/T + c ||g₀|| sqrt(wᵀ M w) over the simplex, for a Gram matrix M."""
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"expected a square Gram matrix (T, T), got shape {tuple(gram.shape)}")
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c!r}")
    m = gram.detach().double().cpu().numpy()
    n = m.shape[0]
    scale = float(np.max(np.diag(m)))
    if scale <= 0:
        return torch.full((n,), 1.0 / n, dtype=gram.dtype, device=gram.device)
    m = m / scale
    b = m.mean(axis=1)  # g_i · g₀
    kappa = c * np.sqrt(max(float(m.mean()), 0.0))  # c ||g₀||

    def objective(w: np.ndarray) -> float:
        return float(w @ b + kappa * np.sqrt(max(float(w @ m @ w), 0.0)))

    def gradient(w: np.ndarray) -> np.ndarray:
        return b + kappa * (m @ w) / np.sqrt(max(float(w @ m @ w), 1e-20))

    w = np.full(n, 1.0 / n)
    f, step = objective(w), 1.0
    for _ in range(max_iter):
        g = gradient(w)
        while True:  # backtracking: accept when the quadratic upper model holds
            candidate = project_simplex(w - step * g)
            diff = candidate - w
            f_new = objective(candidate)
            if f_new <= f + g @ diff + (diff @ diff) / (2 * step) or step < 1e-12:
                break
            step *= 0.5
        w, f = candidate, f_new
        if diff @ diff <= tol:
            break
        step *= 2.0
    return torch.as_tensor(w, dtype=gram.dtype, device=gram.device)


def cagrad_direction(grads: torch.Tensor, c: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, β)``: d = (g₀ + c ||g₀|| / ||g_w|| g_w) / (1 + c²) ``(P,)`` (before the factor T), written as
    d = Σ_i β_i g_i with β_i = (1/T + λ w_i) / (1 + c²) ``(T,)``."""
    if grads.dim() != 2:
        raise ValueError(f"cagrad expects per-task gradients (T, P), got shape {tuple(grads.shape)}")
    g = grads.double()
    gram = g @ g.T
    w = cagrad_weights(gram, c)
    n = g.shape[0]
    g0_norm = torch.sqrt(gram.mean().clamp_min(0))
    gw_norm = torch.sqrt((w @ gram @ w).clamp_min(0))
    lam = c * g0_norm / gw_norm if gw_norm > 0 else torch.zeros((), dtype=g.dtype)
    beta = (1.0 / n + lam * w) / (1 + c**2)
    return (beta @ g).to(grads.dtype), beta.to(grads.dtype)


class CAGrad(Weighting):
    """CAGrad with conflict-aversion radius ``c``; returns T d (see above), ``last_weights`` = T β."""

    name = "cagrad"
    uses_gradients = True

    def __init__(self, n_tasks: int, c: float = 0.4):
        super().__init__(n_tasks)
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c!r}")
        self.c = c

    def combine(self, grads: torch.Tensor, losses: torch.Tensor, step: int = 0) -> torch.Tensor:
        self._check_losses(losses)
        direction, beta = cagrad_direction(grads, self.c)
        self.last_weights = self.n_tasks * beta.detach()
        return self.n_tasks * direction
