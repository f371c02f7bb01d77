"""The linear multi-task model of notebook 01 and the estimators it is compared with.

The shared-θ model: θ = B ∈ R^{d×k} (a shared linear map to a k-dimensional code) and θ_i = a_i ∈ R^k
(a linear read-out per task), so f(θ, θ_i, x) = a_iᵀ Bᵀ x and task i's weight vector is ŵ_i = B a_i.
With the mean squared error L_i = (1/n_i) ‖X_i B a_i − y_i‖² and fixed task weights w_i, the objective
J = Σ_i w_i L_i has the gradients (residual r_i = X_i B a_i − y_i)

    ∂J/∂a_i = (2 w_i / n_i) Bᵀ X_iᵀ r_i                      (only task i reaches its own head)
    ∂J/∂B   = Σ_i (2 w_i / n_i) X_iᵀ r_i a_iᵀ                (every task pulls on the shared map)

(:func:`objective_gradients`). The comparison estimators are closed-form: per-task ridge regression
with leave-one-out choice of the penalty (independent models), the same on all tasks' data pooled
(one model that ignores task identity), and the Bayes posterior mean that knows the task distribution
(the oracle: no estimator does better on average).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from mtml_lib import config
from mtml_lib.data.linear_tasks import LinearTaskFamily, LinearTaskSet
from mtml_lib.models.multitask import MultiTaskModel, Task, mse_loss
from mtml_lib.mtl.trainer import History, MultiTaskTrainer
from mtml_lib.mtl.weighting.base import EqualWeights, FixedWeights

#: ridge penalties tried by leave-one-out, in units of the number of examples (largest first, so that
#: ties, as with a single example, go to the most cautious fit)
RIDGE_GRID: tuple[float, ...] = tuple(float(10.0 ** e) for e in torch.linspace(2, -4, 25).tolist())


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block, then restore the previous setting.

    The matrices of the linear toy are tiny (tens of rows): extra intra-op threads only add
    synchronisation, and on a busy machine they make a fit ten times slower. Results are the same.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# -------------------------------------------------------------------------------- the shared model
def linear_task(name: str, rank: int) -> Task:
    """Task i of the linear toy: head θ_i = a_i, a bias-free ``Linear(rank, 1)``; loss: mean squared error."""
    return Task(name, head=lambda: nn.Linear(rank, 1, bias=False), loss=mse_loss, kind="regression", output_shape=(1,))


def low_rank_model(dim: int, rank: int, names: Sequence[str], dtype: torch.dtype = torch.float64) -> MultiTaskModel:
    """Shared θ = B (a bias-free ``Linear(dim, rank)``, weight Bᵀ) and one head a_i per task name."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= dim:
        raise ValueError(f"rank must be an integer in [1, dim={dim}], got {rank!r}")
    names = list(names)
    if not names:
        raise ValueError("low_rank_model needs at least one task name (got T = 0)")
    model = MultiTaskModel(nn.Linear(dim, rank, bias=False), [linear_task(n, rank) for n in names])
    return model.to(dtype)


def shared_basis(model: MultiTaskModel) -> torch.Tensor:
    """B ``(d, k)`` of a :func:`low_rank_model` (detached)."""
    return model.shared.weight.detach().T.clone()


def head_matrix(model: MultiTaskModel, names: Sequence[str] | None = None) -> torch.Tensor:
    """A: the heads a_i of a :func:`low_rank_model` stacked as rows, ``(T, k)`` in ``names`` order (detached)."""
    names = model.task_names if names is None else list(names)
    return torch.cat([model.heads[model.task(n).name].weight.detach() for n in names])


def task_weights(model: MultiTaskModel, names: Sequence[str] | None = None) -> torch.Tensor:
    """The implied weight vectors ŵ_i = B a_i of a :func:`low_rank_model`, ``(T, d)`` in ``names`` order."""
    return head_matrix(model, names) @ model.shared.weight.detach()


