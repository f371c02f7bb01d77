"""Knowledge transfer to new tasks: scratch vs joint pretraining vs multi-task θ vs ANIL vs MAML.

The experiment of notebook 05. Every method learns from the sinusoid family of Finn et al. (2017) and is
then given a *new* task with K examples (its support set), from the same family or from a family that
differs (:data:`mtml_lib.data.functions.TEST_FAMILIES`); it is measured by the MSE on the new task's
query points.

=============== ===================================================== =====================================
method          what is learned from the training tasks               how a new task is fitted
=============== ===================================================== =====================================
``scratch``     nothing (a fresh network)                             gradient steps on all parameters
``joint``       one network fitted to all tasks pooled                gradient steps on all parameters
``multitask``   a shared trunk θ with one linear head per task        θ frozen, new head by regularised least
                                                                      squares towards the training heads
``anil``        a trunk and head meta-learned for head-only updates   gradient steps on the head
``maml``        an initialisation meta-learned for few-step updates   gradient steps on all parameters
=============== ===================================================== =====================================

Two controls separate the *representation* from the *head fitter*: ``multitask_gd`` is the multi-task
trunk with a head fitted like ANIL's (gradient steps, from the mean of the training heads), and
``anil_ridge`` is ANIL's meta-learned trunk with a head fitted like the multi-task one (regularised least
squares towards a Gaussian prior, whose mean and covariance are those of heads fitted to the multi-task
training tasks on ANIL's features).

The prior: the heads ``w_j`` (weights and bias) of the training tasks are treated as draws from a
Gaussian ``N(μ, Σ)``; with ``P = Σ⁻¹`` the new head minimises ``|Φ w − y|² + λ (w − μ)ᵀ P (w − μ)``,
the MAP estimate under that prior when λ is the noise variance. Directions in which the training heads
vary little are pinned near ``μ``; directions in which they vary a lot are left to the data.

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
    "multitask_gd": "multi-task θ + gradient head",
    "anil": "ANIL",
    "anil_ridge": "ANIL θ + ridge head",
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
    data = training_tasks(settings, seed)
    names = [f"task{i:04d}" for i in range(settings.mt_tasks)]
    tasks = [Task(name, head=lambda: nn.Linear(width, 1), loss=mse_loss) for name in names]
    model = MultiTaskModel(trunk(settings.hidden), tasks).to(device)
    batch = {name: (data.support_x[i].to(device), data.support_y[i].to(device)) for i, name in enumerate(names)}
    trainer = MultiTaskTrainer(model, optimizer="adam", lr=settings.meta_lr * 3, schedule="cosine",
                               progress=config.show_progress(progress), desc="multi-task trunk")
    return model, trainer.fit(batch, settings.mt_epochs)


def training_tasks(settings, seed: int = 0) -> TaskBatch:
    """The fixed training tasks of the multi-task trunk: ``settings.mt_tasks`` sinusoids with
    ``settings.mt_points`` examples each (in ``support_x``/``support_y``)."""
    return SinusoidTasks().sample(settings.mt_tasks, settings.mt_points, 1, torch.Generator().manual_seed(seed))


def head_prior(heads: MultiTaskModel | torch.Tensor, jitter: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(F + 1,)`` and precision ``(F + 1, F + 1)`` of the training heads ``[weight, bias]``: those of a
    :class:`MultiTaskModel`, or the rows of a tensor ``(N, F + 1)`` (e.g. from :func:`fitted_heads`).

    The heads of the training tasks show which read-outs of θ's features tasks of this family use; a new
    head is fitted towards them (:func:`ridge_heads`). ``jitter`` (relative to the mean variance) keeps
    the covariance invertible when there are fewer heads than features.
    """
    if isinstance(heads, MultiTaskModel):
        heads = torch.stack([torch.cat([h.weight.detach().reshape(-1), h.bias.detach().reshape(-1)])
                             for h in heads.heads.values()])
    heads = heads.detach().double()
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


