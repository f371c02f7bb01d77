"""The multi-task trainer: minimise Σ_i w_i L_i(f(θ, θ_i, X_i), Y_i) over θ and every θ_i.

One class, :class:`MultiTaskTrainer`, and a one-call wrapper, :func:`train`. The trainer owns all the
autograd plumbing; the maths of how task losses are combined lives in a
:class:`~mtml_lib.mtl.weighting.Weighting` strategy (default: equal weights, Σ_i L_i):

- **loss-based** strategy (``uses_gradients = False``: EW, fixed weights, UW, DWA, RLW): the trainer
  back-propagates the scalar ``strategy.loss(losses, step)``; learnable strategy state (UW's
  log-variances, returned by ``strategy.parameters()``) gets its gradient from that same backward pass.
- **gradient-based** strategy (``uses_gradients = True``: GradNorm, PCGrad, MGDA, CAGrad): the trainer
  computes the gradient of each task loss with respect to the shared parameters θ, flattened into a
  matrix ``G`` of shape ``(T, P)`` (one ``autograd.grad`` per task), asks
  ``strategy.combine(G, losses.detach(), step)`` for one direction ``(P,)`` and writes it into the
  shared parameters' ``.grad``; each head θ_i receives the gradient of Σ_i L_i (which is the gradient of
  its own L_i, since no other task loss depends on it). A strategy that learns its own state here
  (GradNorm's weights) sets the ``.grad`` of its ``parameters()`` inside ``combine``.

Whatever ``.grad`` the model's and the strategy's parameters hold after that, one optimizer step
applies (strategy parameters in their own group, without weight decay).

Optimizers: ``"sgd"``, ``"adam"``, ``"adamw"`` for mini-batch training; ``"lbfgs"`` (torch's L-BFGS with a
strong-Wolfe line search) for small full-batch problems such as the linear toy, where it reaches the
minimum that Adam only approaches. With L-BFGS one "step" is up to ``lbfgs_iterations`` iterations,
it takes loss-based strategies only, and ``weight_decay`` λ is added to the objective as
(λ/2) Σ ‖θ‖² over the model's parameters (the same gradient λθ as Adam's coupled weight decay).

Batches come in two shapes, matching the two kinds of multi-task data:

- **per-task batch** ``{name: (X_i, Y_i)}``: every task has its own inputs (the linear toy of notebook 01);
- **shared-input batch** ``(X, {name: Y_i})``: one input, one target per task (the images of notebook 02;
  a ``DataLoader`` whose dataset returns ``(x, {"cls": y, "seg": mask})`` yields exactly this).

``data`` given to :meth:`MultiTaskTrainer.fit` is an iterable of batches, iterated once per epoch (a
``DataLoader``, a list of batches), or one batch alone, which means full-batch training (an epoch is then
one step). Learning-rate schedules step once per epoch.

Model selection: pass ``validate(model) -> {metric: value}`` (called every ``eval_every`` epochs in eval
mode without gradients) and ``monitor`` (the metric to select on, with ``mode`` ``"min"`` or ``"max"``);
the trainer keeps the best state by validation and, with ``restore_best``, loads it at the end. Select
on a validation split, never on the test split. :func:`evaluate` gives per-task mean losses and is a
ready-made ``validate``.

Data-parallel training (``distributed``, on an initialised ``torch.distributed`` group such as
``torchrun`` makes): every rank steps on its own part of each global batch (equal sizes on every rank,
as ``DistributedSampler(drop_last=True)`` or :func:`mtml_lib.distributed.shard` give), and the ranks
average what a strategy needs *before* it acts: a gradient-based strategy combines the rank-averaged
per-task matrix ``G`` with the rank-averaged losses, so every rank computes the direction one process
computes on the global batch (averaging the combined directions instead would be wrong: PCGrad, MGDA
and CAGrad are not linear in ``G``); a loss-based strategy weighs the rank-averaged loss values and the
gradients are averaged after the backward pass (the ordinary all-reduce). BatchNorm statistics are
local to each rank by default; ``batchnorm="sync"`` replaces the model's ``nn.BatchNorm*`` layers by
:class:`mtml_lib.distributed.SyncedBatchNorm`, which normalises with the statistics of the global batch
(on CPUs too), so the trained network is the one-process network. With local statistics the running
averages that evaluation uses are averaged over the ranks after every step, so that every rank holds the
same model (and validation selects the same epoch everywhere).

A NaN or infinite task loss stops training with :class:`NonFiniteLossError`, which names the task, the
step and the epoch.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mtml_lib import distributed as _dist
from mtml_lib.models.multitask import MultiTaskModel
from mtml_lib.mtl.weighting.base import EqualWeights, Weighting

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw", "lbfgs")
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "step")
MODES: tuple[str, ...] = ("min", "max")

Validate = Callable[[MultiTaskModel], dict[str, float]]


class NonFiniteLossError(FloatingPointError):
    """A task loss (or the combined objective) became NaN or infinite during training."""


@dataclass
class History:
    """What one :meth:`MultiTaskTrainer.fit` call did, epoch by epoch.

    ``task_losses[name][e]``: mean training loss L_name over the batches of epoch ``e``.
    ``objective[e]``: mean of the scalar that was minimised (Σ_i w_i L_i for loss-based strategies, the
    plain Σ_i L_i for gradient-based ones). ``weights[e]``: the strategy's ``last_weights`` at the end of
    epoch ``e`` (None when it has none). ``lr[e]``: learning rate used in epoch ``e``.
    ``step_losses``: per optimisation step, the list (L_1, ..., L_T).
    ``val``: one dict per validation, with its ``"epoch"``. ``best_epoch`` / ``best_score``: the
    selected epoch (0-based) and its monitored value, None without validation.
    """

    tasks: list[str]
    task_losses: dict[str, list[float]] = field(default_factory=dict)
    objective: list[float] = field(default_factory=list)
    weights: list[list[float] | None] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    step_losses: list[list[float]] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    steps: int = 0
    wall_time_s: float = 0.0

    def __post_init__(self):
        for name in self.tasks:
            self.task_losses.setdefault(name, [])

    @property
    def epochs(self) -> int:
        return len(self.objective)

    def final_losses(self) -> dict[str, float]:
        """Each task's training loss in the last epoch."""
        return {name: values[-1] for name, values in self.task_losses.items() if values}

    def to_frame(self):
        """One row per epoch: ``epoch``, ``objective``, ``lr``, ``loss/<task>``, ``weight/<task>``."""
        import pandas as pd

        rows = []
        for e in range(self.epochs):
            row: dict[str, Any] = {"epoch": e, "objective": self.objective[e], "lr": self.lr[e]}
            for name in self.tasks:
                row[f"loss/{name}"] = self.task_losses[name][e]
            if self.weights[e] is not None:
                for name, w in zip(self.tasks, self.weights[e]):
                    row[f"weight/{name}"] = w
            rows.append(row)
        return pd.DataFrame(rows)


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    return value


