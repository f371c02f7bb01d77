"""A family of linear regression tasks whose true weights share a low-dimensional structure.

Task i has inputs x ~ N(0, I_d) and targets y = w_iᵀ x + ε, ε ~ N(0, σ²). The true weights are

    w_i = √(1 − s) · w̄  +  √s · ( √(1 − ρ) · B ξ_i  +  √ρ · u_i ),
    ξ_i ~ N(0, I_k / k),   u_i ~ N(0, I_d / d),   w̄ = B c,   ‖c‖ = 1,

with B ∈ R^{d×k} an orthonormal basis (k ≪ d) fixed for the family. Two knobs:

- ``spread`` s: how much tasks differ from their common mean w̄ (s = 0: all tasks equal, the pooled
  model is right; s = 1: no common mean);
- ``off_subspace`` ρ: how much of the task-specific part leaves the shared subspace span(B) (ρ = 0: every
  w_i lies in span(B), the structured family; ρ = 1: the deviations are isotropic in R^d, the tasks share
  nothing but the mean).

Every w_i has E‖w_i‖² = 1, so the excess risk ‖ŵ − w‖² of an estimate (:meth:`LinearTaskSet.excess_risk`)
is relative to the signal: predicting 0 scores about 1, and 1/σ² is the signal-to-noise ratio.
Everything is drawn from ``torch.Generator`` streams seeded by the arguments: same seed, same tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _positive_int(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def _fraction(value: float, what: str) -> float:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LinearTaskSet:
    """T regression tasks drawn from a :class:`LinearTaskFamily`, each with the same number of examples.

    ``X``: inputs ``(T, n, d)``; ``y``: targets ``(T, n)``; ``weights``: true w_i ``(T, d)``;
    ``names``: task names, in order.
    """

    names: tuple[str, ...]
    X: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor
    noise: float

    @property
    def n_tasks(self) -> int:
        return self.X.shape[0]

    @property
    def n_samples(self) -> int:
        return self.X.shape[1]

    @property
    def dim(self) -> int:
        return self.X.shape[2]

    def batch(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The per-task batch ``{name: (X_i (n, d), Y_i (n, 1))}`` that the trainer takes."""
        return {name: (self.X[i], self.y[i].unsqueeze(-1)) for i, name in enumerate(self.names)}

    def excess_risk(self, estimate: torch.Tensor) -> torch.Tensor:
        """Per task ``(T,)``: E[(ŵ_iᵀx − y)²] − σ² = ‖ŵ_i − w_i‖² for x ~ N(0, I), exactly.

        ``estimate``: ``(T, d)`` (one row per task) or ``(d,)`` (one weight for all tasks, the pooled model).
        """
        estimate = torch.as_tensor(estimate, dtype=self.weights.dtype)
        if estimate.shape == (self.dim,):
            estimate = estimate.expand(self.n_tasks, -1)
        if estimate.shape != self.weights.shape:
            raise ValueError(
                f"estimate has shape {tuple(estimate.shape)}; expected {tuple(self.weights.shape)} (per task) or ({self.dim},)"
            )
        return ((estimate - self.weights) ** 2).sum(-1)

    def subset(self, n: int) -> "LinearTaskSet":
        """The same tasks with only their first ``n`` examples (nested sample sizes share data)."""
        _positive_int(n, "n")
        if n > self.n_samples:
            raise ValueError(f"subset: asked for {n} examples per task, the set has {self.n_samples}")
        return LinearTaskSet(self.names, self.X[:, :n], self.y[:, :n], self.weights, self.noise)


class LinearTaskFamily:
    """The distribution over tasks described in the module docstring (``dim`` d, ``rank`` k, σ, s, ρ).

    ``basis`` B ``(d, k)`` and ``mean`` w̄ ``(d,)`` are drawn once from ``seed``; :meth:`sample` draws tasks.
    """

    def __init__(
        self,
        dim: int,
        rank: int,
        noise: float = 0.1,
        spread: float = 1.0,
        off_subspace: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ):
        self.dim = _positive_int(dim, "dim")
        self.rank = _positive_int(rank, "rank")
        if rank > dim:
            raise ValueError(f"rank must be <= dim, got rank={rank} > dim={dim}")
        if not (isinstance(noise, (int, float)) and noise >= 0 and math.isfinite(noise)):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        self.noise = float(noise)
        self.spread = _fraction(spread, "spread")
        self.off_subspace = _fraction(off_subspace, "off_subspace")
        self.seed = int(seed)
        self.dtype = dtype
        g = torch.Generator().manual_seed(self.seed)
        q, _ = torch.linalg.qr(torch.randn(dim, rank, generator=g, dtype=dtype))
        self.basis = q
        c = torch.randn(rank, generator=g, dtype=dtype)
        self.mean = q @ (c / c.norm())

    def covariance(self) -> torch.Tensor:
        """Covariance of w_i around its mean √(1−s) w̄: s [(1−ρ) B Bᵀ / k + ρ I / d], shape ``(d, d)``."""
        s, rho = self.spread, self.off_subspace
        eye = torch.eye(self.dim, dtype=self.dtype)
        return s * ((1 - rho) * self.basis @ self.basis.T / self.rank + rho * eye / self.dim)

    def sample_weights(self, n_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """True weights ``(T, d)`` of ``n_tasks`` new tasks."""
        _positive_int(n_tasks, "n_tasks")
        s, rho = self.spread, self.off_subspace
        xi = torch.randn(n_tasks, self.rank, generator=generator, dtype=self.dtype) / math.sqrt(self.rank)
        u = torch.randn(n_tasks, self.dim, generator=generator, dtype=self.dtype) / math.sqrt(self.dim)
        deviation = math.sqrt(1 - rho) * xi @ self.basis.T + math.sqrt(rho) * u
        return math.sqrt(1 - s) * self.mean + math.sqrt(s) * deviation

    def sample(self, n_tasks: int, n_samples: int, seed: int = 0, prefix: str = "task") -> LinearTaskSet:
        """Draw ``n_tasks`` tasks with ``n_samples`` examples each; names ``f"{prefix}{i}"``.

        Raises ValueError for T = 0 (a multi-task problem needs tasks) or n = 0.
        """
        if isinstance(n_tasks, int) and not isinstance(n_tasks, bool) and n_tasks < 1:
            raise ValueError(f"n_tasks must be >= 1 (T = {n_tasks} gives no multi-task problem)")
        _positive_int(n_tasks, "n_tasks")
        _positive_int(n_samples, "n_samples")
        g = torch.Generator().manual_seed(int(seed))
        weights = self.sample_weights(n_tasks, g)
        X = torch.randn(n_tasks, n_samples, self.dim, generator=g, dtype=self.dtype)
        y = torch.einsum("tnd,td->tn", X, weights) + self.noise * torch.randn(n_tasks, n_samples, generator=g, dtype=self.dtype)
        names = tuple(f"{prefix}{i}" for i in range(n_tasks))
        return LinearTaskSet(names, X, y, weights, self.noise)

    def __repr__(self) -> str:
        return (
            f"LinearTaskFamily(dim={self.dim}, rank={self.rank}, noise={self.noise}, spread={self.spread}, "
            f"off_subspace={self.off_subspace}, seed={self.seed})"
        )
