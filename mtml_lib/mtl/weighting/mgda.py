"""MGDA: the multiple-gradient descent algorithm as a min-norm problem (Sener and Koltun, NeurIPS 2018).

The update is the point of smallest norm in the convex hull of the task gradients,

    α* = argmin_{α ∈ Δ_T} || Σ_i α_i g_i ||²,     d = Σ_i α*_i g_i,

a common descent direction for every task (or 0 at a Pareto-stationary point). Only the Gram matrix
M = G Gᵀ ``(T, T)`` is needed. It is solved exactly with Wolfe's (1976) min-norm-point algorithm, which
keeps a set of active gradients, moves to the min-norm point of their affine hull and drops gradients
whose weight would turn negative; it ends in finitely many steps. Sener and Koltun use Frank-Wolfe, which
only approaches α* as the iterations grow.

Wolfe's tolerances are absolute on M / max_i ||g_i||², so when the min-norm point is short next to the
longest gradient (||x||² near 1e-10 max_i ||g_i||² or below: norms spread over five or more orders of
magnitude, or a nearly Pareto-stationary point) the loop can stop early, or drop a small but essential
weight, and miss the min-norm point by tens of per cent (norms 1e6, 1e3 and 1, for instance). The
result is therefore checked against the optimality (KKT) conditions of the problem,

    p_k · x ≥ ||x||² for every k,   with equality where α_k > 0        (x = Σ_i α_i g_i),

measured relative to the current point: moving from x towards (or away from) g_k lowers ||x|| by
δ_k = abs(p_k · x − ||x||²) / ||g_k − x|| at first order, and x is accepted when every δ_k that the
conditions forbid is below ``KKT_TOL`` ||x|| = 1e-9 ||x|| beyond rounding. When x is so short next to
the gradients that the rounding of the float products could hide such a violation (a nearly
Pareto-stationary point), the products are recomputed exactly (rational arithmetic on the float entries
of M, scaled by a power of two). Ordinary inputs pass on the float check, and their result is the plain
algorithm's, bit for bit. A result that fails is recomputed by the same algorithm with tolerances
relative to ||x||, the products p_k · x computed exactly, and the affine subproblems written in the
gradients' directions (the correlation matrix M_ij / (||g_i|| ||g_j||), well scaled at any spread) and
refined with exact residuals; it then matches the exact min-norm point of the given M to about
1e-16 Σ_i α_i ||g_i|| (measured against rational arithmetic).

The direction is returned as T d, so that equal α (α_i = 1/T) gives Σ_i g_i, the scale of equal
weighting; ``last_weights`` holds T α*.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from mtml_lib.mtl.weighting.base import Weighting


#: accepted first-order relative improvement of ||x|| (see the module docstring)
KKT_TOL = 1e-9
_EPS = float(np.finfo(np.float64).eps)


def _walk_and_drop(lam: np.ndarray, active: list[int], current: np.ndarray, mu: np.ndarray,
                   tol: float) -> list[int]:
    """Wolfe's minor cycle step: walk ``lam`` (in place) from ``current`` towards ``mu`` until the first
    weight at or below ``tol`` in ``mu`` reaches 0, drop it; return the active set that is left."""
    blocked = mu <= tol
    steps = current[blocked] / np.maximum(current[blocked] - mu[blocked], 1e-300)
    theta = float(np.min(steps))
    new = current + theta * (mu - current)
    drop = int(np.flatnonzero(blocked)[np.argmin(steps)])
    new[drop] = 0.0
    lam[:] = 0.0
    lam[active] = np.clip(new, 0.0, None)
    return [idx for idx, value in zip(active, new) if value > tol]


def min_norm_weights(gram: torch.Tensor, tol: float = 1e-10, max_iter: int = 1000) -> torch.Tensor:
    """α* ``(T,)`` on the simplex minimising αᵀ M α, for a Gram matrix ``M`` ``(T, T)`` (Wolfe's algorithm).

    ``tol`` is Wolfe's tolerance relative to max_i M_ii; a result that fails the KKT check (module
    docstring) is recomputed with tolerances relative to the min-norm point itself."""
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"expected a square Gram matrix (T, T), got shape {tuple(gram.shape)}")
    m = gram.detach().double().cpu().numpy()
    n = m.shape[0]
    scale = float(np.max(np.diag(m)))
    if scale <= 0:  # every gradient is zero: any α is optimal
        return torch.full((n,), 1.0 / n, dtype=gram.dtype, device=gram.device)
    exact = np.ldexp(m, -int(np.frexp(scale)[1]))  # M scaled by a power of two: no rounding
    m = m / scale
    lam = _wolfe(m, tol, max_iter)
    if kkt_violation(exact, lam) > KKT_TOL:  # a corner case (see the module docstring): solve it again
        lam = _wolfe_relative(exact, max_iter)
    lam = np.clip(lam, 0.0, None)
    return torch.as_tensor(lam / lam.sum(), dtype=gram.dtype, device=gram.device)


def _wolfe(m: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """λ ``(T,)`` by Wolfe's min-norm-point algorithm on ``m`` (max diagonal 1), absolute tolerance ``tol``."""
    n = m.shape[0]
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
            active = _walk_and_drop(lam, active, current, mu, tol)
    return lam