def _is_shared_batch(batch: Any) -> bool:
    return (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and isinstance(batch[0], torch.Tensor)
        and isinstance(batch[1], dict)
    )


def _is_single_batch(data: Any) -> bool:
    return isinstance(data, dict) or (isinstance(data, tuple) and _is_shared_batch(data))


def batch_losses(model: MultiTaskModel, batch: Any, tasks: Sequence[str]) -> torch.Tensor:
    """Task losses ``(T,)`` of ``batch`` in the order of ``tasks`` (with the autograd graph).

    ``batch`` is ``{name: (X_i, Y_i)}`` or ``(X, {name: Y_i})``; its tasks must be exactly ``tasks``.
    """
    if _is_shared_batch(batch):
        x, targets = batch
        given = set(targets)
    elif isinstance(batch, dict):
        for name, pair in batch.items():
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"per-task batch: task {name!r} must map to a pair (X, Y), got {type(pair).__name__}")
        given = set(batch)
    else:
        raise TypeError(
            "a batch must be {task: (X_i, Y_i)} (per-task inputs) or (X, {task: Y_i}) (one shared input), "
            f"got {type(batch).__name__}"
        )
    unknown = sorted(given - set(model.task_names))
    if unknown:
        raise KeyError(f"batch has unknown task(s) {unknown}; valid tasks: {model.task_names}")
    if given != set(tasks):
        raise KeyError(f"batch has tasks {sorted(given)} but the trainer trains tasks {list(tasks)}")
    if _is_shared_batch(batch):
        predictions = model(x, task=list(tasks))
        targets = {name: targets[name] for name in tasks}
    else:
        predictions = model.forward_tasks({name: batch[name][0] for name in tasks})
        targets = {name: batch[name][1] for name in tasks}
    return model.task_losses(predictions, targets)


