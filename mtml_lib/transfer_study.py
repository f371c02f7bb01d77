"""Knowledge transfer to new tasks: scratch vs joint pretraining vs multi-task θ vs ANIL vs MAML.

The experiment of notebook 05. Every method learns from the sinusoid family of Finn et al. (2017) and is
then given a *new* task with K examples (its support set), from the same family or from a family that
differs (:data:`mtml_lib.data.functions.TEST_FAMILIES`); it is measured by the MSE on the new task's
query points.

=============== ===================================================== =====================================
method          what is learned from the training tasks              how a new task is fitted
=============== ===================================================== =====================================
``scratch``     nothing (a fresh network)                             gradient steps on all parameters
``joint``       one network fitted to all tasks pooled                gradient steps on all parameters
``multitask``   a shared trunk θ with one linear head per task        θ frozen, new head by regularised least
                                                                      squares towards the training heads
``anil``        a trunk and head meta-learned for head-only updates   gradient steps on the head
``maml``        an initialisation meta-learned for few-step updates   gradient steps on all parameters
=============== ===================================================== =====================================

Fair comparison: every method gets the same adaptation budget (``adapt_steps`` plain gradient steps),
and its step size (or, for ``multitask``, its ridge penalty) is chosen on *validation* tasks of the
training family with ``select_k`` examples, never on the test tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtml_lib import config
from mtml_lib.data.functions import TEST_FAMILIES, task_family
from mtml_lib.data.sinusoid import SinusoidTasks
from mtml_lib.meta.core import MetaLearner
from mtml_lib.meta.sinusoid_experiment import train_method
from mtml_lib.meta.tasks import TaskBatch
from mtml_lib.models import MLP, MultiTaskModel, Task
from mtml_lib.models.multitask import mse_loss
from mtml_lib.mtl.trainer import History, MultiTaskTrainer
from mtml_lib.plotting import method_style, plain_log_axis

METHODS: dict[str, str] = {
    "scratch": "scratch",
    "joint": "joint pretraining",
    "multitask": "multi-task θ + new head",
    "anil": "ANIL",
    "maml": "MAML",
}
_VAL_SEED_OFFSET, _TEST_SEED_OFFSET = 20_000, 30_000


# ------------------------------------------------------------------------------- the multi-task trunk
def trunk(hidden: tuple[int, ...]) -> nn.Module:
    """The shared θ: the hidden layers of the sinusoid MLP, ``(n, 1) -> (n, hidden[-1])`` features."""
    return nn.Sequential(MLP([1, *hidden]), nn.ReLU())


def train_multitask(settings, seed: int = 0, device: torch.device | str = "cpu",
                    progress: bool = False) -> tuple[MultiTaskModel, History]:
    """Fit a :class:`MultiTaskModel` (trunk θ + one linear head per task) to ``settings.mt_tasks`` fixed
    sinusoid tasks of ``settings.mt_points`` examples each, full batch, with the multi-task trainer."""
    torch.manual_seed(seed)
    width = settings.hidden[-1]
    data = SinusoidTasks().sample(settings.mt_tasks, settings.mt_points, 1, torch.Generator().manual_seed(seed))
    names = [f"task{i:04d}" for i in range(settings.mt_tasks)]
    tasks = [Task(name, head=lambda: nn.Linear(width, 1), loss=mse_loss) for name in names]
    model = MultiTaskModel(trunk(settings.hidden), tasks).to(device)
    batch = {name: (data.support_x[i].to(device), data.support_y[i].to(device)) for i, name in enumerate(names)}
    trainer = MultiTaskTrainer(model, optimizer="adam", lr=settings.meta_lr * 3, schedule="cosine",
                               progress=config.show_progress(progress), desc="multi-task trunk")
    return model, trainer.fit(batch, settings.mt_epochs)


def head_prior(model: MultiTaskModel, jitter: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(F + 1,)`` and precision ``(F + 1, F + 1)`` of the trained heads ``[weight, bias]``.

    The heads of the training tasks show which read-outs of θ's features tasks of this family use; a new
    head is fitted towards them (:func:`ridge_heads`). ``jitter`` (relative to the mean variance) keeps
    the covariance invertible when there are fewer heads than features.
    """
    heads = torch.stack([torch.cat([h.weight.detach().reshape(-1), h.bias.detach().reshape(-1)])
                         for h in model.heads.values()]).double()
    if heads.shape[0] < 2:
        raise ValueError(f"a head prior needs at least 2 trained heads, got {heads.shape[0]}")
    mean = heads.mean(0)
    cov = torch.cov(heads.T).reshape(heads.shape[1], heads.shape[1])
    cov = cov + jitter * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(cov.shape[0], dtype=cov.dtype)
    return mean, torch.linalg.inv(cov)