def kkt_violation(m: np.ndarray, lam: np.ndarray) -> float:
    """How far λ ``(T,)`` (λ ≥ 0) is from the min-norm point of the hull, relative to it (0: optimal).

    With x = Σ λ_i p_i, the largest first-order relative decrease of ||x|| along a segment towards a
    gradient p_k (any k) or away from it (k with λ_k > 0),  abs(p_k · x − ||x||²) / (||p_k − x|| ||x||), over
    the k where it is allowed, counting only what exceeds rounding. The products are first taken in
    floating point; when their rounding error could hide a violation above ``KKT_TOL`` (x much shorter
    than the gradients), they are recomputed exactly from ``m``, which should then be the Gram matrix
    scaled by a power of two, and only the rounding of λ itself is discounted."""
    lam = np.clip(lam, 0.0, None)
    lam = lam / lam.sum()
    mx = m @ lam
    v = float(lam @ mx)  # ||x||²
    dist = np.sqrt(np.maximum(np.diag(m) - 2 * mx + v, 0.0))  # ||p_k − x||
    scale = dist * np.sqrt(max(v, 0.0))
    rounding = 8 * m.shape[0] * _EPS * (np.abs(m) @ lam + float(lam @ np.abs(m) @ lam))
    ratio = _excess_ratio(v - mx, rounding, lam, scale)
    if ratio > KKT_TOL or not np.any(rounding > KKT_TOL * scale):
        return ratio
    gap, v = _exact_gaps([[Fraction(float(value)) for value in row] for row in m], lam)
    scale = dist * np.sqrt(max(v, 0.0))
    return _excess_ratio(gap, 4 * _EPS * dist * float(np.sqrt(np.diag(m)) @ lam), lam, scale)


def _excess_ratio(gap: np.ndarray, rounding: np.ndarray, lam: np.ndarray, scale: np.ndarray) -> float:
    """max_k of the part of |gap_k| (gap_k = ||x||² − p_k · x; only gap_k > 0 where λ_k = 0) above
    ``rounding``, divided by ``scale`` = ||p_k − x|| ||x||."""
    excess = np.where(lam > 0, np.abs(gap), gap) - rounding  # gap > 0: towards p_k shortens x; < 0: away
    if not np.any(excess > 0):
        return 0.0
    if not np.any(scale[excess > 0] > 0):  # x = 0 (nothing is shorter) or p_k = x: only rounding is left
        return 0.0
    return float(np.max(np.where(excess > 0, excess / np.maximum(scale, 1e-300), 0.0)))


