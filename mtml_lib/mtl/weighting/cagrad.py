"""CAGrad: conflict-averse gradient descent (Liu, Liu, Jin, Stone and Liu, NeurIPS 2021).

Look for the direction d within a ball around the average gradient g₀ = (1/T) Σ_i g_i that maximises
the worst task's improvement:  max_d min_i g_i · d  subject to  ||d − g₀|| ≤ c ||g₀||. Its dual is a
problem over the simplex,

    w* = argmin_{w ∈ Δ_T}  g_w · g₀ + c ||g₀|| ||g_w||,     g_w = Σ_i w_i g_i,

and then d = g₀ + (c ||g₀|| / ||g_w*||) g_w*. As in the authors' code the result is divided by 1 + c²,
and here multiplied by T so that c = 0 gives Σ_i g_i, the update of equal weighting. c = 0.4 to 0.5 is
the range the paper recommends. Only the Gram matrix M = G Gᵀ enters the dual; it is solved by projected
gradient descent with backtracking (the authors call SciPy's SLSQP).

The closed form for d is 0/0 when zero lies in the convex hull of the gradients in such a way that
the dual optimum has g_w* = 0 (for instance g₂ = −g₁ ⊥ g₀ and every other g_k · g₀ ≥ 0): then the optimal
value is 0 (w*·b = g_w*·g₀ = 0), every d in the ball with all g_i · d ≥ 0 is optimal, and the solver's
noise in g_w would become a full step c ||g₀|| in an arbitrary direction, hurting some task and, once
||g_w||² is at the rounding level of M, leaving the ball. When the dual solution has ||g_w|| below
``DEGENERATE_TOL`` Σ_i w_i ||g_i|| (g_w is what is left of a near-total cancellation; on ordinary
inputs this ratio is of order 0.1 to 1), :func:`cagrad_direction` therefore solves the primal directly
(:func:`cagrad_primal`): the optimal value t* is the largest t for which the polyhedron
P_t = {d : g_i · d ≥ t for all i} comes within c ||g₀|| of g₀, found by bisection, and d is the
projection of g₀ onto P_t there (of the optimal directions, the one closest to g₀; at g_w* = 0 it keeps
every g_i · d ≥ 0). Otherwise the closed form is used unchanged, bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from mtml_lib.mtl.weighting.base import Weighting

_EPS = float(np.finfo(np.float64).eps)


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


#: ||g_w|| / Σ_i w_i ||g_i|| (how much of g_w cancels) below which the closed form gives way to the primal
DEGENERATE_TOL = 1e-3
#: largest Σ_i ν_i accepted from the primal solver (d = g₀ + Σ_i ν_i g_i is then exact to ~1e-9 max ||g_i||)
MAX_MULTIPLIER = 1e7


def cagrad_direction(grads: torch.Tensor, c: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, β)``: d = (g₀ + c ||g₀|| / ||g_w|| g_w) / (1 + c²) ``(P,)`` (before the factor T), written as
    d = Σ_i β_i g_i with β_i = (1/T + λ w_i) / (1 + c²) ``(T,)``. When ||g_w|| is below ``DEGENERATE_TOL``
    Σ_i w_i ||g_i|| (the weighted gradients all but cancel: zero is nearly in the hull, see above),
    d = (g₀ + Σ_i ν_i g_i) / (1 + c²) with ν from :func:`cagrad_primal`, i.e. β_i = (1/T + ν_i) / (1 + c²)."""
    if grads.dim() != 2:
        raise ValueError(f"cagrad expects per-task gradients (T, P), got shape {tuple(grads.shape)}")
    g = grads.double()
    gram = g @ g.T
    w = cagrad_weights(gram, c)
    n = g.shape[0]
    g0_norm = torch.sqrt(gram.mean().clamp_min(0))
    gw_norm = torch.sqrt((w @ gram @ w).clamp_min(0))
    if c > 0 and g0_norm > 0 and gw_norm <= DEGENERATE_TOL * (w @ gram.diagonal().clamp_min(0).sqrt()):
        nu, _ = cagrad_primal(g, c)
        beta = (1.0 / n + nu) / (1 + c**2)
        return (beta @ g).to(grads.dtype), beta.to(grads.dtype)
    lam = c * g0_norm / gw_norm if gw_norm > 0 else torch.zeros((), dtype=g.dtype)
    beta = (1.0 / n + lam * w) / (1 + c**2)
    return (beta @ g).to(grads.dtype), beta.to(grads.dtype)


