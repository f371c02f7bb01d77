r"""Prototypical Networks (Snell, Swersky and Zemel 2017): few-shot classification by nearest class mean.

An encoder :math:`f_θ` embeds images; the *prototype* of class :math:`k` is the mean embedding of its
support images, and a query :math:`x` is classified by a softmax over negative squared Euclidean
distances to the prototypes:

.. math::

    c_k = \frac{1}{|S_k|} \sum_{(x_i, y_i) \in S_k} f_θ(x_i), \qquad
    p(y = k \mid x) = \frac{\exp(-\lVert f_θ(x) - c_k \rVert^2)}{\sum_{k'} \exp(-\lVert f_θ(x) - c_{k'} \rVert^2)}

There is no inner loop: adapting to a new task is computing its prototypes, so any number of ways and
shots works with one trained encoder. Training minimises the query cross-entropy over episodes.

The pure pieces (:func:`prototypes`, :func:`squared_distances`, :func:`prototype_logits`) work on one
task; :class:`ProtoNet` applies them to a :class:`~mtml_lib.meta.tasks.TaskBatch` (leading task
dimension) and offers the same ``meta_step`` / ``evaluate`` interface as
:class:`~mtml_lib.meta.core.MetaLearner`, so the same training loop drives both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mtml_lib.meta.core import Evaluation, MetaOutput
from mtml_lib.meta.tasks import TaskBatch


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Mean embedding of each class: ``(n, D)`` embeddings and ``(n,)`` labels in ``0..n_way-1`` -> ``(n_way, D)``.

    Raises ``ValueError`` when a label is out of range or a class has no support example.
    """
    if embeddings.dim() != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"expected embeddings (n, D) and labels (n,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= n_way:
        raise ValueError(f"labels must lie in 0..{n_way - 1}, got range {labels.min().item()}..{labels.max().item()}")
    one_hot = F.one_hot(labels, n_way).to(embeddings.dtype)  # (n, N)
    counts = one_hot.sum(0)
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"classes {missing} have no support example; every class needs at least one")
    return one_hot.T @ embeddings / counts.unsqueeze(1)


def squared_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``‖x_i − c_k‖²`` for ``x`` ``(q, D)`` and ``centres`` ``(N, D)`` -> ``(q, N)``.

    Computed as a difference (not ``‖x‖² − 2x·c + ‖c‖²``), which cannot go negative by round-off.
    """
    return (x.unsqueeze(1) - centres.unsqueeze(0)).pow(2).sum(-1)


def prototype_logits(support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, n_way: int) -> torch.Tensor:
    """Logits ``−‖f(x) − c_k‖²`` of query embeddings ``(q, D)`` given support embeddings and labels -> ``(q, n_way)``."""
    return -squared_distances(query, prototypes(support, support_y, n_way))


def _accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == target).float().mean()


class ProtoNet(nn.Module):
    """A Prototypical Network around any encoder mapping ``(n, *x_shape)`` to ``(n, D)`` embeddings.

    Each task's support and query images are embedded in one call of the encoder, so a normalisation
    layer that uses batch statistics (``Conv4(norm="plain")``) sees exactly one episode, in training and
    at test time alike, whatever the number of tasks in the batch.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
        self.encoder = encoder

    @staticmethod
    def n_way_of(batch: TaskBatch) -> int:
        """Number of classes of the batch's episodes: one more than the largest support label."""
        return int(batch.support_y.max()) + 1

    def logits(self, batch: TaskBatch) -> torch.Tensor:
        """Query logits ``(T, n_query, n_way)`` of every task of ``batch``."""
        n_way = self.n_way_of(batch)
        n_support = batch.support_x.shape[1]
        out = []
        for sx, sy, qx in zip(batch.support_x, batch.support_y, batch.query_x):
            z = self.encoder(torch.cat([sx, qx]))
            if z.dim() != 2:
                raise ValueError(f"the encoder must return (n, D) embeddings, got shape {tuple(z.shape)}")
            out.append(prototype_logits(z[:n_support], sy, z[n_support:], n_way))
        return torch.stack(out)

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Mean query cross-entropy over the tasks (differentiable), as :class:`MetaOutput`."""
        logits = self.logits(batch)
        task_losses = torch.stack([F.cross_entropy(lg, y) for lg, y in zip(logits, batch.query_y)])
        if not torch.isfinite(task_losses).all():
            raise FloatingPointError(f"non-finite ProtoNet loss in tasks {(~torch.isfinite(task_losses)).nonzero().flatten().tolist()}")
        return MetaOutput(task_losses.mean(), task_losses.detach(), task_losses.new_zeros(len(task_losses), 0))

    def meta_step(self, optimizer: torch.optim.Optimizer, batch: TaskBatch) -> MetaOutput:
        """One training step on ``batch``: backpropagate :meth:`meta_loss`, ``optimizer.step()``."""
        out = self.meta_loss(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        return MetaOutput(out.loss.detach(), out.task_losses, out.inner_losses)

    @torch.no_grad()
    def evaluate(self, batch: TaskBatch, metric: Callable | None = _accuracy) -> Evaluation:
        """Query loss and ``metric`` (default: accuracy) of every task, as ``(1, T)`` tensors.

        The leading dimension of length one is the "0 adaptation steps" row of
        :meth:`MetaLearner.evaluate`, so results of both kinds of learner read the same way.
        """
        logits = self.logits(batch)
        loss = torch.stack([F.cross_entropy(lg, y) for lg, y in zip(logits, batch.query_y)])
        score = torch.stack([torch.as_tensor(metric(lg, y)).float() for lg, y in zip(logits, batch.query_y)]) if metric else None
        return Evaluation(loss.unsqueeze(0), score.unsqueeze(0) if score is not None else None)