def _features(trunk: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The frozen trunk's features ``(T, n, F)`` of inputs ``(T, n, 1)``."""
    return trunk(inputs.flatten(0, 1)).unflatten(0, inputs.shape[:2])


@torch.no_grad()
def fitted_heads(trunk: nn.Module, tasks: TaskBatch, ridge: float = 1e-3) -> torch.Tensor:
    """Heads ``(T, F + 1)`` fitted by plain ridge regression on ``trunk``'s features of each task's support
    set: the training heads of a trunk that was not trained with one head per task (ANIL's)."""
    return ridge_heads(_features(trunk, tasks.support_x), tasks.support_y, ridge).squeeze(-1)


def ridge_predict(trunk: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor, x: torch.Tensor,
                  ridge: float, prior: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Predictions ``(T, n, 1)`` at ``x`` ``(T, n, 1)`` of new heads fitted by :func:`ridge_heads` on the frozen
    ``trunk``'s features (``(n, 1) -> (n, F)``) of each task's support set."""
    with torch.no_grad():
        w = ridge_heads(_features(trunk, support_x), support_y, ridge, prior)
        feat = _features(trunk, x)
        return (torch.cat([feat, torch.ones_like(feat[..., :1])], dim=-1).double() @ w).to(x.dtype)


def ridge_mse(trunk: nn.Module, batch: TaskBatch, ridge: float,
              prior: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Query MSE ``(T,)`` of new tasks fitted by :func:`ridge_predict`."""
    prediction = ridge_predict(trunk, batch.support_x, batch.support_y, batch.query_x, ridge, prior)
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
    prior: tuple[torch.Tensor, torch.Tensor] | None = None  # the training heads' mean and precision (ridge rule)
    trunk: nn.Module | None = None  # the frozen feature map the ridge rule fits a head on

    @property
    def label(self) -> str:
        return METHODS[self.name]

    def learner(self, step_size: float) -> MetaLearner:
        algorithm = "anil" if self.rule == "head" else "maml"
        return MetaLearner(self.model, F.mse_loss, algorithm, inner_lr=step_size)

    def mse(self, batch: TaskBatch, steps: int, step_size: float | None = None, ridge: float | None = None) -> torch.Tensor:
        """Query MSE ``(T,)`` after adapting to each task's support set (non-finite where fitting diverged)."""
        if self.rule == "ridge":
            return ridge_mse(self.trunk, batch, self.ridge if ridge is None else ridge, self.prior)
        lr = self.step_size if step_size is None else step_size
        return self.learner(lr).evaluate(batch, steps, allow_nonfinite=True).loss[-1]

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Predictions ``(T, n, 1)`` at ``x`` after adapting to each task's support set (chosen settings)."""
        if self.rule == "ridge":
            return ridge_predict(self.trunk, support_x, support_y, x, self.ridge, self.prior)
        learner = self.learner(self.step_size)
        return learner.predict(learner.adapt(support_x, support_y, steps), x)


def train_methods(settings, seed: int = 0, methods: Iterable[str] = tuple(METHODS), device: torch.device | str = "cpu",
                  log: Callable[[str], None] | None = print) -> dict[str, Method]:
    """Train every method of ``methods`` on the sinusoid family with the profile ``settings``.

    The controls reuse a trunk: ``multitask_gd`` the multi-task one, ``anil_ridge`` ANIL's (trained here
    once if their parent method is not in ``methods``)."""
    methods = list(methods)
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    trained: dict[str, Method] = {}
    parents: dict[str, Method] = {}

    def parent(name: str) -> Method:
        if name not in parents:
            if name == "multitask":
                model, history = train_multitask(settings, seed, device)
                parents[name] = Method(name, model, "ridge", history, prior=head_prior(model), trunk=model.shared)
            else:
                result = train_method(name, settings, seed, device)
                parents[name] = Method(name, result.learner.model, "head", result.history)
        return parents[name]

    for name in methods:
        if name == "scratch":
            torch.manual_seed(seed)
            trained[name] = Method(name, MLP([1, *settings.hidden, 1]).to(device), "all")
        elif name in ("multitask", "anil"):
            trained[name] = parent(name)
        elif name == "multitask_gd":
            mt = parent("multitask")
            head = nn.Linear(settings.hidden[-1], 1).to(device)
            with torch.no_grad():  # start from the mean training head, the centre of the ridge rule's prior
                head.weight.copy_(mt.prior[0][:-1].view(1, -1))
                head.bias.copy_(mt.prior[0][-1:])
            trained[name] = Method(name, nn.Sequential(mt.model.shared, head), "head", mt.history)
        elif name == "anil_ridge":
            anil = parent("anil")
            body = nn.Sequential(*list(anil.model)[:-1])  # every layer but the meta-learned head: (n, hidden[-1])
            heads = fitted_heads(body, training_tasks(settings, seed).to(device))
            trained[name] = Method(name, anil.model, "ridge", anil.history, prior=head_prior(heads), trunk=body)
        else:
            result = train_method("pretrained" if name == "joint" else name, settings, seed, device)
            trained[name] = Method(name, result.learner.model, "all", result.history)
        if log is not None:
            log(f"trained {METHODS[name]}" if name not in ("multitask_gd", "anil_ridge") else
                f"built {METHODS[name]} (control: the trained trunk with the other head fitter)")
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
    handles, labels = axes[0].get_legend_handles_labels()  # below the panels, where it hides no curve
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize="small", frameon=False)
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
    for ax in axes:
        plain_log_axis(ax, "y")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize="small", frameon=False)
    return fig