def cagrad_primal(grads: torch.Tensor, c: float = 0.5, tol: float = 1e-14) -> tuple[torch.Tensor, float]:
    """``(ν, t)``: a direction d = g₀ + Σ_i ν_i g_i (ν ≥ 0, ``(T,)``) solving the primal
    max_d min_i g_i · d subject to ||d − g₀|| ≤ c ||g₀||, for the rows of ``grads`` ``(T, P)``, and its
    value t = min_i g_i · d (works for any input; :func:`cagrad_direction` calls it in the corner case).

    For a level t, the point of P_t = {d : g_i · d ≥ t} closest to g₀ is d = g₀ + Σ_i ν_i g_i with ν the
    solution of  min_{ν ≥ 0} ½ νᵀ M ν + νᵀ (b − t 1)  (b_i = g_i · g₀; the dual of the projection, whose
    gradient M ν + b − t 1 is the vector of slacks g_i · d − t), and its distance is ||Σ_i ν_i g_i||. That
    distance grows with t, and the optimal value t* is the largest t where it is at most c ||g₀||: t* is
    bracketed by min_i b_i (d = g₀) and the dual value F(w) of any w, and found by bisection to ``tol``
    max_i ||g_i||². When P_t is empty (t > 0 while zero is in the hull of the gradients) the problem
    above is unbounded and t is too high.

    Near such inputs the gradients are nearly dependent and ν is large, so M is used through a QR factor
    R of the gradients (M = Rᵀ R; its singular values are those of the gradients, not their squares),
    and each candidate d is checked on the gradients themselves (ball, and slacks up to rounding) before
    t counts as reached; the bisection keeps the last point that passed. A candidate with Σ_i ν_i above
    ``MAX_MULTIPLIER`` is refused as well, since Σ_i ν_i g_i could not be formed in float64 to better than
    ~1e-9 max_i ||g_i||. Measured against a 50-digit reference, t is within 1e-13 max_i ||g_i||² of t*
    on degenerate and on ordinary inputs, and within ~3e-9 max_i ||g_i||² on inputs 1e-10 to 1e-6
    (relative) away from a degenerate one, where the optimum needs ν of order 1 / that distance."""
    if grads.dim() != 2:
        raise ValueError(f"cagrad expects per-task gradients (T, P), got shape {tuple(grads.shape)}")
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c!r}")
    g = grads.detach().double().cpu().numpy()
    n = g.shape[0]
    g0 = g.mean(axis=0)
    b = g @ g0  # g_i · g₀
    scale = float(np.max(np.sum(g * g, axis=1)))  # max_i ||g_i||²
    if scale <= 0 or c == 0 or not np.any(g0):  # the ball is the point g₀ (or every gradient is 0)
        return torch.zeros(n, dtype=grads.dtype, device=grads.device), float(np.min(b))
    factor = np.linalg.qr(g.T / np.sqrt(scale), mode="r")  # (min(P, T), T), Rᵀ R = M / scale
    radius = c * float(np.linalg.norm(g0))

    def reached(t: float) -> np.ndarray | None:  # ν of a d with min_i g_i · d ≥ t in the ball, or None
        nu = _nonnegative_qp(factor, (b - t) / scale)
        if nu is None:
            return None
        total = 1.0 + float(nu.sum())
        if total > MAX_MULTIPLIER:  # Σ ν_i g_i would lose more than ~1e-9 max ||g_i|| to cancellation
            return None
        step = nu @ g  # d − g₀
        rounding = 1e-13 * scale * total  # of the products g_i · d, and the QP's own tolerance
        if np.linalg.norm(step) > radius or np.min(g @ (g0 + step)) < t - rounding:
            return None
        return nu

    w = cagrad_weights(torch.as_tensor(g @ g.T), c).numpy()
    lo, hi = float(np.min(b)), float(w @ b + radius * np.linalg.norm(w @ g))
    best = np.zeros(n)
    if (nu := reached(hi)) is not None:
        lo, best = hi, nu
    while hi - lo > tol * scale:
        mid = 0.5 * (lo + hi)
        if (nu := reached(mid)) is None:
            hi = mid
        else:
            lo, best = mid, nu
    return torch.as_tensor(best, dtype=grads.dtype, device=grads.device), float(np.min(g @ (g0 + best @ g)))