def objective_gradients(
    B: torch.Tensor, A: torch.Tensor, X: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-derived ∂J/∂B ``(d, k)`` and ∂J/∂A ``(T, k)`` of J = Σ_i w_i (1/n) ‖X_i B a_i − y_i‖².

    ``B``: ``(d, k)``; ``A``: rows a_i, ``(T, k)``; ``X``: ``(T, n, d)``; ``y``: ``(T, n)``; ``w``: ``(T,)``
    (default all ones).
    """
    T, n, d = X.shape
    if B.shape[0] != d or A.shape != (T, B.shape[1]) or y.shape != (T, n):
        raise ValueError(
            f"objective_gradients: shapes B {tuple(B.shape)}, A {tuple(A.shape)}, X {tuple(X.shape)}, y {tuple(y.shape)} "
            "do not fit (expected B (d, k), A (T, k), X (T, n, d), y (T, n))"
        )
    w = torch.ones(T, dtype=X.dtype) if w is None else torch.as_tensor(w, dtype=X.dtype)
    residual = torch.einsum("tnd,dk,tk->tn", X, B, A) - y  # r_i
    scale = (2.0 * w / n)[:, None]  # 2 w_i / n_i
    back = torch.einsum("tnd,tn->td", X, residual)  # X_iᵀ r_i
    grad_A = scale * (back @ B)  # (2 w_i/n) Bᵀ X_iᵀ r_i
    grad_B = torch.einsum("td,tk->dk", scale * back, A)  # Σ_i (2 w_i/n) X_iᵀ r_i a_iᵀ
    return grad_B, grad_A


def principal_angles(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between span(U) and span(V); ``U`` ``(d, k1)``, ``V`` ``(d, k2)``.

    0 means a shared direction, π/2 an orthogonal one; the largest angle is 0 only when one subspace
    contains the other.
    """
    if U.dim() != 2 or V.dim() != 2 or U.shape[0] != V.shape[0]:
        raise ValueError(f"principal_angles needs two (d, k) matrices with the same d, got {tuple(U.shape)} and {tuple(V.shape)}")
    qu, _ = torch.linalg.qr(U)
    qv, _ = torch.linalg.qr(V)
    cosines = torch.linalg.svdvals(qu.T @ qv).clamp(-1.0, 1.0)
    return torch.arccos(cosines).sort().values


# -------------------------------------------------------------------------------- closed-form estimators
def ridge_loocv(X: torch.Tensor, y: torch.Tensor, grid: Sequence[float] = RIDGE_GRID) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression per task, penalty chosen by exact leave-one-out error, batched over tasks.

    ``X``: ``(T, n, d)``, ``y``: ``(T, n)``. Penalty λ = c · n for c in ``grid``. Returns the weights
    ``(T, d)`` and the chosen λ ``(T,)``. Uses the thin SVD X = U S Vᵀ: the hat matrix is
    U diag(S²/(S²+λ)) Uᵀ and the leave-one-out residual is (y − ŷ)_j / (1 − H_jj), valid for n < d too.
    """
    if X.dim() != 3 or y.shape != X.shape[:2]:
        raise ValueError(f"ridge_loocv needs X (T, n, d) and y (T, n), got {tuple(X.shape)} and {tuple(y.shape)}")
    n = X.shape[1]
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)  # (T,n,r), (T,r), (T,r,d)
    uty = torch.einsum("tnr,tn->tr", U, y)
    lambdas = torch.tensor(list(grid), dtype=X.dtype) * n  # (L,)
    shrink = S[:, None, :] ** 2 / (S[:, None, :] ** 2 + lambdas[None, :, None])  # (T, L, r)
    fitted = torch.einsum("tnr,tlr,tr->tln", U, shrink, uty)
    leverage = torch.einsum("tnr,tlr->tln", U ** 2, shrink)
    loo = (((y[:, None, :] - fitted) / (1.0 - leverage)) ** 2).mean(-1)  # (T, L)
    best = loo.argmin(-1)
    lam = lambdas[best]
    coef = S / (S ** 2 + lam[:, None]) * uty  # (T, r)
    return torch.einsum("trd,tr->td", Vh, coef), lam


def independent_estimate(tasks: LinearTaskSet) -> torch.Tensor:
    """(a) One ridge model per task, nothing shared: ``(T, d)``."""
    return ridge_loocv(tasks.X, tasks.y)[0]


def pooled_estimate(tasks: LinearTaskSet) -> torch.Tensor:
    """(b) One ridge model on all tasks' data, ignoring which task an example came from: ``(d,)``."""
    X = tasks.X.reshape(1, -1, tasks.dim)
    return ridge_loocv(X, tasks.y.reshape(1, -1))[0][0]


def oracle_estimate(family: LinearTaskFamily, tasks: LinearTaskSet) -> torch.Tensor:
    """(d) The Bayes posterior mean E[w_i | X_i, y_i] under the true task distribution: ``(T, d)``.

    It knows the basis B, the mean, the spread and the noise level, so its expected excess risk is the
    smallest any estimator can reach from the same data. ŵ_i = μ + Σ X_iᵀ (X_i Σ X_iᵀ + σ² I)⁻¹ (y_i − X_i μ).
    """
    mu = (1.0 - family.spread) ** 0.5 * family.mean
    cov = family.covariance()
    X, y = tasks.X, tasks.y
    gram = X @ cov @ X.transpose(1, 2)
    # a tiny jitter keeps the solve defined on noiseless data
    eye = torch.eye(tasks.n_samples, dtype=X.dtype)
    system = gram + (family.noise ** 2 + 1e-10) * eye
    alpha = torch.linalg.solve(system, (y - X @ mu).unsqueeze(-1)).squeeze(-1)
    return mu + torch.einsum("de,tne,tn->td", cov, X, alpha)


# -------------------------------------------------------------------------------- fitting the shared model
def fit_shared(
    tasks: LinearTaskSet,
    rank: int,
    *,
    epochs: int,
    lr: float = 1.0,
    optimizer: str = "lbfgs",
    schedule: str = "constant",
    weight_decay: float = 0.0,
    init_scale: float | None = 0.01,
    weights: Sequence[float] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[MultiTaskModel, History]:
    """(c) The shared-θ model, trained by :class:`MultiTaskTrainer` on the full batch of every task.

    ``weights``: the task weights w_i of Σ_i w_i L_i (default: all 1). ``weight_decay`` λ on both B and
    the a_i acts as a nuclear-norm penalty λ‖W‖_* on the stacked weights W = A Bᵀ (the minimum of
    (‖A‖² + ‖B‖²)/2 over factorisations of W is its nuclear norm), the convex relative of a rank
    constraint. ``init_scale``: standard deviation of a Gaussian start (None: PyTorch's default
    ``Linear`` initialisation). A small start begins near W = 0, so the fit first grows the directions the
    data supports most; the default ``Linear`` start often ends in a worse local minimum of this
    non-convex problem when data are scarce. Returns the trained model and its history;
    ``task_weights(model)`` gives ŵ_i.
    """
    with single_thread():
        return _fit_shared(tasks, rank, epochs, lr, optimizer, schedule, weight_decay, init_scale, weights, seed, progress)


def _fit_shared(tasks, rank, epochs, lr, optimizer, schedule, weight_decay, init_scale, weights, seed, progress):
    torch.manual_seed(seed)
    model = low_rank_model(tasks.dim, rank, tasks.names, dtype=tasks.X.dtype)
    if init_scale is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, init_scale)
    weighting = EqualWeights(tasks.n_tasks) if weights is None else FixedWeights(tasks.n_tasks, weights)
    trainer = MultiTaskTrainer(
        model, weighting, optimizer=optimizer, lr=lr, schedule=schedule, weight_decay=weight_decay,
        progress=config.show_progress(progress), desc=f"shared model (n={tasks.n_samples})",
    )
    history = trainer.fit(tasks.batch(), epochs)
    return model, history