# ------------------------------------------------------------------------------------ the reading, in words
def average_task_check(method: Method, families: Iterable[str] = ("sinusoid", "unseen_phase"), n_points: int = 201
                       ) -> dict[str, dict[str, float]]:
    """Where a method starts before any adaptation, against each sinusoid family's average task.

    Per family: ``start_to_average``, the RMS distance on a grid over [-5, 5] between the method's
    unadapted prediction and the family's mean function (:meth:`SinusoidTasks.mean_function`);
    ``start_to_zero``, its RMS distance to the flat line y = 0; ``cos_coefficient``, the family average's
    coefficient c in ``c cos x`` (zero when the phase range is symmetric about a multiple of π).
    """
    grid = torch.linspace(-5.0, 5.0, n_points).view(-1, 1)
    device = next(method.model.parameters()).device
    with torch.no_grad():
        start = method.model(grid.to(device)).cpu()
    out = {}
    for family in families:
        dist = task_family(family)
        if not isinstance(dist, SinusoidTasks):
            raise ValueError(f"average_task_check needs a sinusoid family, got {family!r}")
        average = dist.mean_function(grid)
        out[family] = {"start_to_average": float(((start - average) ** 2).mean().sqrt()),
                       "start_to_zero": float((start**2).mean().sqrt()),
                       "cos_coefficient": float(dist.mean_function(torch.zeros(1)))}
    return out


