"""The sinusoid experiment of Finn et al. (2017), section 5.1, as notebook 03 runs it.

Every method starts from the same initial MLP (seeded) and sees the same stream of training tasks;
every method is tested on the same test tasks (a separate seed), fine-tuned with plain gradient steps
of size α on the support points (Meta-SGD with its learned rates) and measured on ``eval_query_points``
query points of each task. The pretrained baseline is one MLP trained on all tasks at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F

from mtml_lib.data.sinusoid import SinusoidTasks
from mtml_lib.meta.core import MetaLearner
from mtml_lib.meta.tasks import TaskBatch
from mtml_lib.meta.training import History, mean_ci95, meta_train, pretrain
from mtml_lib.models import MLP
from mtml_lib.plotting import method_colour

#: the methods of the comparison, and how tables and figures name them
METHODS: dict[str, str] = {
    "maml": "MAML",
    "fomaml": "FOMAML",
    "anil": "ANIL",
    "metasgd": "Meta-SGD",
    "reptile": "Reptile",
    "pretrained": "pretrained",
}
_TEST_SEED_OFFSET = 10_000  # test tasks come from their own stream, never from the training one


@dataclass
class Trained:
    """A trained method: the learner that adapts it at test time, its training history and wall time."""

    method: str
    learner: MetaLearner
    history: History

    @property
    def label(self) -> str:
        return METHODS[self.method]


def train_method(method: str, settings, seed: int = 0, device: torch.device | str = "cpu") -> Trained:
    """Train one method of :data:`METHODS` with the profile ``settings`` (``MamlSinusoidProfile``).

    With ``settings.compile`` the meta-step of the MAML family and Reptile runs under ``torch.compile``
    (same numbers, faster after a one-off compilation per method).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(map(repr, METHODS))}")
    torch.manual_seed(seed)
    model = MLP([1, *settings.hidden, 1]).to(device)
    draw = SinusoidTasks().sampler(settings.k_shot, seed=seed)
    sample = lambda n_tasks: draw(n_tasks).to(device)  # noqa: E731 - tasks are drawn on the CPU, same on every device
    kwargs = dict(inner_lr=settings.inner_lr, test_steps=settings.test_steps)
    if method == "pretrained":
        history = pretrain(model, F.mse_loss, sample, settings.n_iterations, settings.meta_batch, settings.meta_lr,
                           settings.log_every)
        return Trained(method, MetaLearner(model, F.mse_loss, "maml", **kwargs), history)
    steps = settings.reptile_inner_steps if method == "reptile" else settings.inner_steps
    learner = MetaLearner(model, F.mse_loss, method, inner_steps=steps, compile=settings.compile, **kwargs)
    history = meta_train(learner, sample, settings.n_iterations, settings.meta_batch, settings.meta_lr, settings.log_every)
    return Trained(method, learner, history)


def train_all(settings, seed: int = 0, methods: Iterable[str] = tuple(METHODS), device: torch.device | str = "cpu",
              log: Callable[[str], None] | None = print) -> dict[str, Trained]:
    """Train every method in ``methods``; ``log`` receives one line per method (time, final loss)."""
    trained = {}
    for method in methods:
        start = time.perf_counter()
        trained[method] = train_method(method, settings, seed, device)
        if log is not None:
            h = trained[method].history
            log(f"{METHODS[method]:>10}: {settings.n_iterations} iterations in {time.perf_counter() - start:6.1f} s "
                f"({h.ms_per_iteration:.2f} ms each), last training loss {h.loss[-1]:.3f}")
    return trained


def evaluation_tasks(settings, k_shot: int, seed: int = 0, n_tasks: int | None = None,
                     device: torch.device | str = "cpu") -> TaskBatch:
    """The test tasks: ``k_shot`` support and ``eval_query_points`` query points each, from the test seed.

    The same tasks (amplitudes, phases, query points) for every ``k_shot``: only the support set grows.
    """
    n_tasks = settings.n_test_tasks if n_tasks is None else n_tasks
    gen = torch.Generator().manual_seed(seed + _TEST_SEED_OFFSET)
    tasks = SinusoidTasks()
    base = tasks.sample(n_tasks, max(settings.eval_k_shots + (k_shot,)), settings.eval_query_points, gen)
    return TaskBatch(base.support_x[:, :k_shot], base.support_y[:, :k_shot], base.query_x, base.query_y,
                     info=base.info).to(device)