def _wolfe_relative(m: np.ndarray, max_iter: int, tol: float = 1e-12) -> np.ndarray:
    """Wolfe's algorithm with scale-free tolerances: λ ``(T,)`` minimising λᵀ m λ on the simplex.

    ``m`` should be the Gram matrix scaled by a power of two (exactly). A major cycle stops when no
    gradient shortens x by more than ``tol`` ||x|| at first order (see :func:`kkt_violation`), the
    products p_k · x − ||x||² being computed exactly (rational arithmetic) from the float λ. The affine
    subproblems are solved by :func:`_affine_min_norm`."""
    n = m.shape[0]
    diag = np.diag(m)
    first = int(np.argmin(diag))
    lam = np.zeros(n)
    lam[first] = 1.0
    if diag[first] <= 0:  # a zero gradient: x = 0 is the min-norm point
        return lam
    norms = np.sqrt(diag)
    corr = m / np.outer(norms, norms)
    exact = [[Fraction(float(value)) for value in row] for row in m]
    active = [first]
    for _ in range(max_iter):
        gap, v = _exact_gaps(exact, lam)
        dist = np.sqrt(np.maximum(diag + gap - v, 0.0))  # ||p_k − x||² = ||p_k||² − 2 p_k · x + ||x||²
        rounding = 4 * _EPS * dist * float(norms @ lam)  # what rounding λ to floats can move p_k · x by
        score = (gap - rounding) / np.maximum(dist, 1e-300)  # first-order decrease of ||x|| towards p_k
        k = int(np.argmax(score))
        if score[k] <= tol * np.sqrt(max(v, 0.0)) or k in active:
            break
        previous = lam.copy()
        active.append(k)
        while True:  # minor cycle, as in _wolfe
            mu = _affine_min_norm(exact, corr, norms, active)
            current = lam[active]
            if np.all(mu > 0):
                lam[:] = 0.0
                lam[active] = mu
                break
            active = _walk_and_drop(lam, active, current, mu, 0.0)
        if _exact_gaps(exact, lam)[1] >= v:  # no progress (rounding): keep the previous point
            return previous
    return lam


def _exact_gaps(exact: list[list[Fraction]], lam: np.ndarray) -> tuple[np.ndarray, float]:
    """(||x||² − p_k · x for every k, ||x||²) for x = Σ λ_i p_i, computed exactly and then rounded."""
    weights = [Fraction(float(value)) for value in lam]
    mx = [sum(row[j] * weights[j] for j in range(len(weights)) if weights[j]) for row in exact]
    v = sum(w * value for w, value in zip(weights, mx))
    return np.array([float(v - value) for value in mx]), float(v)


def _affine_min_norm(exact: list[list[Fraction]], corr: np.ndarray, norms: np.ndarray, active: list[int],
                     rounds: int = 3) -> np.ndarray:
    """μ ``(A,)``: the min-norm point Σ_A μ_i p_i of the affine hull of the active gradients (Σ_A μ_i = 1).

    The KKT system [[M_A, 1], [1ᵀ, 0]] [μ; ω] = [0; 1] is badly scaled when the norms are spread, so
    it is solved for β_i = μ_i ||p_i|| / s (s = min_A ||p_j||), where it reads [[C_A, r], [rᵀ, 0]] with
    the correlation matrix C_A and r_i = s / ||p_i|| ∈ (0, 1], by least squares (duplicated gradients
    make it singular). The solution is then refined (a few rounds) with the residuals of the unscaled
    system computed exactly, so that μ is accurate to rounding even when M_A is nearly singular."""
    a = len(active)
    s = float(norms[active].min())
    inv = s / norms[active]  # r; also μ = r ∘ β
    system = np.zeros((a + 1, a + 1))
    system[:a, :a] = corr[np.ix_(active, active)]
    system[:a, a] = system[a, :a] = inv
    mu, omega = np.zeros(a), 0.0
    for _ in range(rounds):
        weights = [Fraction(float(value)) for value in mu]
        w = Fraction(float(omega))
        top = [-(sum(exact[i][j] * weights[col] for col, j in enumerate(active)) + w) for i in active]
        bottom = 1 - sum(weights)
        residual = np.array([float(value) for value in top] + [float(bottom)])
        if not np.any(residual):
            break
        rhs = np.concatenate([residual[:a] / (norms[active] * s), residual[a:]])
        step = np.linalg.lstsq(system, rhs, rcond=None)[0]
        mu = mu + inv * step[:a]  # δμ_i = s δβ_i / ||p_i|| = r_i δβ_i
        omega = omega + s * s * step[a]
    return mu


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