def describe_results(curves: Curves, k: int, checks: dict[str, dict[str, dict[str, float]]] | None = None) -> str:
    """The reading of notebook 05's table at support size ``k`` as Markdown bullets, every number from
    ``curves`` (and from ``checks``, ``{method: average_task_check(...)}`` of the joint model and scratch,
    when given)."""
    i = curves.k_shots.index(k)
    present = set(next(iter(curves.mse.values())))

    def m(family: str, method: str, at: int = i) -> float:
        mean, _, _ = curves.summary(family, method)
        return float(mean[at])

    def text(family: str, method: str, at: int = i) -> str:
        mean, ci, diverged = curves.summary(family, method)
        extra = f", {diverged[at]:.0%} diverged" if diverged[at] > 0 else ""
        return f"{METHODS[method]} {mean[at]:.3f} ± {ci[at]:.3f}{extra}"

    lines = []
    if "sinusoid" in curves.mse:
        ranked = sorted(present, key=lambda name: m("sinusoid", name))
        beat = [name for name in present if name != "scratch" and m("sinusoid", name) < m("sinusoid", "scratch")]
        lines.append(f"- **Same family, K = {k}.** Ranked: " + "; ".join(text("sinusoid", n) for n in ranked)
                     + f". {len(beat)} of the {len(present) - 1} learned starts beat scratch.")
    if {"multitask", "multitask_gd", "anil", "anil_ridge"} <= present and "sinusoid" in curves.mse:
        fam = "sinusoid"
        head_effect = (m(fam, "multitask_gd") / m(fam, "multitask"), m(fam, "anil") / m(fam, "anil_ridge"))
        trunk_effect = (m(fam, "anil_ridge") / m(fam, "multitask"), m(fam, "anil") / m(fam, "multitask_gd"))
        lines.append(
            "- **Representation or head fitter?** With the same ridge head (Gaussian prior from training heads), "
            f"the multi-task trunk reaches {m(fam, 'multitask'):.3f} and ANIL's trunk {m(fam, 'anil_ridge'):.3f}; with "
            f"the same {'gradient-step'} head, {m(fam, 'multitask_gd'):.3f} and {m(fam, 'anil'):.3f}. Changing the head "
            f"fitter changes the error by a factor {min(head_effect):.0f} to {max(head_effect):.0f} on either trunk; "
            f"changing the trunk at a fixed fitter by a factor {min(trunk_effect):.2f} to {max(trunk_effect):.2f}. "
            + ("The closed-form head, not the multi-task representation, is what makes the frozen trunk so "
               "sample-efficient here." if min(head_effect) > max(max(trunk_effect), 1 / min(trunk_effect)) else
               "Both the representation and the head fitter matter here."))
    for family in ("large_amplitude", "unseen_phase"):
        if family not in curves.mse or "sinusoid" not in curves.mse:
            continue
        ridge = [n for n in ("multitask", "anil_ridge") if n in present]
        grad = [n for n in ("joint", "anil", "maml", "multitask_gd") if n in present]
        lines.append(
            f"- **{TEST_FAMILIES[family][0]}.** Ridge heads on frozen trunks: "
            + ", ".join(f"{METHODS[n]} {m('sinusoid', n):.3f} → {m(family, n):.3f}" for n in ridge)
            + " (same family → this one); gradient-based starts: "
            + ", ".join(f"{METHODS[n]} {m('sinusoid', n):.3f} → {m(family, n):.3f}" for n in grad)
            + f"; scratch {m(family, 'scratch'):.3f}.")
    if checks and {"joint", "scratch"} <= set(checks) and "unseen_phase" in curves.mse:
        train, test = checks["joint"]["sinusoid"], checks["joint"]["unseen_phase"]
        fresh = checks["scratch"]["unseen_phase"]
        worse = m("unseen_phase", "joint") > m("unseen_phase", "scratch")
        lines.append(
            f"- **Why joint pretraining {'loses to' if worse else 'barely beats'} scratch on unseen phases** "
            f"({m('unseen_phase', 'joint'):.3f} vs {m('unseen_phase', 'scratch'):.3f}). The joint model starts near "
            f"the training family's average task, {train['cos_coefficient']:+.2f} cos x (RMS distance "
            f"{train['start_to_average']:.2f}; to the flat line y = 0: {train['start_to_zero']:.2f}). The average of the "
            f"unseen-phase family is the opposite, {test['cos_coefficient']:+.2f} cos x. A start's squared distance to "
            f"a family's average adds to its error on that family's tasks: the joint start lies {test['start_to_average']:.2f} "
            f"from it, a fresh network {fresh['start_to_average']:.2f}, so the joint model's steps start further away.")
    if "line" in curves.mse:
        last = len(curves.k_shots) - 1
        ranked = sorted(present, key=lambda name: m("line", name))
        ranked_last = sorted(present, key=lambda name: m("line", name, last))
        lines.append(
            f"- **{TEST_FAMILIES['line'][0]}.** At K = {k}: " + "; ".join(text("line", n) for n in ranked[:3])
            + f" lead. At K = {curves.k_shots[last]}: " + "; ".join(text("line", n, last) for n in ranked_last[:3])
            + ". Features built for sin and cos on [-5, 5] are a bet on shared structure: notebook 01 showed the "
              "same for linear tasks.")
    return "\n".join(lines)