def mse_curves(trained: dict[str, Trained], batch: TaskBatch, steps: int) -> dict[str, torch.Tensor]:
    """Query MSE of every test task after 0..``steps`` steps, per method: ``(steps + 1, T)``.

    A task whose fine-tuning diverges keeps its non-finite MSE (see :func:`results_table`).
    """
    return {m: t.learner.evaluate(batch, steps, allow_nonfinite=True).loss for m, t in trained.items()}


def results_table(curves: dict[str, torch.Tensor], steps: Iterable[int] = (1, 10)) -> pd.DataFrame:
    """Mean test MSE ± 95% CI half-width after each of ``steps`` steps, one row per method.

    Columns ``diverged k``: test tasks whose MSE after k steps is not finite (NaN/inf, or above 1e6); the
    mean and CI of such a method are NaN, because an average that drops the diverged tasks would flatter it.
    """
    rows = []
    for method, curve in curves.items():
        row = {"method": METHODS[method]}
        for s in steps:
            values = curve[s]
            diverged = int((~torch.isfinite(values) | (values > 1e6)).sum())
            mean, half = mean_ci95(values) if diverged == 0 else (float("nan"), float("nan"))
            row[f"MSE {s} step{'s' if s != 1 else ''}"] = float(mean)
            row[f"± CI {s}"] = float(half)
            row[f"diverged {s}"] = diverged
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def plot_fits(trained: dict[str, Trained], batches: dict[int, TaskBatch], task: int = 0,
              steps: Iterable[int] = (0, 1, 10)) -> plt.Figure:
    """The paper's qualitative figure: one test task, true function, the K support points and the fit
    after each of ``steps`` gradient steps; one column per method, one row per K in ``batches``."""
    steps = list(steps)
    grid = SinusoidTasks().grid(200).to(next(iter(batches.values())).support_x.device)
    fig, axes = plt.subplots(len(batches), len(trained), figsize=(4.2 * len(trained), 3.0 * len(batches)),
                             sharex=True, sharey=True, squeeze=False)
    shades = [0.35 + 0.65 * i / max(len(steps) - 1, 1) for i in range(len(steps))]
    for row, (k, batch) in enumerate(batches.items()):
        one = batch.select([task])
        truth = SinusoidTasks.function(one.info["amplitude"], one.info["phase"], grid.unsqueeze(0))[0].cpu()
        for col, (method, t) in enumerate(trained.items()):
            ax = axes[row, col]
            ax.plot(grid.cpu(), truth, color="black", lw=1.5, label="true function")
            for s, shade in zip(steps, shades):
                phi = t.learner.adapt(one.support_x, one.support_y, steps=s)
                pred = t.learner.predict(phi, grid.unsqueeze(0))[0].cpu()
                ax.plot(grid.cpu(), pred, color=method_colour(method), alpha=shade, lw=1.5, ls="--" if s == 0 else "-",
                        label=f"after {s} step{'s' if s != 1 else ''}")
            ax.scatter(one.support_x[0, :, 0].cpu(), one.support_y[0, :, 0].cpu(), color="black", marker="^", s=30, zorder=3,
                       label="K support points")
            ax.set_title(f"{t.label}, K = {k}")
            if row == len(batches) - 1:
                ax.set_xlabel("x")
            if row == 0:
                ax.legend(fontsize="x-small", loc="lower left", framealpha=0.9)
    for row in range(len(batches)):
        axes[row, 0].set_ylabel("y")
    fig.tight_layout()
    return fig


def plot_mse_vs_steps(curves_by_k: dict[int, dict[str, torch.Tensor]]) -> plt.Figure:
    """Mean test MSE (± 95% CI band) versus the number of gradient steps, one panel per K."""
    fig, axes = plt.subplots(1, len(curves_by_k), figsize=(4.2 * len(curves_by_k), 3.4), sharey=True, squeeze=False)
    for ax, (k, curves) in zip(axes[0], curves_by_k.items()):
        for method, curve in curves.items():
            mean, half = mean_ci95(curve, dim=1)
            steps = range(len(mean))
            ax.plot(steps, mean, marker="o", ms=3, color=method_colour(method), label=METHODS[method])
            ax.fill_between(steps, mean - half, mean + half, color=method_colour(method), alpha=0.2)
        ax.set_title(f"K = {k}")
        ax.set_xlabel("gradient steps at test time")
        ax.set_ylim(bottom=0)
    axes[0, 0].set_ylabel("test MSE (mean, 95% CI)")
    axes[0, 0].legend()
    fig.tight_layout()
    return fig


