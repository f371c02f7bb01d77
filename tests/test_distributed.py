"""mtml_lib.distributed: two gloo processes on this CPU compute what one process computes.

Meta-learning: one meta-step of every algorithm on 2 ranks (meta-batch 5, shared 3 + 2) gives the
meta-gradient and the parameters of the one-process step on the same 5 tasks (float64, 1e-10); a run
interrupted on 2 ranks resumes on 1 and ends where the uninterrupted one-process run ends.
Multi-task learning: for every strategy the direction written to the shared parameters on 2 ranks (each
with half of the batch) equals the one-process direction on the whole batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from mtml_lib import distributed as mdist
from mtml_lib.data.sinusoid import SinusoidTasks
from mtml_lib.meta import ALGORITHMS, MetaLearner, meta_train
from mtml_lib.models import MLP
from mtml_lib.models.multitask import MultiTaskModel, Task, mse_loss
from mtml_lib.mtl.trainer import MultiTaskTrainer
from mtml_lib.mtl.weighting import WEIGHTINGS, get_weighting

DT = torch.float64
WORLD = 2
META_BATCH = 5


class Sampler:
    """Sinusoid meta-batches from a seeded generator, with the state a resumable run needs."""

    def __init__(self, seed: int = 3):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, n_tasks: int):
        return SinusoidTasks().sample(n_tasks, 4, 6, self.generator, dtype=DT)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def learner(algorithm: str, seed: int) -> MetaLearner:
    torch.manual_seed(seed)
    return MetaLearner(MLP([1, 8, 8, 1]).to(DT), F.mse_loss, algorithm=algorithm, inner_lr=0.05, inner_steps=2)


def one_meta_step(algorithm: str, seed: int = 0) -> dict:
    """Gradients (left in ``.grad``) and parameters after one meta_train iteration."""
    model = learner(algorithm, seed)
    history = meta_train(model, Sampler(), n_iterations=1, meta_batch=META_BATCH, meta_lr=0.01, log_every=1)
    return {"loss": torch.tensor(history.loss),
            **{f"grad/{n}": p.grad.clone() for n, p in model.named_parameters()},
            **{f"param/{n}": p.detach().clone() for n, p in model.named_parameters()}}


def stopping_validate(calls: list):
    def validate(model):  # a constant score; the second call stops the run after the first checkpoint
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 0.0
    return validate


def run_interrupted(path, seed: int) -> None:
    with pytest.raises(KeyboardInterrupt):
        meta_train(learner("maml", seed), Sampler(), n_iterations=4, meta_batch=META_BATCH, meta_lr=0.01,
                   log_every=2, checkpoint=path, validate=stopping_validate([]), restore_best=False)


def resumed(path) -> dict:
    model = learner("maml", 0)
    history = meta_train(model, Sampler(), n_iterations=4, meta_batch=META_BATCH, meta_lr=0.01, log_every=2,
                         checkpoint=path, validate=lambda m: 0.0, restore_best=False)
    return {"loss": torch.tensor(history.loss), **{n: p.detach().clone() for n, p in model.named_parameters()}}


# ------------------------------------------------------------------------------- multi-task
TASKS = ("a", "b", "c")


def mtl_model(norm: bool = False) -> MultiTaskModel:
    torch.manual_seed(0)
    tasks = [Task(n, head=lambda: nn.Linear(3, 1), loss=mse_loss) for n in TASKS]
    layers = [nn.Linear(6, 3), nn.BatchNorm1d(3), nn.Tanh()] if norm else [nn.Linear(6, 3), nn.Tanh()]
    return MultiTaskModel(nn.Sequential(*layers), tasks).to(DT)


def mtl_batch(part: slice = slice(None)) -> dict:
    g = torch.Generator().manual_seed(1)
    batch = {}
    for name in TASKS:
        x = torch.randn(12, 6, generator=g, dtype=DT)
        y = x @ torch.randn(6, 1, generator=g, dtype=DT) + 0.3 * torch.randn(12, 1, generator=g, dtype=DT)
        batch[name] = (x[part], y[part])
    return batch


def mtl_steps(strategy: str, part: slice = slice(None), batchnorm: str | None = None) -> dict:
    """Three steps; after each, every trainable gradient (the combined direction on the shared part).
    ``batchnorm``: None for a model without BatchNorm, else the trainer's choice for the one it has."""
    trainer = MultiTaskTrainer(mtl_model(norm=batchnorm is not None), get_weighting(strategy, len(TASKS)),
                               optimizer="sgd", lr=0.1, progress=False, batchnorm=batchnorm or "local")
    out = {}
    for k in range(3):
        out[f"losses/{k}"] = trainer.step(mtl_batch(part))
        out[f"shared/{k}"] = torch.cat([p.grad.reshape(-1) for p in trainer.shared_params])
        out[f"heads/{k}"] = torch.cat([p.grad.reshape(-1) for p in trainer.head_params])
    out["params"] = torch.cat([p.detach().reshape(-1) for p in trainer.model_params])
    out["buffers"] = torch.cat([b.double().reshape(-1) for b in trainer.model.buffers()] + [torch.zeros(0, dtype=DT)])
    return out


