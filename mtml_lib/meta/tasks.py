"""A meta-batch of tasks: support and query tensors with a leading task dimension.

Every meta-learning routine in :mod:`mtml_lib.meta` takes a :class:`TaskBatch`. Shapes, with ``T`` tasks,
``n_support`` and ``n_query`` examples per task::

    support_x (T, n_support, *x_shape)    support_y (T, n_support, *y_shape)
    query_x   (T, n_query,   *x_shape)    query_y   (T, n_query,   *y_shape)

Sinusoid regression: ``x_shape = y_shape = (1,)``. N-way K-shot images: ``x_shape = (1, 28, 28)``,
``y_shape = ()`` (integer labels ``0..N-1``), ``n_support = N * K``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class TaskBatch:
    """``T`` tasks, each with a support set (to adapt on) and a query set (to measure the adapted model).

    ``info`` carries optional per-task values of the task generator (for the sinusoid: ``amplitude`` and
    ``phase``, each ``(T,)``); the learners ignore it. Shapes are checked on construction and a mismatch
    raises ``ValueError`` naming the shapes.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        names = ("support_x", "support_y", "query_x", "query_y")
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"TaskBatch.{name} must be a tensor, got {type(value).__name__}")
            if value.dim() < 2:
                raise ValueError(
                    f"TaskBatch.{name} needs a task and an example dimension (T, n, ...), got shape {tuple(value.shape)}"
                )
        sx, sy, qx, qy = (getattr(self, n) for n in names)
        shapes = ", ".join(f"{n} {tuple(getattr(self, n).shape)}" for n in names)
        if len({sx.shape[0], sy.shape[0], qx.shape[0], qy.shape[0]}) != 1:
            raise ValueError(f"support and query tensors must have the same number of tasks (dim 0); got {shapes}")
        if sx.shape[0] < 1:
            raise ValueError(f"a TaskBatch needs at least one task; got {shapes}")
        if sx.shape[1] != sy.shape[1] or qx.shape[1] != qy.shape[1]:
            raise ValueError(f"inputs and targets must have the same number of examples (dim 1); got {shapes}")
        if sx.shape[1] < 1 or qx.shape[1] < 1:
            raise ValueError(f"support and query sets need at least one example each; got {shapes}")
        if sx.shape[2:] != qx.shape[2:] or sy.shape[2:] != qy.shape[2:]:
            raise ValueError(f"support and query examples must have the same shape (dims 2+); got {shapes}")

    @property
    def n_tasks(self) -> int:
        return self.support_x.shape[0]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(support_x, support_y, query_x, query_y)``."""
        return self.support_x, self.support_y, self.query_x, self.query_y

    def to(self, *args, **kwargs) -> "TaskBatch":
        """The batch moved/cast like ``Tensor.to``; integer targets (class labels) keep their dtype."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if t.is_floating_point():
                return t.to(*args, **kwargs)
            device = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get("device"))
            return t.to(device) if device is not None else t

        info = {k: move(v) if isinstance(v, torch.Tensor) else v for k, v in self.info.items()}
        return TaskBatch(*(move(t) for t in self.tensors()), info=info)

    def select(self, index: slice | torch.Tensor | list[int]) -> "TaskBatch":
        """The tasks at ``index`` (along dim 0), as a new batch."""
        info = {k: v[index] if isinstance(v, torch.Tensor) else v for k, v in self.info.items()}
        return TaskBatch(*(t[index] for t in self.tensors()), info=info)