@torch.no_grad()
def evaluate(model: MultiTaskModel, data: Any, tasks: Sequence[str] | None = None) -> dict[str, float]:
    """Mean loss per task over ``data`` (batches as for the trainer), plus their mean under ``"mean"``.

    Runs in eval mode without gradients and restores the model's previous mode. Batches are averaged
    with equal weight (exact for full-batch data and for equal-sized batches).
    """
    tasks = list(model.task_names if tasks is None else tasks)
    batches = [data] if _is_single_batch(data) else data
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        total, count = None, 0
        for batch in batches:
            losses = batch_losses(model, _to(batch, device), tasks).double()
            total = losses if total is None else total + losses
            count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: data has no batches")
    means = (total / count).tolist()
    out = dict(zip(tasks, means))
    out["mean"] = sum(means) / len(means)
    return out


class MultiTaskTrainer:
    """Minimises a weighting of the task losses over the shared θ and the heads θ_i (see module docstring).

    Parameters
    ----------
    model: the :class:`MultiTaskModel`; trainable = shared parameters with ``requires_grad`` plus the
        heads of ``tasks``.

    weighting: a :class:`Weighting` for ``len(tasks)`` tasks (default :class:`EqualWeights`).

    tasks: the tasks to train, in the order of the loss vector (default: all of the model's tasks).

    optimizer: ``"sgd"`` (with ``momentum``), ``"adam"``, ``"adamw"`` or ``"lbfgs"`` (full batch,
        loss-based strategies; ``lbfgs_iterations`` iterations per step; use ``lr=1``); ``lr``,
        ``weight_decay``.

    schedule: ``"constant"``, ``"cosine"`` (to 0 over the epochs of a fit) or ``"step"`` (multiply by
        ``gamma`` every ``step_size`` epochs; default step size: a third of the epochs).

    grad_clip: clip the global gradient norm of the model's parameters to this value (None: off).

    device: move the model there (default: where its parameters are).

    progress: show a ``tqdm.auto`` bar over epochs with the latest task losses (rank 0 only).

    distributed: data-parallel over the ranks of the ``torch.distributed`` group (None: whenever one of
        more than one rank is initialised); rank 0's parameters are broadcast at construction.
        ``batchnorm``: ``"local"`` (each rank its own batch statistics) or ``"sync"`` (the global batch's;
        the model's BatchNorm layers are replaced in place).
    """

    def __init__(
        self,
        model: MultiTaskModel,
        weighting: Weighting | None = None,
        *,
        tasks: Sequence[str] | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        schedule: str = "constant",
        step_size: int | None = None,
        gamma: float = 0.1,
        grad_clip: float | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        desc: str = "train",
        lbfgs_iterations: int = 20,
        distributed: bool | None = None,
        batchnorm: str = "local",
    ):
        if not isinstance(model, MultiTaskModel):
            raise TypeError(f"MultiTaskTrainer needs a MultiTaskModel, got {type(model).__name__}")
        self.model = model
        self.tasks = list(model.task_names if tasks is None else tasks)
        if not self.tasks:
            raise ValueError("MultiTaskTrainer needs at least one task to train (got T = 0)")
        for name in self.tasks:
            model.task(name)
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be unique, got {self.tasks}")
        self.weighting = EqualWeights(len(self.tasks)) if weighting is None else weighting
        if not isinstance(self.weighting, Weighting):
            raise TypeError(f"weighting must be a Weighting, got {type(self.weighting).__name__}")
        if self.weighting.n_tasks != len(self.tasks):
            raise ValueError(
                f"weighting {self.weighting.name!r} is for {self.weighting.n_tasks} tasks but the trainer trains "
                f"{len(self.tasks)}: {self.tasks}"
            )
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid optimizers: {list(OPTIMIZERS)}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; valid schedules: {list(SCHEDULES)}")
        if optimizer == "lbfgs" and self.weighting.uses_gradients:
            raise ValueError(
                f"optimizer 'lbfgs' needs a loss-based strategy, but {self.weighting.name!r} is gradient-based; "
                f"use one of {[o for o in OPTIMIZERS if o != 'lbfgs']}"
            )
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {grad_clip!r}")
        if grad_clip is not None and optimizer == "lbfgs":
            raise ValueError("grad_clip does not combine with optimizer 'lbfgs' (it would break the line search)")
        self.parallel = _dist.active(distributed)
        if batchnorm not in ("local", "sync"):
            raise ValueError(f"unknown batchnorm {batchnorm!r}; valid choices: ['local', 'sync']")
        if self.parallel and optimizer == "lbfgs":
            raise ValueError("optimizer 'lbfgs' does not run data-parallel; use 'sgd', 'adam' or 'adamw'")
        if self.parallel and batchnorm == "sync":
            _dist.sync_batchnorm(model)
        if device is not None:
            model.to(device)
        first = next(iter(model.parameters()), None)
        if first is None:
            raise ValueError("the model has no parameters to train")
        self.device = first.device

        self.shared_params = model.shared_parameters()
        self.head_params = [p for name in self.tasks for p in model.head_parameters(name) if p.requires_grad]
        self.model_params = self.shared_params + self.head_params
        if not self.model_params:
            raise ValueError("nothing to train: the shared module is frozen and the heads have no trainable parameters")
        self.strategy_params = list(self.weighting.parameters())
        if self.parallel:
            _dist.broadcast_module(model)
        for p in self.strategy_params:
            if p.device != self.device:
                raise ValueError(f"weighting parameters are on {p.device} but the model is on {self.device}")
        groups = [{"params": self.model_params, "weight_decay": weight_decay}]
        if self.strategy_params:
            groups.append({"params": self.strategy_params, "weight_decay": 0.0})
        if optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum)
        elif optimizer == "adam":
            self.optimizer = torch.optim.Adam(groups, lr=lr)
        elif optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=lr)
        else:
            # L-BFGS takes one parameter group: weight decay becomes an explicit term of the objective
            self.optimizer = torch.optim.LBFGS(
                self.model_params + self.strategy_params, lr=lr, max_iter=lbfgs_iterations, history_size=20,
                line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-14,
            )
        self.optimizer_name = optimizer
        self.weight_decay = weight_decay
        self.schedule, self.step_size, self.gamma = schedule, step_size, gamma
        self.grad_clip = grad_clip
        self.progress, self.desc = progress and _dist.is_main(), desc
        self.global_step = 0
        self.epoch = 0
        self._last_objective = math.nan

    # ----------------------------------------------------------------------------------- one step
    def _check_finite(self, losses: torch.Tensor) -> None:
        finite = torch.isfinite(losses.detach())
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0])
            raise NonFiniteLossError(
                f"loss of task {self.tasks[i]!r} is {losses[i].item()} at step {self.global_step} "
                f"(epoch {self.epoch}); all task losses: {dict(zip(self.tasks, losses.detach().tolist()))}. "
                "Lower the learning rate, clip gradients (grad_clip) or check the data of that task."
            )

    def _backward_gradients(self, losses: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Gradient-based strategies: per-task gradients of θ -> combine -> θ.grad; each head gets ∇ L_i.

        One backward pass per task, over θ and that task's own head together: a head appears in its own
        task's loss only, so its gradient of Σ_i L_i is the gradient of L_i, taken in the same pass.
        ``values``: the task losses the strategy sees (data-parallel: averaged over the ranks, as are the
        gradients, before ``combine``).
        """
        shared = self.shared_params
        rows = []
        last = len(self.tasks) - 1
        for i, name in enumerate(self.tasks):
            head = [p for p in self.model.head_parameters(name) if p.requires_grad]
            if not shared and not head:
                continue
            grads = torch.autograd.grad(losses[i], shared + head, retain_graph=i < last, allow_unused=True)
            for p, g in zip(head, grads[len(shared):]):
                p.grad = torch.zeros_like(p) if g is None else g
            if shared:
                rows.append(torch.cat([
                    (torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads[:len(shared)], shared)
                ]))
        if self.parallel:
            heads = [p.grad for p in self.head_params if p.grad is not None]
            matrix = torch.stack(rows) if shared else None
            _dist.average_(([matrix] if shared else []) + heads, 1 / _dist.world_info()[1])
        if shared:
            matrix = matrix if self.parallel else torch.stack(rows)
            direction = self.weighting.combine(matrix, values, self.global_step)
            if direction.shape != (matrix.shape[1],):
                raise ValueError(
                    f"{self.weighting.name}.combine returned shape {tuple(direction.shape)}, expected ({matrix.shape[1]},)"
                )
            if not bool(torch.isfinite(direction).all()):
                raise NonFiniteLossError(
                    f"{self.weighting.name}.combine returned a non-finite direction at step {self.global_step} "
                    f"(epoch {self.epoch})"
                )
            offset = 0
            for p in shared:
                n = p.numel()
                p.grad = direction[offset:offset + n].view_as(p).detach().clone()
                offset += n
        return values.sum()

    def _loss_objective(self, losses: torch.Tensor) -> torch.Tensor:
        objective = self.weighting.loss(losses, self.global_step)
        if objective.dim() != 0:
            raise ValueError(f"{self.weighting.name}.loss returned shape {tuple(objective.shape)}, expected a scalar")
        if not bool(torch.isfinite(objective.detach())):
            raise NonFiniteLossError(
                f"the {self.weighting.name} objective is {objective.item()} at step {self.global_step} "
                f"(epoch {self.epoch}) although every task loss is finite: "
                f"{dict(zip(self.tasks, losses.detach().tolist()))}"
            )
        return objective

    def _lbfgs_step(self, batch: Any) -> torch.Tensor:
        first: dict[str, torch.Tensor] = {}

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            losses = batch_losses(self.model, batch, self.tasks)
            self._check_finite(losses)
            objective = self._loss_objective(losses)
            total = objective
            if self.weight_decay:
                total = total + 0.5 * self.weight_decay * sum((p ** 2).sum() for p in self.model_params)
            total.backward()
            if not first:
                first["losses"], first["objective"] = losses.detach(), objective.detach()
            return total.detach()

        self.optimizer.step(closure)
        self._last_objective = float(first["objective"])
        return first["losses"]

    def step(self, batch: Any) -> torch.Tensor:
        """One optimisation step on ``batch``; returns the detached task losses ``(T,)`` before the step."""
        self.model.train()
        batch = _to(batch, self.device)
        if self.optimizer_name == "lbfgs":
            losses = self._lbfgs_step(batch)
            self.global_step += 1
            return losses
        self.optimizer.zero_grad(set_to_none=True)
        losses = batch_losses(self.model, batch, self.tasks)
        self._check_finite(losses)
        values = losses.detach()
        if self.parallel:
            values = values.clone()
            _dist.average_([values], 1 / _dist.world_info()[1])
        if self.weighting.uses_gradients:
            objective = self._backward_gradients(losses, values)
        elif self.parallel:
            # the strategy weighs the global loss values; each rank's gradient is of its own losses
            objective = self._loss_objective(losses + (values - losses).detach())
            objective.backward()
            objective = objective.detach()
            params = [p for p in self.model_params + self.strategy_params if p.requires_grad]
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            _dist.average_([p.grad for p in params], 1 / _dist.world_info()[1])
        else:
            objective = self._loss_objective(losses)
            objective.backward()
            objective = objective.detach()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model_params, self.grad_clip)
        self.optimizer.step()
        if self.parallel:  # running statistics: the same on every rank, so validation and selection agree
            _dist.average_([b for b in self.model.buffers() if b.is_floating_point()], 1 / _dist.world_info()[1])
        self.global_step += 1
        self._last_objective = float(objective)
        return values

    # --------------------------------------------------------------------------------------- fit
    def _scheduler(self, epochs: int):
        if self.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(epochs, 1))
        if self.schedule == "step":
            size = self.step_size or max(1, epochs // 3)
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=size, gamma=self.gamma)
        return None

    def fit(
        self,
        data: Any,
        epochs: int,
        *,
        validate: Validate | None = None,
        monitor: str | None = None,
        mode: str = "min",
        eval_every: int = 1,
        restore_best: bool = True,
    ) -> History:
        """Train for ``epochs`` passes over ``data``; returns the :class:`History`.

        ``validate(model) -> {metric: value}`` runs after every ``eval_every``-th epoch and after the last;
        ``monitor`` names the metric to select on (may be omitted when ``validate`` returns one metric),
        ``mode`` says whether lower (``"min"``) or higher (``"max"``) is better. With ``restore_best`` the
        model ends in its best validated state. The learning-rate schedule spans these ``epochs``.
        """
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes: {list(MODES)}")
        if not isinstance(eval_every, int) or eval_every < 1:
            raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
        if validate is None and monitor is not None:
            raise ValueError(f"monitor={monitor!r} was given without a validate callback")
        batches = [data] if _is_single_batch(data) else data
        scheduler = self._scheduler(epochs)
        history = History(tasks=list(self.tasks))
        best_state = None
        t0 = time.perf_counter()
        bar = tqdm(range(epochs), desc=self.desc, disable=not self.progress, leave=True)
        for e in bar:
            self.epoch = e
            lr = self.optimizer.param_groups[0]["lr"]
            total, objective, count = None, 0.0, 0
            for batch in batches:
                losses = self.step(batch)
                history.step_losses.append(losses.tolist())
                total = losses.double() if total is None else total + losses.double()
                objective += self._last_objective
                count += 1
            if count == 0:
                raise ValueError("fit: data has no batches")
            means = (total / count).tolist()
            for name, value in zip(self.tasks, means):
                history.task_losses[name].append(value)
            history.objective.append(objective / count)
            history.lr.append(lr)
            w = self.weighting.last_weights
            history.weights.append(None if w is None else w.detach().cpu().double().tolist())
            if scheduler is not None:
                scheduler.step()
            postfix = {name: f"{value:.3g}" for name, value in zip(self.tasks[:4], means)}
            if validate is not None and ((e + 1) % eval_every == 0 or e == epochs - 1):
                metrics = self._validate(validate)
                key = self._monitor_key(metrics, monitor)
                score = float(metrics[key])
                history.val.append({"epoch": e, **metrics})
                better = history.best_score is None or (score < history.best_score if mode == "min" else score > history.best_score)
                if better and math.isfinite(score):
                    history.best_epoch, history.best_score = e, score
                    best_state = copy.deepcopy(self.model.state_dict())
                postfix[f"val {key}"] = f"{score:.3g}"
            bar.set_postfix(postfix, refresh=False)
        bar.close()
        history.steps = self.global_step
        if restore_best and best_state is not None:
            self.model.load_state_dict(best_state)
        history.wall_time_s = time.perf_counter() - t0
        return history

    def _validate(self, validate: Validate) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = validate(self.model)
        finally:
            self.model.train(was_training)
        if not isinstance(metrics, dict) or not metrics:
            raise TypeError(f"validate must return a non-empty dict of metrics, got {metrics!r}")
        return {k: float(v) for k, v in metrics.items()}

    @staticmethod
    def _monitor_key(metrics: dict[str, float], monitor: str | None) -> str:
        if monitor is None:
            if len(metrics) != 1:
                raise ValueError(f"validate returned several metrics {sorted(metrics)}; say which one to select on with monitor=")
            return next(iter(metrics))
        if monitor not in metrics:
            raise KeyError(f"monitor {monitor!r} is not among the validation metrics {sorted(metrics)}")
        return monitor


def train(
    model: MultiTaskModel,
    data: Any,
    epochs: int,
    weighting: Weighting | None = None,
    *,
    validate: Validate | None = None,
    monitor: str | None = None,
    mode: str = "min",
    eval_every: int = 1,
    restore_best: bool = True,
    **options: Any,
) -> History:
    """Build a :class:`MultiTaskTrainer` with ``options`` (optimizer, lr, schedule, ...) and fit ``data``."""
    trainer = MultiTaskTrainer(model, weighting, **options)
    return trainer.fit(
        data, epochs, validate=validate, monitor=monitor, mode=mode, eval_every=eval_every, restore_best=restore_best
    )


__all__ = [
    "History",
    "MultiTaskTrainer",
    "NonFiniteLossError",
    "batch_losses",
    "evaluate",
    "train",
]
