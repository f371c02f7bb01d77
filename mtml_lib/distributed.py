r"""Data-parallel training on ``torch.distributed``: the few collective operations the trainers share.

Why this module exists
----------------------
One process adapts the ``B`` tasks of a meta-batch one after another (or under ``vmap``); ``W``
processes ("ranks", launched by ``torchrun`` or ``torch.multiprocessing``) can each adapt ``B / W`` of
them. The meta-objective is a *mean over tasks*, so the mean over the whole meta-batch is a weighted
sum of the ranks' means:

.. math::

    \frac{1}{B} \sum_{i=1}^{B} g_i \;=\; \sum_{r=1}^{W} \frac{B_r}{B} \Big( \frac{1}{B_r} \sum_{i \in r} g_i \Big)

Each rank scales its local mean by ``B_r / B`` and one ``all_reduce(SUM)`` gives every rank the global
mean; every rank then takes the same optimiser step from the same parameters, and the ranks stay in
step without ever exchanging parameters again. The multi-task trainer uses the same sum for its
per-task gradient matrix ``G (T, P)`` *before* a gradient-based strategy (PCGrad, MGDA, ...) combines
it, so every rank computes the direction that one process would compute on the global batch.

Every helper here is a no-op (or returns its input) when no process group is initialised, so the
single-process paths call them unconditionally and stay bit-for-bit what they were.

The API
-------
::

    rank, world = world_info()          # (0, 1) without a process group
    part = shard(n, rank, world)        # slice of the n items that this rank handles
    average_(tensors, weight)           # in place: all-reduce sum of weight * tensor
    broadcast_module(model)             # rank 0's parameters and buffers on every rank
    step = AveragingOptimizer(opt, params, weight)   # step(): average .grad over ranks, then opt.step()
    sync_batchnorm(model)               # BatchNorm layers normalise with the statistics of the global batch
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def active(flag: bool | None = None) -> bool:
    """Whether to run data-parallel: ``flag``, or (``None``) whether a process group of more than one
    rank is initialised. ``True`` without such a group raises ``RuntimeError``."""
    running = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if flag is None:
        return running
    if flag and not running:
        raise RuntimeError("distributed=True needs an initialised torch.distributed process group of more than one "
                           "rank (launch with torchrun, or call torch.distributed.init_process_group first)")
    return bool(flag)


def world_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and prints."""
    return world_info()[0] == 0


def shard(n: int, rank: int, world: int) -> slice:
    """The contiguous part of ``n`` items (tasks of a meta-batch, examples of a batch) of ``rank``.

    Sizes differ by at most one (the first ``n % world`` ranks take one more). Every rank needs at least
    one item: ``n < world`` raises ``ValueError``.
    """
    if n < world:
        raise ValueError(f"cannot share {n} item(s) among {world} ranks; each rank needs at least one "
                         f"(use a meta-batch or batch of at least {world})")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def average_(tensors: Sequence[torch.Tensor], weight: float = 1.0) -> None:
    """In place on every rank: ``t ← Σ_ranks weight_r · t_r`` for each tensor, in one collective.

    With ``weight = B_r / B`` (this rank's share of the items) the result is the mean over all items;
    with ``weight = 1 / world`` the plain mean over ranks. No-op without a process group.
    """
    if not tensors or world_info()[1] == 1:
        return
    flat = torch.cat([t.detach().reshape(-1) for t in tensors]) * weight
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (ranks may start from different seeds)."""
    if world_info()[1] == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if world_info()[1] > 1:
        dist.barrier()


class AveragingOptimizer:
    """An optimizer whose ``step()`` first averages the ``.grad`` of ``params`` over the ranks.

    ``weight``: this rank's share of the items its gradient is a mean over (``B_r / B``). A parameter
    without a gradient on this rank counts as a zero gradient, so every rank joins the same collective.
    Everything else (``zero_grad``, ``param_groups``, ``state_dict``) is the wrapped optimizer's, which
    is also what a learning-rate schedule should hold.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter], weight: float):
        self.optimizer = optimizer
        self.params = [p for p in params if p.requires_grad]
        self.weight = float(weight)

    def step(self, closure=None):
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        average_([p.grad for p in self.params], self.weight)
        return self.optimizer.step(closure)

    def __getattr__(self, name):
        return getattr(self.optimizer, name)


class SyncedBatchNorm(_BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch (all ranks together).

    The per-channel sums ``Σ x`` and ``Σ (x − mean)²`` over the batch and spatial dimensions are summed
    over the ranks with an all-reduce that autograd differentiates (its backward all-reduces the
    incoming gradients), so the gradient is that of the one-process network on the global batch. Runs on
    any backend, gloo on CPUs included (torch's ``nn.SyncBatchNorm`` runs on GPUs only). Input
    ``(B, C, *)``; evaluation mode, a single process, or a layer without running statistics in eval mode
    behave as ``nn.BatchNorm*``.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"SyncedBatchNorm({self.num_features}) expects (B, {self.num_features}, *), "
                             f"got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        batch_stats = self.training or not self.track_running_stats
        if not batch_stats or world_info()[1] == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // self.num_features], dtype=x.dtype, device=x.device)
        dist.all_reduce(count)
        mean = dist_fn.all_reduce(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = dist_fn.all_reduce((centred ** 2).sum(dims)) / count
        y = centred / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(factor * mean.detach())
                unbiased = var.detach() * count / (count - 1).clamp(min=1)
                self.running_var.mul_(1 - factor).add_(factor * unbiased)
        return y


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm*`` inside ``module`` (in place) by a :class:`SyncedBatchNorm` with the
    same settings, parameters and running statistics; returns ``module`` (or the replacement, when
    ``module`` itself is a BatchNorm)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncedBatchNorm):
        synced = SyncedBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        floats = [t for t in module.state_dict().values() if t.is_floating_point()]
        if floats:
            synced.to(floats[0].device, floats[0].dtype)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        replaced = sync_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


__all__ = ["AveragingOptimizer", "SyncedBatchNorm", "sync_batchnorm", "active", "average_", "barrier", "broadcast_module", "is_main", "shard", "world_info"]