def _nonnegative_qp(r: np.ndarray, q: np.ndarray, max_iter: int = 200) -> np.ndarray | None:
    """ν ≥ 0 ``(T,)`` minimising ½ ||r ν||² + qᵀ ν (``r`` ``(K, T)``, a factor of the Gram matrix scaled
    to max diagonal 1), or None when it is unbounded below.

    An active-set method (Lawson and Hanson's NNLS, written for this quadratic): a set F of free
    variables, the minimiser of the quadratic over ν_F (others 0) from the SVD of r_F, a step back to
    ν ≥ 0 when that minimiser has an entry ≤ 0, and the most negative slack (rᵀ r ν + q)_i added while
    one is below −1e-13. When r_F is singular (to rounding) and q_F has a component along its null space,
    the quadratic decreases without bound along that null direction v: if v ≥ 0 the problem is
    unbounded, otherwise ν moves along v until an entry reaches 0. If rounding stalls the method (the
    entry just freed is dropped again at once) it returns the current ν, which the caller checks."""
    n = q.size
    tol = 1e-13 * max(1.0, float(np.max(np.abs(q))))
    nu = np.zeros(n)
    free = np.zeros(n, dtype=bool)
    for _ in range(max_iter):
        slack = r.T @ (r @ nu) + q
        candidates = np.flatnonzero(~free & (slack < -tol))
        if candidates.size == 0:
            return nu
        added = int(candidates[np.argmin(slack[candidates])])
        free[added] = True
        while free.any():
            idx = np.flatnonzero(free)
            _, sing, vt = np.linalg.svd(r[:, idx])
            rank = int(np.sum(sing > n * _EPS * max(float(sing[0]) if sing.size else 0.0, 1e-300)))
            null = vt[rank:]  # rows: a basis of the null space of r_F
            q_null = null.T @ (null @ q[idx])
            current = nu[idx]
            if np.linalg.norm(q_null) > tol:  # linear decrease along v = −q_null within the face
                v = -q_null
                if np.all(v >= -1e-12 * np.max(np.abs(v))):
                    return None
                blocked = v < 0
                steps = current[blocked] / -v[blocked]
            else:  # the minimiser on the face: r_Fᵀ r_F ν_F = −q_F
                target = -(vt[:rank].T @ ((vt[:rank] @ q[idx]) / sing[:rank] ** 2))
                if np.all(target > 0):
                    nu[:] = 0.0
                    nu[idx] = target
                    break
                v = target - current
                blocked = target <= 0
                steps = current[blocked] / np.maximum(current[blocked] - target[blocked], 1e-300)
            theta = float(np.min(steps))
            drop = int(idx[np.flatnonzero(blocked)[np.argmin(steps)]])
            if theta <= 0 and drop == added:
                return nu
            nu[idx] = np.maximum(current + theta * v, 0.0)
            nu[drop] = 0.0
            free &= nu > 0
    return nu


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
