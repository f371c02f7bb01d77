"""Knowledge transfer: reuse a trained shared θ for a new task, fitting only its head θ_new.

    θ_new = argmin over θ_new of  L_new(f(θ, θ_new, X_new), Y_new)      (θ frozen)

and, optionally, a second phase that fine-tunes θ and θ_new together on the new task's data:

    (θ', θ_new') = argmin over θ, θ_new of  L_new(f(θ, θ_new, X_new), Y_new),   started from (θ, θ_new)

Frozen θ needs few examples (only θ_new is learned) but cannot leave what θ represents; fine-tuning can
leave it, at the price of more variance and of changing the predictions of the *old* tasks, whose heads
were fitted to the old θ. One call, :func:`transfer`, does both phases with :class:`MultiTaskTrainer`.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mtml_lib.models.multitask import MultiTaskModel, Task
from mtml_lib.mtl.trainer import History, MultiTaskTrainer


@dataclass
class TransferResult:
    """The adapted model (holding the new heads), the head-fitting history and, if any, the fine-tuning one."""

    model: MultiTaskModel
    head_history: History
    fine_tune_history: History | None = None


def transfer(
    model: MultiTaskModel,
    tasks: Task | Sequence[Task],
    data: Any,
    *,
    epochs: int,
    fine_tune_epochs: int = 0,
    fine_tune_lr: float | None = None,
    fine_tune_optimizer: str | None = None,
    copy: bool = True,
    **options: Any,
) -> TransferResult:
    """Add ``tasks`` to (a copy of) ``model``, fit their heads with θ frozen, optionally fine-tune θ.

    ``data``: batches with exactly the new tasks, in either shape the trainer takes (``{name: (X, Y)}`` or
    ``(X, {name: Y})``, or an iterable of them). ``options`` go to :class:`MultiTaskTrainer` (optimizer,
    lr, weight_decay, schedule, progress, ...). With ``fine_tune_epochs > 0`` a second phase trains θ
    and the new heads together, with ``fine_tune_optimizer`` / ``fine_tune_lr`` when given (else the same
    as the first phase). Several new tasks at once: with θ frozen each head is fitted independently of
    the others (their losses share no parameter); fine-tuning adapts one θ to all of them jointly, so
    call once per task for separate adaptations.

    ``copy=True`` (default) leaves ``model`` untouched and adapts a deep copy; ``copy=False`` adds the heads
    to ``model`` itself. Either way the shared parameters' ``requires_grad`` flags end as they started.
    """
    if not isinstance(model, MultiTaskModel):
        raise TypeError(f"transfer needs a MultiTaskModel, got {type(model).__name__}")
    new_tasks = [tasks] if isinstance(tasks, Task) else list(tasks)
    if not new_tasks:
        raise ValueError("transfer needs at least one new task (got none)")
    existing = [t.name for t in new_tasks if t.name in model.tasks]
    if existing:
        raise ValueError(f"task(s) {existing} already exist in the model; new tasks need new names (existing: {model.task_names})")
    if isinstance(fine_tune_epochs, bool) or not isinstance(fine_tune_epochs, int) or fine_tune_epochs < 0:
        raise ValueError(f"fine_tune_epochs must be an integer >= 0, got {fine_tune_epochs!r}")
    target = _copy.deepcopy(model) if copy else model
    for task in new_tasks:
        target.add_task(task)
    names = [t.name for t in new_tasks]
    flags = [p.requires_grad for p in target.shared.parameters()]
    try:
        target.freeze_shared(True)
        head_options = {"desc": "transfer: heads", **options}
        head_history = MultiTaskTrainer(target, tasks=names, **head_options).fit(data, epochs)
        fine_history = None
        if fine_tune_epochs:
            target.freeze_shared(False)
            tune_options = dict(options)
            if fine_tune_lr is not None:
                tune_options["lr"] = fine_tune_lr
            if fine_tune_optimizer is not None:
                tune_options["optimizer"] = fine_tune_optimizer
            tune_options.setdefault("desc", "transfer: fine-tune")
            fine_history = MultiTaskTrainer(target, tasks=names, **tune_options).fit(data, fine_tune_epochs)
    finally:
        for p, flag in zip(target.shared.parameters(), flags):
            p.requires_grad_(flag)
    return TransferResult(target, head_history, fine_history)
