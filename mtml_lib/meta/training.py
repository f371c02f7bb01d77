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
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtml_lib import distributed as _dist
from mtml_lib.meta.core import MetaLearner, Loss, _check_int
from mtml_lib.meta.tasks import TaskBatch

Sampler = Callable[[int], TaskBatch]


@dataclass
class History:
    """Mean query loss of each logged window of iterations, and the wall time of the loop.

    With a validation hook, ``val_score`` holds its score at each logged iteration (the same
    ``iterations``), and ``best_iteration``/``best_score`` the checkpoint that was kept. ``elapsed``: the
    loop's wall time (validation included) at each logged iteration, for curves against training time.
    """

    iterations: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    val_score: list[float] = field(default_factory=list)
    best_iteration: int = 0
    best_score: float = -math.inf
    elapsed: list[float] = field(default_factory=list)  # wall seconds of the loop at each logged iteration

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


def _resume(checkpoint: Path, learner: nn.Module, optimizer, scheduler, sample, history: History,
            settings: dict) -> tuple[int, dict | None]:
    """Load a :func:`meta_train` checkpoint into the loop's objects; return its iteration and best state."""
    from mtml_lib.checkpoint import CheckpointError, load_checkpoint

    # on the CPU first: random states must be CPU tensors; load_state_dict moves the rest to the parameters
    payload = load_checkpoint(checkpoint, learner, map_location="cpu")
    state = payload["extra"]
    if state.get("kind") != "meta_train":
        raise CheckpointError(f"checkpoint {checkpoint} was not written by meta_train; delete it or pass another path")
    differ = {k: (state["settings"].get(k), v) for k, v in settings.items() if state["settings"].get(k) != v}
    if differ:
        listed = ", ".join("the learner's settings, seed or data (key)" if k == "key" else
                           f"{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in differ.items())
        raise CheckpointError(f"checkpoint {checkpoint} belongs to another training run ({listed}); "
                              "delete it to start afresh or pass another path")
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    sample.load_state_dict(state["sampler"])
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    for name in ("iterations", "loss", "val_score", "best_iteration", "best_score", "seconds"):
        setattr(history, name, state["history"][name])
    history.elapsed = list(state["history"].get("elapsed", []))
    return int(state["iteration"]), state["best_state"]


def _save(checkpoint: Path, learner, optimizer, scheduler, sample, history: History, settings: dict, it: int,
          best_state: dict | None) -> None:
    from mtml_lib.checkpoint import save_checkpoint

    save_checkpoint(checkpoint, learner, extra={
        "kind": "meta_train",
        "settings": settings,
        "iteration": it,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "sampler": sample.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "best_state": {k: v.detach().cpu() for k, v in best_state.items()} if best_state is not None else None,
        "history": {"iterations": list(history.iterations), "loss": list(history.loss),
                    "val_score": list(history.val_score), "best_iteration": history.best_iteration,
                    "best_score": history.best_score, "seconds": history.seconds,
                    "elapsed": list(history.elapsed)},
    })


def meta_train(learner: nn.Module, sample: Sampler, n_iterations: int, meta_batch: int = 25,
               meta_lr: float = 1e-3, log_every: int = 100, cosine: bool = False,
               validate: Callable[[nn.Module], float] | None = None, verbose: bool = False,
               checkpoint: str | Path | None = None, key: str = "",
               after_step: Callable[[nn.Module], None] | None = None, halve_every: int | None = None,
               restore_best: bool = True, distributed: bool | None = None) -> History:
    """Meta-train ``learner`` with Adam(``meta_lr``) on ``n_iterations`` fresh meta-batches of ``meta_batch``
    tasks. Returns the :class:`History` of the mean query loss, averaged over windows of ``log_every``.

    ``learner`` is anything with ``meta_step(optimizer, batch)`` (a :class:`MetaLearner` or a ProtoNet).
    ``cosine``: decay the step size to zero on a cosine over the run; ``halve_every``: halve it every so
    many iterations instead (Snell et al.'s schedule). ``validate``: a function ``learner -> score``
    (higher is better, for example accuracy on fixed validation episodes) called at every log; the
    parameters of the best score (the first, on ties) are loaded back at the end, so the test set never
    chooses the model (``restore_best=False`` keeps the last iterate, as protocols without model selection
    do, and the scores serve as curves only). ``verbose`` prints a line at every log.

    ``checkpoint``: a file written at every log (learner, optimizer, schedule, the sampler's state, the
    best parameters and the history); the sampler must then have ``state_dict``/``load_state_dict`` (as
    :class:`mtml_lib.data.episodes.EpisodeSampler` has). When the file exists the run resumes from it and
    ends as the uninterrupted run would have (a finished run returns at once). ``key``: a string that
    identifies everything else about the run (the learner's settings, the seed, the data); a checkpoint
    whose loop settings or ``key`` differ raises :class:`mtml_lib.checkpoint.CheckpointError`.

    ``after_step``: a function ``learner -> None`` called after every meta-update (and once before the
    first), for rules that act on the parameters outside the gradient step, such as the zeroing trick of
    :func:`mtml_lib.fewshot.zero_head`.

    ``History.seconds`` is the wall time of the loop, validation and checkpoint writes included; a
    resumed run adds its own time to the time recorded up to the checkpoint.

    ``distributed``: data-parallel over the meta-batch on the initialised ``torch.distributed`` process
    group (``None``, the default: whenever one of more than one rank is initialised, as under
    ``torchrun``). Every rank draws the same global meta-batch of ``meta_batch`` tasks from its own copy
    of the sampler (build it with the same seed on every rank), adapts its contiguous share
    (:func:`mtml_lib.distributed.shard`), and the meta-gradients are averaged over all tasks of the
    global meta-batch before one identical optimiser step on every rank (rank 0's initial parameters are
    broadcast first). A run on W ranks therefore follows the one-process run with the same ``meta_batch``
    to float tolerance. Only rank 0 writes the checkpoint and prints; the checkpoint holds nothing
    per-rank, so a run resumes from it on any number of ranks. ``validate`` runs on every rank (the
    parameters are the same, so are the scores). The learner needs a meta-objective that is a mean over
    tasks (every learner of :mod:`mtml_lib.meta` has one). Running statistics (BatchNorm buffers) are
    updated by each rank's own tasks and then averaged over the ranks after every step, which keeps the
    ranks identical but is not the one-process sequence of updates; models without them (the default
    ``norm="plain"`` Conv4) follow the one-process run.
    """
    _check_training(n_iterations, meta_batch, meta_lr, log_every)
    optimizer = torch.optim.Adam(learner.parameters(), lr=meta_lr)
    if cosine and halve_every:
        raise ValueError("choose one schedule: cosine or halve_every, not both")
    if halve_every is not None and (isinstance(halve_every, bool) or not isinstance(halve_every, int) or halve_every < 1):
        raise ValueError(f"halve_every must be None or an integer >= 1, got {halve_every!r}")
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, n_iterations) if cosine else
                 torch.optim.lr_scheduler.StepLR(optimizer, halve_every, gamma=0.5) if halve_every else None)
    history, window = History(), []
    best_state = None
    done = 0
    settings = {"n_iterations": n_iterations, "meta_batch": meta_batch, "meta_lr": float(meta_lr),
                "log_every": log_every, "cosine": bool(cosine), "validate": validate is not None, "key": str(key),
                "halve_every": halve_every, "restore_best": bool(restore_best)}
    if checkpoint is not None:
        if not (hasattr(sample, "state_dict") and hasattr(sample, "load_state_dict")):
            raise TypeError(f"a resumable run needs a sampler with state_dict() and load_state_dict(), got "
                            f"{type(sample).__name__}; use an EpisodeSampler or pass checkpoint=None")
        checkpoint = Path(checkpoint)
        if checkpoint.exists():
            done, best_state = _resume(checkpoint, learner, optimizer, scheduler, sample, history, settings)
            if verbose and _dist.is_main():
                print(f"resumed from {checkpoint} at iteration {done}/{n_iterations}", flush=True)
    parallel = _dist.active(distributed)
    if parallel:
        rank, world = _dist.world_info()
        part = _dist.shard(meta_batch, rank, world)
        share = (part.stop - part.start) / meta_batch
        # no rank may look for the checkpoint after rank 0 has written a new one
        _dist.barrier()
        _dist.broadcast_module(learner)
        step_with = _dist.AveragingOptimizer(optimizer, learner.parameters(), share)
        running = [b for b in learner.buffers() if b.is_floating_point()]
    seconds_before = history.seconds
    start = time.perf_counter()
    if after_step is not None and done == 0:
        with torch.no_grad():
            after_step(learner)
    for it in range(done + 1, n_iterations + 1):
        if parallel:
            loss = learner.meta_step(step_with, sample(meta_batch).select(part)).loss.detach().clone()
            _dist.average_([loss], share)
            _dist.average_(running, 1 / world)
            window.append(loss)
        else:
            window.append(learner.meta_step(optimizer, sample(meta_batch)).loss)
        if after_step is not None:
            with torch.no_grad():
                after_step(learner)
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
        history.seconds = seconds_before + time.perf_counter() - start
        history.elapsed.append(history.seconds)
        if checkpoint is not None and _dist.is_main():
            _save(checkpoint, learner, optimizer, scheduler, sample, history, settings, it, best_state)
        if verbose and _dist.is_main():
            print(f"{line} ({history.seconds:.0f} s)", flush=True)
    if best_state is not None and restore_best:
        learner.load_state_dict(best_state)
    history.seconds = seconds_before + time.perf_counter() - start
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
