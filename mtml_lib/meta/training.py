"""Meta-training and evaluation loops shared by the notebooks, and the joint-training baseline.

A *task sampler* is any callable ``sample(n_tasks) -> TaskBatch`` (for example
``SinusoidTasks(...).sampler(k_shot, generator)``); the loops draw a fresh meta-batch every iteration.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mtml_lib.meta.core import MetaLearner, Loss, _check_int
from mtml_lib.meta.tasks import TaskBatch

Sampler = Callable[[int], TaskBatch]


@dataclass
class History:
    """Mean query loss of each logged window of iterations, and the wall time of the loop.

    With a validation hook, ``val_score`` holds its score at each logged iteration (the same
    ``iterations``), and ``best_iteration``/``best_score`` the checkpoint that was kept.
    """

    iterations: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    val_score: list[float] = field(default_factory=list)
    best_iteration: int = 0
    best_score: float = -math.inf

    @property
    def ms_per_iteration(self) -> float:
        return 1e3 * self.seconds / max(self.iterations[-1], 1) if self.iterations else math.nan


def _check_training(n_iterations: int, meta_batch: int, lr: float, log_every: int) -> None:
    _check_int(n_iterations, "n_iterations", 1)
    _check_int(meta_batch, "meta_batch", 1)
    _check_int(log_every, "log_every", 1)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"learning rate must be a finite number > 0, got {lr!r}")


def _log_window(history: History, window: list[torch.Tensor], it: int, n_iterations: int, log_every: int) -> list:
    """Every ``log_every`` iterations (and at the last), log the window's mean loss and start a new window."""
    if it % log_every == 0 or it == n_iterations:
        history.iterations.append(it)
        history.loss.append(float(torch.stack(window).mean()))
        return []
    return window


def meta_train(learner: nn.Module, sample: Sampler, n_iterations: int, meta_batch: int = 25,
               meta_lr: float = 1e-3, log_every: int = 100, cosine: bool = False,
               validate: Callable[[nn.Module], float] | None = None, verbose: bool = False) -> History:
    """Meta-train ``learner`` with Adam(``meta_lr``) on ``n_iterations`` fresh meta-batches of ``meta_batch``
    tasks. Returns the :class:`History` of the mean query loss, averaged over windows of ``log_every``.

    ``learner`` is anything with ``meta_step(optimizer, batch)`` (a :class:`MetaLearner` or a ProtoNet).
    ``cosine``: decay the step size to zero on a cosine over the run. ``validate``: a function
    ``learner -> score`` (higher is better, for example accuracy on fixed validation episodes) called at
    every log; the parameters of the best score (the first, on ties) are loaded back at the end, so the
    test set never chooses the model. ``verbose`` prints a line at every log.
    """
    _check_training(n_iterations, meta_batch, meta_lr, log_every)
    optimizer = torch.optim.Adam(learner.parameters(), lr=meta_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, n_iterations) if cosine else None
    history, window = History(), []
    best_state = None
    start = time.perf_counter()
    for it in range(1, n_iterations + 1):
        window.append(learner.meta_step(optimizer, sample(meta_batch)).loss)
        if scheduler is not None:
            scheduler.step()
        logged = len(history.iterations)
        window = _log_window(history, window, it, n_iterations, log_every)
        if len(history.iterations) == logged:
            continue
        line = f"iteration {it}/{n_iterations} query loss {history.loss[-1]:.4f}"
        if validate is not None:
            score = float(validate(learner))
            if not math.isfinite(score):
                raise FloatingPointError(f"validation score {score} at iteration {it}; the learner diverged")
            history.val_score.append(score)
            if score > history.best_score:
                history.best_score, history.best_iteration = score, it
                best_state = copy.deepcopy(learner.state_dict())
            line += f" validation {score:.4f}"
        if verbose:
            print(f"{line} ({time.perf_counter() - start:.0f} s)", flush=True)
    if best_state is not None:
        learner.load_state_dict(best_state)
    history.seconds = time.perf_counter() - start
    return history


def pretrain(model: nn.Module, loss_fn: Loss, sample: Sampler, n_iterations: int, meta_batch: int = 25,
             lr: float = 1e-3, log_every: int = 100) -> History:
    """The "pretrained" baseline of Finn et al.: one model fitted to all tasks at once (joint training).

    Every iteration pools the support and query points of ``meta_batch`` fresh tasks and takes one
    Adam(``lr``) step on ``loss_fn`` of the pooled set. The model learns the average task; at test time
    it is fine-tuned on a new task's support set like any other model (``MetaLearner(model, ...).evaluate``).
    """
    _check_training(n_iterations, meta_batch, lr, log_every)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history, window = History(), []
    start = time.perf_counter()
    for it in range(1, n_iterations + 1):
        batch = sample(meta_batch)
        x = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1).flatten(0, 1)
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite pretraining loss {loss.item()} at iteration {it}; check lr={lr}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        window.append(loss.detach())
        window = _log_window(history, window, it, n_iterations, log_every)
    history.seconds = time.perf_counter() - start
    return history


def mean_ci95(values: torch.Tensor | np.ndarray, dim: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the 95% confidence interval of the mean, ``1.96 · s / sqrt(n)``, along ``dim``.

    The normal approximation is what Finn et al. report over 600 test tasks; ``n`` must be >= 2.
    """
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, dtype=np.float64)
    n = arr.shape[dim]
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 values along dim {dim}, got {n}")
    return arr.mean(axis=dim), 1.96 * arr.std(axis=dim, ddof=1) / math.sqrt(n)
