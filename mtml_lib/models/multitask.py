"""The multi-task model: a shared module θ and one head θ_i per task.

    min over θ, θ_1..θ_T of  Σ_i w_i L_i(f(θ, θ_i, X_i), Y_i)

``f(θ, θ_i, x) = head_i(shared(x))``. The same class serves the linear toy of notebook 01 (shared = a
linear map to a low-dimensional code, heads = linear read-outs) and the CNN of notebook 02 (shared =
encoder, heads = classifier and segmentation decoder).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Metric = Callable[[torch.Tensor, torch.Tensor], Any]


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
    predictions from one pass through the shared module.
    """

    def __init__(self, shared: nn.Module, tasks: Sequence[Task]):
        super().__init__()
        tasks = list(tasks)
        if not tasks:
            raise ValueError("MultiTaskModel needs at least one task (got T = 0)")
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

    def forward(self, x: torch.Tensor, task: str | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        z = self.shared(x)
        if task is not None:
            self.task(task)
            return self.heads[task](z)
        return {name: head(z) for name, head in self.heads.items()}

    def forward_tasks(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-task inputs X_i (one batch per task) -> per-task predictions f(θ, θ_i, X_i)."""
        for name in inputs:
            self.task(name)
        return {name: self.heads[name](self.shared(x)) for name, x in inputs.items()}

    def task_losses(self, predictions: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """The vector (L_1, ..., L_T) in the order of ``predictions``; keys must match ``targets``."""
        if set(predictions) != set(targets):
            raise KeyError(f"predictions are for tasks {sorted(predictions)} but targets for {sorted(targets)}")
        losses = []
        for name, pred in predictions.items():
            target = targets[name]
            try:
                losses.append(self.task(name).loss(pred, target))
            except RuntimeError as err:
                raise ValueError(
                    f"task {name!r}: loss failed for prediction {tuple(pred.shape)} vs target {tuple(target.shape)}: {err}"
                ) from None
        return torch.stack(losses)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.shared.parameters() if p.requires_grad]

    def head_parameters(self, name: str | None = None) -> list[nn.Parameter]:
        if name is not None:
            self.task(name)
            return list(self.heads[name].parameters())
        return [p for head in self.heads.values() for p in head.parameters()]

    def add_task(self, task: Task) -> nn.Module:
        """Add a new task θ_new (knowledge transfer) and return its freshly built head."""
        if task.name in self.tasks:
            raise ValueError(f"task {task.name!r} already exists; existing tasks: {self.task_names}")
        self.tasks[task.name] = task
        self.heads[task.name] = task.head()
        device = next(iter(self.parameters())).device
        return self.heads[task.name].to(device)

    def freeze_shared(self, frozen: bool = True) -> None:
        for p in self.shared.parameters():
            p.requires_grad_(not frozen)


def parameters_of(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]
