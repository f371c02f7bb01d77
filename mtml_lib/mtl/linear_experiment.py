"""The experiments of notebook 01 on the linear task family, as functions that return tidy tables.

- :func:`sample_size_sweep`: excess risk of (a) independent, (b) pooled, (c) shared-θ and (d) oracle
  estimators versus the number of examples per task;
- :func:`structure_sweep`: the same at a fixed number of examples, versus how far the tasks leave the
  shared subspace (where sharing helps and where it hurts);
- :func:`transfer_sweep`: a new task fitted with the pretrained θ frozen, fine-tuned, or from scratch,
  versus the new task's number of examples.

Every row is one (seed, setting, method) with the excess risk averaged over the tasks of that seed; the
seed draws a new family (a new basis B) and new tasks, so the spread over seeds is the spread a reader
would see on another draw. :func:`summarise` and :func:`plot_curves` turn the rows into means with
standard errors and a figure.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
from tqdm.auto import tqdm

from mtml_lib import config
from mtml_lib.data.linear_tasks import LinearTaskFamily, LinearTaskSet
from mtml_lib.models.multitask import MultiTaskModel
from mtml_lib.mtl import linear_models as lm
from mtml_lib.mtl.trainer import History
from mtml_lib.mtl.transfer import transfer

#: estimator names of the comparison, in plotting order
METHODS: tuple[str, ...] = ("independent", "pooled", "shared", "oracle")
TRANSFER_METHODS: tuple[str, ...] = ("scratch", "frozen θ", "fine-tuned θ", "oracle")


@dataclass(frozen=True)
class FamilySpec:
    """The arguments of :class:`LinearTaskFamily` except the seed (see that class)."""

    dim: int
    rank: int
    noise: float
    spread: float = 1.0
    off_subspace: float = 0.0

    def family(self, seed: int) -> LinearTaskFamily:
        return LinearTaskFamily(self.dim, self.rank, self.noise, self.spread, self.off_subspace, seed=seed)


@dataclass(frozen=True)
class SharedFit:
    """How the shared-θ model is fitted: rank k of θ = B, optimiser, and weight decay λ = ``decay`` / n.

    The penalty shrinks like 1/n, as a prior's weight does against n examples, so one constant serves
    every sample size. ``epochs`` are L-BFGS steps of up to 20 iterations each with the default optimiser.
    """

    rank: int
    epochs: int = 20
    decay: float = 1.0
    optimizer: str = "lbfgs"
    lr: float = 1.0
    init_scale: float | None = 0.01

    def fit(self, tasks: LinearTaskSet, seed: int = 0) -> tuple[MultiTaskModel, History]:
        return lm.fit_shared(
            tasks, self.rank, epochs=self.epochs, lr=self.lr, optimizer=self.optimizer,
            weight_decay=self.decay / tasks.n_samples, init_scale=self.init_scale, seed=seed,
        )


def _check_sizes(sizes: Sequence[int], what: str) -> list[int]:
    sizes = sorted({int(n) for n in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"{what} must be a non-empty list of positive integers, got {sizes}")
    return sizes


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")
    return seeds


def method_risks(family: LinearTaskFamily, tasks: LinearTaskSet, fit: SharedFit, seed: int = 0) -> dict[str, float]:
    """Mean excess risk over the tasks of each of the four estimators on one task set."""
    shared_model, _ = fit.fit(tasks, seed=seed)
    estimates = {
        "independent": lm.independent_estimate(tasks),
        "pooled": lm.pooled_estimate(tasks),
        "shared": lm.task_weights(shared_model, tasks.names),
        "oracle": lm.oracle_estimate(family, tasks),
    }
    return {name: float(tasks.excess_risk(est).mean()) for name, est in estimates.items()}


def _one_thread(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with lm.single_thread():
            return function(*args, **kwargs)

    return wrapper


@_one_thread
def sample_size_sweep(
    spec: FamilySpec,
    fit: SharedFit,
    *,
    n_tasks: int,
    sample_sizes: Sequence[int],
    seeds: Sequence[int],
    progress: bool = False,
) -> pd.DataFrame:
    """Rows ``seed, n, method, risk``: each seed draws a family and ``n_tasks`` tasks with max(n) examples;
    smaller n use the first n examples of the same tasks (nested data, so curves differ by data size only).
    ``progress``: a bar over the (seed, n) settings."""
    sizes, seeds = _check_sizes(sample_sizes, "sample_sizes"), _check_seeds(seeds)
    rows = []
    bar = tqdm(total=len(seeds) * len(sizes), desc="sample sizes", disable=not config.show_progress(progress))
    for seed in seeds:
        family = spec.family(seed)
        full = family.sample(n_tasks, sizes[-1], seed=10_000 + seed)
        for n in sizes:
            for method, risk in method_risks(family, full.subset(n), fit, seed).items():
                rows.append({"seed": seed, "n": n, "method": method, "risk": risk})
            bar.update()
    bar.close()
    return pd.DataFrame(rows)


@_one_thread
def structure_sweep(
    spec: FamilySpec,
    fit: SharedFit,
    *,
    n_tasks: int,
    n_samples: int,
    off_subspace: Sequence[float],
    seeds: Sequence[int],
    progress: bool = False,
) -> pd.DataFrame:
    """Rows ``seed, off_subspace, method, risk`` at ``n_samples`` examples per task, for each ρ in ``off_subspace``."""
    seeds = _check_seeds(seeds)
    rows = []
    bar = tqdm(total=len(seeds) * len(off_subspace), desc="structure", disable=not config.show_progress(progress))
    for rho in off_subspace:
        for seed in seeds:
            family = replace(spec, off_subspace=float(rho)).family(seed)
            tasks = family.sample(n_tasks, n_samples, seed=10_000 + seed)
            for method, risk in method_risks(family, tasks, fit, seed).items():
                rows.append({"seed": seed, "off_subspace": float(rho), "method": method, "risk": risk})
            bar.update()
    bar.close()
    return pd.DataFrame(rows)


@_one_thread
def transfer_sweep(
    spec: FamilySpec,
    fit: SharedFit,
    *,
    n_tasks: int,
    n_pretrain: int,
    new_sample_sizes: Sequence[int],
    n_new_tasks: int,
    seeds: Sequence[int],
    new_off_subspace: float | None = None,
    fine_tune_epochs: int = 0,
    fine_tune_lr: float = 0.01,
    progress: bool = False,
) -> pd.DataFrame:
    """Rows ``seed, n, method, risk`` for new tasks fitted on top of a θ pretrained on ``n_tasks`` tasks.

    Per seed: pretrain the shared model on ``n_tasks`` tasks with ``n_pretrain`` examples each, draw
    ``n_new_tasks`` new tasks (from the same family, or with ``new_off_subspace`` ρ: same basis and mean,
    deviations partly outside span(B)), and for each n fit each new task's head with θ frozen
    (:func:`~mtml_lib.mtl.transfer.transfer`, weight decay ``fit.decay / n``), and, when
    ``fine_tune_epochs > 0``, fine-tune θ per new task with Adam at ``fine_tune_lr`` for that many
    epochs after the frozen fit. ``scratch`` is per-task ridge regression on the new task alone,
    ``oracle`` the Bayes posterior mean under the new tasks' distribution.
    """
    sizes, seeds = _check_sizes(new_sample_sizes, "new_sample_sizes"), _check_seeds(seeds)
    rows = []
    bar = tqdm(total=len(seeds) * len(sizes), desc="transfer", disable=not config.show_progress(progress))
    for seed in seeds:
        family = spec.family(seed)
        pretrain = family.sample(n_tasks, n_pretrain, seed=10_000 + seed)
        model, _ = fit.fit(pretrain, seed=seed)
        new_spec = spec if new_off_subspace is None else replace(spec, off_subspace=float(new_off_subspace))
        new_family = new_spec.family(seed)  # same seed: same basis B and mean as the pretraining family
        new_full = new_family.sample(n_new_tasks, sizes[-1], seed=20_000 + seed, prefix="new")
        for n in sizes:
            new = new_full.subset(n)
            options = dict(optimizer=fit.optimizer, lr=fit.lr, weight_decay=fit.decay / n, progress=False)
            heads = [lm.linear_task(name, fit.rank) for name in new.names]
            frozen = transfer(model, heads, new.batch(), epochs=fit.epochs, **options)
            estimates = {
                "scratch": lm.independent_estimate(new),
                "frozen θ": lm.task_weights(frozen.model, new.names),
                "oracle": lm.oracle_estimate(new_family, new),
            }
            if fine_tune_epochs:
                tuned = []
                batch = new.batch()
                for name, head in zip(new.names, heads):
                    result = transfer(
                        model, head, {name: batch[name]}, epochs=fit.epochs, fine_tune_epochs=fine_tune_epochs,
                        fine_tune_optimizer="adam", fine_tune_lr=fine_tune_lr, **options,
                    )
                    tuned.append(lm.task_weights(result.model, [name]))
                estimates["fine-tuned θ"] = torch.cat(tuned)
            for method in TRANSFER_METHODS:
                if method in estimates:
                    risk = float(new.excess_risk(estimates[method]).mean())
                    rows.append({"seed": seed, "n": n, "method": method, "risk": risk})
            bar.update()
    bar.close()
    return pd.DataFrame(rows)


def summarise(rows: pd.DataFrame, by: str) -> pd.DataFrame:
    """Mean, standard error over seeds and number of seeds of ``risk`` per (``by``, method); wide by method."""
    if rows.empty:
        raise ValueError("summarise: no rows")
    grouped = rows.groupby([by, "method"], sort=False)["risk"]
    table = grouped.agg(mean="mean", sem="sem", seeds="count").reset_index()
    table["sem"] = table["sem"].fillna(0.0)
    return table


def to_record(rows: pd.DataFrame, by: str) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {str(value of by): {"mean": ..., "sem": ...}}}`` for :func:`mtml_lib.results.record`."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in summarise(rows, by).itertuples():
        key = f"{getattr(row, by):g}"
        out.setdefault(row.method, {})[key] = {"mean": round(float(row.mean), 5), "sem": round(float(row.sem), 5)}
    return out


def winners(rows: pd.DataFrame, by: str) -> dict[float, str]:
    """For each value of ``by``, the non-oracle method with the lowest mean risk."""
    table = summarise(rows[rows["method"] != "oracle"], by)
    best = table.loc[table.groupby(by)["mean"].idxmin()]
    return {value: method for value, method in zip(best[by], best["method"])}


def plot_curves(ax, rows: pd.DataFrame, by: str, methods: Sequence[str], *, logx: bool = True, logy: bool = True) -> None:
    """Mean risk per method versus ``by`` with ±1 standard-error bars over seeds, each method in its colour
    of :data:`mtml_lib.plotting.METHOD_COLOURS` (the oracle dashed black); log axes labelled with plain numbers."""
    from matplotlib.ticker import NullLocator

    from mtml_lib.plotting import method_style, plain_log_axis

    table = summarise(rows, by)
    for method in methods:
        part = table[table["method"] == method]
        if part.empty:
            continue
        ax.errorbar(part[by], part["mean"], yerr=part["sem"], marker="o", markersize=4, capsize=3, label=method,
                    **method_style(method))
    if logx:
        ax.set_xscale("log", base=2)
        values = sorted(set(table[by]))
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.xaxis.set_minor_locator(NullLocator())
    if logy:
        ax.set_yscale("log")
        plain_log_axis(ax, "y")
    ax.set_ylabel("excess test risk  |ŵ − w|²")