def ridge_heads(features: torch.Tensor, targets: torch.Tensor, ridge: float,
                prior: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Per-task regularised least squares for a linear head with intercept, in float64.

    ``features (T, K, F)``, ``targets (T, K, 1)`` -> head weights ``(T, F + 1, 1)`` (last row: intercept),
    minimising ``|Φ w − y|² + λ (w − μ)ᵀ P (w − μ)`` with ``Φ = [features, 1]``. Without ``prior``,
    ``μ = 0`` and ``P = diag(1, ..., 1, 0)`` (plain ridge, intercept not penalised); with
    ``prior = (μ, P)`` from :func:`head_prior`, the new head is pulled towards the training heads.
    """
    if features.dim() != 3 or targets.shape != (*features.shape[:2], 1):
        raise ValueError(f"ridge_heads expects features (T, K, F) and targets (T, K, 1); got "
                         f"{tuple(features.shape)} and {tuple(targets.shape)}")
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge!r}")
    phi = torch.cat([features, torch.ones_like(features[..., :1])], dim=-1).double()
    size = phi.shape[-1]
    if prior is None:
        mean = torch.zeros(size, dtype=phi.dtype, device=phi.device)
        precision = torch.diag(torch.cat([torch.ones(size - 1), torch.zeros(1)])).to(phi)
    else:
        mean, precision = (t.to(phi) for t in prior)
        if mean.shape != (size,) or precision.shape != (size, size):
            raise ValueError(f"prior must be a mean ({size},) and precision ({size}, {size}); got "
                             f"{tuple(mean.shape)} and {tuple(precision.shape)}")
    gram = phi.transpose(1, 2) @ phi + ridge * precision + 1e-10 * torch.eye(size, dtype=phi.dtype, device=phi.device)
    rhs = phi.transpose(1, 2) @ targets.double() + ridge * (precision @ mean).view(1, -1, 1)
    return torch.linalg.solve(gram, rhs)


def ridge_predict(model: MultiTaskModel, support_x: torch.Tensor, support_y: torch.Tensor, x: torch.Tensor,
                  ridge: float, prior: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Predictions ``(T, n, 1)`` at ``x`` ``(T, n, 1)`` of new heads fitted by :func:`ridge_heads` on the frozen
    trunk's features of each task's support set."""
    def features(inputs):
        return model.shared(inputs.flatten(0, 1)).unflatten(0, inputs.shape[:2])

    with torch.no_grad():
        w = ridge_heads(features(support_x), support_y, ridge, prior)
        feat = features(x)
        return (torch.cat([feat, torch.ones_like(feat[..., :1])], dim=-1).double() @ w).to(x.dtype)


def ridge_mse(model: MultiTaskModel, batch: TaskBatch, ridge: float,
              prior: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Query MSE ``(T,)`` of new tasks fitted by :func:`ridge_predict`."""
    prediction = ridge_predict(model, batch.support_x, batch.support_y, batch.query_x, ridge, prior)
    return ((prediction.double() - batch.query_y.double()) ** 2).mean(dim=(1, 2)).float()


# ------------------------------------------------------------------------------------- all methods
@dataclass
class Method:
    """A trained method and the adaptation rule it uses on new tasks."""

    name: str
    model: nn.Module
    rule: str  # "all" (gradient steps on every parameter), "head" (gradient steps on the head), "ridge"
    history: object = None
    step_size: float | None = None  # chosen on validation tasks (gradient rules)
    ridge: float | None = None  # chosen on validation tasks (ridge rule)
    prior: tuple[torch.Tensor, torch.Tensor] | None = None  # the trained heads' mean and precision (ridge rule)

    @property
    def label(self) -> str:
        return METHODS[self.name]

    def learner(self, step_size: float) -> MetaLearner:
        algorithm = "anil" if self.rule == "head" else "maml"
        return MetaLearner(self.model, F.mse_loss, algorithm, inner_lr=step_size)

    def mse(self, batch: TaskBatch, steps: int, step_size: float | None = None, ridge: float | None = None) -> torch.Tensor:
        """Query MSE ``(T,)`` after adapting to each task's support set (non-finite where fitting diverged)."""
        if self.rule == "ridge":
            return ridge_mse(self.model, batch, self.ridge if ridge is None else ridge, self.prior)
        lr = self.step_size if step_size is None else step_size
        return self.learner(lr).evaluate(batch, steps, allow_nonfinite=True).loss[-1]

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Predictions ``(T, n, 1)`` at ``x`` after adapting to each task's support set (chosen settings)."""
        if self.rule == "ridge":
            return ridge_predict(self.model, support_x, support_y, x, self.ridge, self.prior)
        learner = self.learner(self.step_size)
        return learner.predict(learner.adapt(support_x, support_y, steps), x)


def train_methods(settings, seed: int = 0, methods: Iterable[str] = tuple(METHODS), device: torch.device | str = "cpu",
                  log: Callable[[str], None] | None = print) -> dict[str, Method]:
    """Train every method of ``methods`` on the sinusoid family with the profile ``settings``."""
    trained: dict[str, Method] = {}
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
        if name == "scratch":
            torch.manual_seed(seed)
            trained[name] = Method(name, MLP([1, *settings.hidden, 1]).to(device), "all")
        elif name == "multitask":
            model, history = train_multitask(settings, seed, device)
            trained[name] = Method(name, model, "ridge", history, prior=head_prior(model))
        else:
            result = train_method("pretrained" if name == "joint" else name, settings, seed, device)
            trained[name] = Method(name, result.learner.model, "head" if name == "anil" else "all", result.history)
        if log is not None:
            log(f"trained {METHODS[name]}")
    return trained


def sample_tasks(family: str, n_tasks: int, k_shot: int, n_query: int, seed: int,
                 device: torch.device | str = "cpu") -> TaskBatch:
    """``n_tasks`` new tasks of ``family`` with ``k_shot`` support and ``n_query`` query points."""
    gen = torch.Generator().manual_seed(seed)
    return task_family(family).sample(n_tasks, k_shot, n_query, gen).to(device)


def _mean_finite(values: torch.Tensor) -> float:
    values = values.double()
    return float(values.mean()) if bool(torch.isfinite(values).all()) else math.inf


def select_settings(methods: dict[str, Method], settings, seed: int = 0, device: torch.device | str = "cpu") -> dict[str, float]:
    """Choose each method's step size (or ridge penalty) on validation tasks of the training family.

    Returns and stores (on each :class:`Method`) the value with the lowest mean validation MSE after
    ``settings.adapt_steps`` steps with ``settings.select_k`` examples per task.
    """
    val = sample_tasks("sinusoid", settings.n_val_tasks, settings.select_k, settings.n_query, seed + _VAL_SEED_OFFSET, device)
    chosen = {}
    for name, method in methods.items():
        if method.rule == "ridge":
            scores = {r: _mean_finite(method.mse(val, 0, ridge=r)) for r in settings.ridge_grid}
            method.ridge = min(scores, key=scores.get)
            chosen[name] = method.ridge
        else:
            scores = {lr: _mean_finite(method.mse(val, settings.adapt_steps, step_size=lr)) for lr in settings.step_size_grid}
            method.step_size = min(scores, key=scores.get)
            chosen[name] = method.step_size
    return chosen


@dataclass
class Curves:
    """Test MSE of every method on every family and support size: ``mse[family][method]`` is ``(len(k_shots), T)``."""

    k_shots: tuple[int, ...]
    mse: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def summary(self, family: str, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per K: mean MSE and 95% CI half-width (1.96 s / sqrt(n)) over the tasks whose fit stayed finite,
        and the fraction of tasks whose fit diverged."""
        arr = self.mse[family][method].double().numpy()
        finite = np.isfinite(arr)
        arr = np.where(finite, arr, np.nan)
        n = np.maximum(finite.sum(axis=-1), 1)
        return np.nanmean(arr, axis=-1), 1.96 * np.nanstd(arr, axis=-1, ddof=1) / np.sqrt(n), 1.0 - finite.mean(axis=-1)


def transfer_curves(methods: dict[str, Method], settings, seed: int = 0, families: Iterable[str] = tuple(TEST_FAMILIES),
                    device: torch.device | str = "cpu") -> Curves:
    """Test MSE after adaptation for every family, method and support size of ``settings.k_shots``.

    The same test tasks (functions and query points) for every K of a family: only the support grows.
    """
    curves = Curves(tuple(settings.k_shots))
    for f, family in enumerate(families):
        base = sample_tasks(family, settings.n_test_tasks, max(settings.k_shots), settings.n_query,
                            seed + _TEST_SEED_OFFSET + 100 * f, device)
        curves.mse[family] = {}
        for name, method in methods.items():
            rows = []
            for k in settings.k_shots:
                batch = TaskBatch(base.support_x[:, :k], base.support_y[:, :k], base.query_x, base.query_y)
                rows.append(method.mse(batch, settings.adapt_steps).cpu())
            curves.mse[family][name] = torch.stack(rows)
    return curves


def results_table(curves: Curves, k: int) -> "pd.DataFrame":
    """Mean test MSE ± 95% CI at support size ``k``: one row per method, one column per family."""
    import pandas as pd

    if k not in curves.k_shots:
        raise ValueError(f"k = {k} was not evaluated; evaluated support sizes: {list(curves.k_shots)}")
    i = curves.k_shots.index(k)
    table = {}
    for family in curves.mse:
        column = {}
        for method in curves.mse[family]:
            mean, ci, diverged = curves.summary(family, method)
            text = f"{mean[i]:.3f} ± {ci[i]:.3f}"
            n_diverged = round(float(diverged[i]) * curves.mse[family][method].shape[-1])
            column[METHODS[method]] = text + (f" ({n_diverged} diverged)" if n_diverged else "")
        table[family] = column
    return pd.DataFrame(table)


def plot_fits(methods: dict[str, Method], settings, k_shot: int = 5, seed: int = 0,
              families: Iterable[str] = tuple(TEST_FAMILIES)) -> plt.Figure:
    """One new task per family: the true function, its ``k_shot`` examples and every method's fit."""
    families = list(families)
    fig, axes = plt.subplots(1, len(families), figsize=(3.6 * len(families), 3.4), layout="constrained")
    axes = np.atleast_1d(axes)
    for f, (ax, family) in enumerate(zip(axes, families)):
        dist = task_family(family)
        grid = torch.linspace(*dist.x_range, 200).view(1, -1, 1)
        task = sample_tasks(family, 1, k_shot, 200, seed + _TEST_SEED_OFFSET + 100 * f + 7)
        if isinstance(dist, SinusoidTasks):
            truth = dist.function(task.info["amplitude"], task.info["phase"], grid)
        else:
            truth = task.info["slope"].view(-1, 1, 1) * grid + task.info["intercept"].view(-1, 1, 1)
        ax.plot(grid[0, :, 0], truth[0, :, 0], color="black", linewidth=2, label="true function")
        for name, method in methods.items():
            pred = method.predict(task.support_x, task.support_y, grid, settings.adapt_steps)
            ax.plot(grid[0, :, 0], pred[0, :, 0], linewidth=1.3, label=METHODS[name], **method_style(name))
        ax.scatter(task.support_x[0, :, 0], task.support_y[0, :, 0], marker="^", color="black", zorder=5,
                   label=f"{k_shot} examples")
        ax.set_title(TEST_FAMILIES[family][0], fontsize="small")
        ax.set_xlabel("x")
    axes[0].set_ylabel("y")
    axes[0].legend(fontsize="x-small")
    return fig


def plot_curves(curves: Curves) -> plt.Figure:
    """Test MSE versus support size K, one panel per family, one line per method (95% CI bars)."""
    families = list(curves.mse)
    fig, axes = plt.subplots(1, len(families), figsize=(3.6 * len(families), 3.6), sharex=True, layout="constrained")
    axes = np.atleast_1d(axes)
    for ax, family in zip(axes, families):
        for method in curves.mse[family]:
            mean, ci, _ = curves.summary(family, method)
            ax.errorbar(curves.k_shots, mean, yerr=ci, marker="o", markersize=4, capsize=3,
                        label=METHODS[method], **method_style(method))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(curves.k_shots, [str(k) for k in curves.k_shots])
        ax.set_xlabel("examples of the new task K")
        ax.set_title(TEST_FAMILIES[family][0], fontsize="small")
    axes[0].set_ylabel("test MSE after adaptation")
    axes[0].legend(fontsize="x-small")
    return fig