# ------------------------------------------------------------------------------- the ranks
def _worker(rank: int, world: int, rendezvous: str, job: str, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        if job == "meta":
            # each rank starts from another seed: meta_train broadcasts rank 0's parameters
            result = {a: one_meta_step(a, seed=rank * 7) for a in ALGORITHMS}
        elif job == "interrupt":
            run_interrupted(f"{folder}/run.pt", seed=rank * 7)
            result = {}
        elif job == "batchnorm":
            part = mdist.shard(12, rank, world)
            result = {(s, bn): mtl_steps(s, part, bn) for s in ("ew", "pcgrad") for bn in ("local", "sync")}
        else:
            part = mdist.shard(12, rank, world)
            result = {s: mtl_steps(s, part) for s in sorted(WEIGHTINGS) if s != "fixed"}
        torch.save(result, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(job: str, folder) -> list[dict]:
    mp.spawn(_worker, args=(WORLD, str(folder / "rendezvous"), job, str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> bool:
    if a.shape != b.shape:
        return False
    if b.numel() == 0:
        return True
    return bool(((a - b).abs().max() <= tol * max(1.0, float(b.abs().max()))))


# ------------------------------------------------------------------------------- tests
def test_shard_covers_every_item_once_and_refuses_too_few():
    parts = [mdist.shard(7, r, 3) for r in range(3)]
    assert [(p.start, p.stop) for p in parts] == [(0, 3), (3, 5), (5, 7)]
    with pytest.raises(ValueError, match="at least one"):
        mdist.shard(1, 0, 2)


def test_single_process_helpers_change_nothing():
    t = torch.tensor([1.0, 2.0])
    mdist.average_([t], 0.5)
    assert t.tolist() == [1.0, 2.0]
    assert mdist.world_info() == (0, 1) and not mdist.active()
    with pytest.raises(RuntimeError, match="process group"):
        mdist.active(True)


def test_two_ranks_take_the_one_process_meta_step_for_every_algorithm(tmp_path):
    ranks = spawn("meta", tmp_path)
    for algorithm in ALGORITHMS:
        single = one_meta_step(algorithm)
        for rank in ranks:
            got = rank[algorithm]
            assert got.keys() == single.keys()
            for key, value in single.items():
                assert close(got[key], value), (algorithm, key, float((got[key] - value).abs().max()))
        # the step moved the parameters (a test that cannot pass by doing nothing)
        start = dict(learner(algorithm, 0).named_parameters())
        assert any(not torch.equal(single[f"param/{n}"], p) for n, p in start.items())


def test_a_run_started_on_two_ranks_resumes_on_one(tmp_path):
    spawn("interrupt", tmp_path)
    state = torch.load(tmp_path / "run.pt", weights_only=False)
    assert state["extra"]["iteration"] == 2
    got = resumed(tmp_path / "run.pt")
    reference = resumed(tmp_path / "fresh.pt")  # the same run on one process, never interrupted
    assert len(got["loss"]) == 2
    for key, value in reference.items():
        assert close(got[key], value), key


def test_a_split_meta_batch_is_not_the_full_one():
    # guard for the test above: a meta-step on a share of the tasks differs from the full meta-step
    model = learner("maml", 0)
    batch = Sampler()(META_BATCH)
    full = model.meta_gradient(batch)[0]
    part = model.meta_gradient(batch.select(slice(0, 3)))[0]
    assert not all(close(full[n], part[n]) for n in full)


def test_two_ranks_combine_the_one_process_direction_for_every_strategy(tmp_path):
    ranks = spawn("mtl", tmp_path)
    gradient_based = {s for s in WEIGHTINGS if s != "fixed" and get_weighting(s, len(TASKS)).uses_gradients}
    assert gradient_based == {"gradnorm", "pcgrad", "mgda", "cagrad"}
    for strategy in ranks[0]:
        single = mtl_steps(strategy)
        for rank in ranks:
            for key, value in single.items():
                assert close(rank[strategy][key], value), (strategy, key)
        # each rank's own half gives another direction: the match above is the all-reduce's doing
        half = mtl_steps(strategy, slice(0, 6))
        assert not close(half["shared/0"], single["shared/0"]), strategy


def test_synchronised_batchnorm_trains_the_one_process_network(tmp_path):
    ranks = spawn("batchnorm", tmp_path)
    for strategy in ("ew", "pcgrad"):
        single = mtl_steps(strategy, batchnorm="local")
        for rank in ranks:
            for key, value in single.items():  # gradients, parameters and running statistics
                assert close(rank[(strategy, "sync")][key], value), (strategy, key)
            # local statistics (each rank normalises its own half) give another network
            assert not close(rank[(strategy, "local")]["shared/0"], single["shared/0"]), strategy
        # ... but the same one on every rank, running statistics included
        for key in ("params", "buffers"):
            assert torch.equal(ranks[0][(strategy, "local")][key], ranks[1][(strategy, "local")][key]), key