def head_step_curvature(learner: MetaLearner, batch: TaskBatch) -> torch.Tensor:
    """``α · λ_max`` per task ``(T,)``: the inner step size times the largest curvature of the support MSE
    as a function of the last linear layer (its Hessian is ``2/K Σ h hᵀ`` over the features ``h`` of the K
    support points, with a 1 appended for the bias). Gradient descent on that quadratic converges only
    when ``α · λ_max < 2``; about 1 means one step is close to a Newton step along that direction.

    Needs an ``nn.Sequential`` model ending in ``nn.Linear`` (the sinusoid MLP).
    """
    model = learner.model
    if not isinstance(model, torch.nn.Sequential) or not isinstance(model[-1], torch.nn.Linear):
        raise ValueError(f"head_step_curvature needs an nn.Sequential ending in nn.Linear, got {type(model).__name__}")
    with torch.no_grad():
        h = torch.nn.Sequential(*list(model)[:-1])(batch.support_x)
        h = torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)
        hessian = 2.0 * h.transpose(1, 2) @ h / h.shape[1]
        return learner.inner_lr * torch.linalg.eigvalsh(hessian)[:, -1]


def describe_results(table: pd.DataFrame, curvature: dict[str, torch.Tensor], test_steps: int) -> str:
    """The reading of the comparison table of notebook 03 as Markdown bullets, every number from ``table``
    (:func:`results_table` with steps ``(1, test_steps)``) and ``curvature`` (method -> the ``α·λ_max`` per
    test task of :func:`head_step_curvature`), so that the words follow the run that made them."""
    one, many = "MSE 1 step", f"MSE {test_steps} steps"

    def mse(method: str, column: str) -> str:
        row = table.loc[METHODS[method]]
        steps = 1 if column == one else test_steps
        if row[f"diverged {steps}"]:
            return f"diverged on {int(row[f'diverged {steps}'])} of the test tasks"
        return f"{row[column]:.3f} ± {row[f'± CI {steps}']:.3f}"

    def value(method: str, column: str) -> float:
        return float(table.loc[METHODS[method], column])

    lines = []
    ratio = value("maml", one) / value("pretrained", one)
    lines.append(
        f"- **MAML vs pretrained.** After one step MAML's test MSE is {mse('maml', one)}, the pretrained model's "
        f"{mse('pretrained', one)}: a ratio of {ratio:.2f}. After {test_steps} steps: {mse('maml', many)} against "
        f"{mse('pretrained', many)}. The pretrained model starts from the family's average task (measured above); "
        "MAML's initialisation is built for the step.")
    fo = value("fomaml", one) - value("maml", one)
    lines.append(
        f"- **The second-order term.** FOMAML drops the Hessian term: {mse('fomaml', one)} after one step, "
        f"{'above' if fo > 0 else 'below'} MAML by {abs(fo):.3f}"
        + (" (the intervals overlap)" if abs(fo) < table.loc[METHODS['maml'], '± CI 1'] + table.loc[METHODS['fomaml'], '± CI 1'] else "")
        + f"; after {test_steps} steps {mse('fomaml', many)}.")
    if "anil" in curvature:
        r = curvature["anil"]
        lines.append(
            f"- **ANIL** adapts only the last layer: {mse('anil', one)} after one step, {mse('anil', many)} after "
            f"{test_steps}. Its features give the head a curvature α·λ_max with median {float(r.median()):.2f} "
            f"(one step of size α is nearly a Newton step for the head when it is near 1) and above 2 on "
            f"{int((r > 2).sum())} of {len(r)} test tasks"
            + (f" (MAML: {int((curvature['maml'] > 2).sum())})" if "maml" in curvature else "")
            + ": there gradient descent on the head overshoots further at every step, which widens its "
              f"{test_steps}-step interval.")
    best_one = table[one].idxmin()
    lines.append(
        f"- **Meta-SGD** learns one step size per weight: {mse('metasgd', one)} after one step "
        f"({'the best of all methods' if best_one == METHODS['metasgd'] else 'best: ' + best_one}), "
        f"{mse('metasgd', many)} after {test_steps} steps: its step sizes are tuned for the single inner step it "
        "was trained with.")
    gap_one = value("reptile", one) - value("maml", one)
    lines.append(
        f"- **Reptile** never looks at a query loss: {mse('reptile', one)} after one step ({gap_one:+.3f} against "
        f"MAML) and {mse('reptile', many)} after {test_steps}"
        + (f" ({value('reptile', many) - value('maml', many):+.3f} against MAML)." if not table.loc[METHODS['reptile'], f'diverged {test_steps}']
           and not table.loc[METHODS['maml'], f'diverged {test_steps}'] else "."))
    return "\n".join(lines)
