"""The multi-task model: a shared module θ and one head θ_i per task.

    min over θ, θ_1..θ_T of  Σ_i w_i L_i(f(θ, θ_i, X_i), Y_i)

``f(θ, θ_i, x) = head_i(shared(x))``. The same class serves the linear toy of notebook 01 (shared = a
linear map to a low-dimensional code, heads = linear read-outs) and the CNN of notebook 02 (shared =
encoder, heads = classifier and segmentation decoder).

Two ways to feed it, matching the two kinds of multi-task data:

- one input batch for all tasks (an image with a class label *and* a mask): ``model(x)`` or
  ``model(x, task=[...])`` runs the shared module once and every requested head on its output;
- one input batch per task (the linear toy, where task i has its own X_i): ``model.forward_tasks({name: X_i})``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Metric = Callable[[torch.Tensor, torch.Tensor], Any]


def mse_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error that refuses mismatched shapes instead of broadcasting them.

    ``torch.nn.functional.mse_loss`` broadcasts a ``(n, 1)`` prediction against a ``(n,)`` target into an
    ``(n, n)`` grid and returns a wrong number with only a warning; here that is an error.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"mse_loss: prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
    return ((prediction - target) ** 2).mean()


@dataclass(frozen=True)
class Task:
    """What the multi-task model needs to know about one task.

    ``name``: unique key. ``head``: factory returning a fresh head module θ_i (called once per model).
    ``loss(prediction, target) -> scalar`` is L_i. ``kind`` is informative (``"regression"``,
    ``"classification"``, ``"segmentation"``, ``"depth"``...). ``output_shape`` is the per-example shape
    of the head's output. ``metrics`` maps a metric name to ``metric(prediction, target)``.
    """

    name: str
    head: Callable[[], nn.Module]
    loss: Loss
    kind: str = "regression"
    output_shape: tuple[int, ...] = ()
    metrics: dict[str, Metric] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"task name must be a non-empty string, got {self.name!r}")
        if not callable(self.head) or not callable(self.loss):
            raise TypeError(f"task {self.name!r}: head and loss must be callables")


class MultiTaskModel(nn.Module):
    """Shared module θ (``self.shared``) and one head per task (``self.heads[name]``).

    ``model(x, task="name")`` returns that task's prediction; ``model(x)`` returns a dict of all tasks'
    predictions from one pass through the shared module; ``model(x, task=["a", "b"])`` a dict of those
    tasks only. ``forward_tasks({name: X_i})`` runs each task on its own inputs.
    """

    def __init__(self, shared: nn.Module, tasks: Sequence[Task]):
        super().__init__()
        tasks = list(tasks)
        if not tasks:
            raise ValueError("MultiTaskModel needs at least one task (got T = 0)")
        for t in tasks:
            if not isinstance(t, Task):
                raise TypeError(f"tasks must be Task instances, got {type(t).__name__}")
        names = [t.name for t in tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique; repeated: {duplicates}")
        self.shared = shared
        self.tasks: dict[str, Task] = {t.name: t for t in tasks}
        self.heads = nn.ModuleDict({t.name: t.head() for t in tasks})

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def task(self, name: str) -> Task:
        if name not in self.tasks:
            raise KeyError(f"unknown task {name!r}; valid tasks: {self.task_names}")
        return self.tasks[name]

    def _shared(self, x: torch.Tensor, where: str) -> torch.Tensor:
        try:
            return self.shared(x)
        except RuntimeError as err:
            raise ValueError(f"{where}: the shared module cannot take an input of shape {tuple(x.shape)}: {err}") from None

    def forward(
        self, x: torch.Tensor, task: str | Sequence[str] | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        names = self.task_names if task is None else [task] if isinstance(task, str) else list(task)
        for name in names:
            self.task(name)
        z = self._shared(x, "forward")
        if isinstance(task, str):
            return self.heads[task](z)
        return {name: self.heads[name](z) for name in names}

    def forward_tasks(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-task inputs X_i (one batch per task) -> per-task predictions f(θ, θ_i, X_i)."""
        for name in inputs:
            self.task(name)
        return {name: self.heads[name](self._shared(x, f"task {name!r}")) for name, x in inputs.items()}

    def task_losses(self, predictions: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """The vector (L_1, ..., L_T) in the order of ``predictions``; keys must match ``targets``.

        Prediction and target of a task must have the same number of examples (first dimension).
        """
        if set(predictions) != set(targets):
            raise KeyError(f"predictions are for tasks {sorted(predictions)} but targets for {sorted(targets)}")
        losses = []
        for name, pred in predictions.items():
            target = targets[name]
            if pred.dim() == 0 or target.dim() == 0 or pred.shape[0] != target.shape[0]:
                raise ValueError(
                    f"task {name!r}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                    "must have the same number of examples (first dimension)"
                )
            try:
                losses.append(self.task(name).loss(pred, target))
            except RuntimeError as err:
                raise ValueError(
                    f"task {name!r}: loss failed for prediction {tuple(pred.shape)} vs target {tuple(target.shape)}: {err}"
                ) from None
        return torch.stack(losses)

    def shared_parameters(self) -> list[nn.Parameter]:
        """θ: the shared module's trainable parameters (empty while frozen)."""
        return [p for p in self.shared.parameters() if p.requires_grad]

    def head_parameters(self, name: str | None = None) -> list[nn.Parameter]:
        """θ_name, or every head's parameters when ``name`` is None."""
        if name is not None:
            self.task(name)
            return list(self.heads[name].parameters())
        return [p for head in self.heads.values() for p in head.parameters()]

    def add_task(self, task: Task) -> nn.Module:
        """Add a new task θ_new (knowledge transfer) and return its freshly built head."""
        if not isinstance(task, Task):
            raise TypeError(f"add_task needs a Task, got {type(task).__name__}")
        if task.name in self.tasks:
            raise ValueError(f"task {task.name!r} already exists; existing tasks: {self.task_names}")
        reference = next(iter(self.parameters()), None)
        head = task.head()
        if reference is not None:
            head = head.to(device=reference.device, dtype=reference.dtype)
        self.tasks[task.name] = task
        self.heads[task.name] = head
        return head

    def freeze_shared(self, frozen: bool = True) -> None:
        """Stop (or restart) training θ: sets ``requires_grad`` of every shared parameter."""
        for p in self.shared.parameters():
            p.requires_grad_(not frozen)


def parameters_of(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]
