"""Speed-up of data-parallel training (torch.distributed, gloo) on this machine: 2 processes against 1.

Two workloads, each run the way the library runs it under ``torchrun``:

- ``maml``: one meta-step of notebook 04's MAML learner (``full`` profile: Conv4 with 64 filters,
  5-way 1-shot, 5 queries per class, a meta-batch of 4 tasks; ``--paper`` takes the ``paper`` profile's
  MAML 5-way 1-shot instead: StridedConv4, 32 tasks), through :func:`mtml_lib.meta.meta_train`, each
  rank adapting its share of the tasks;
- ``epoch``: one training epoch of notebook 02's network (``quick`` profile: encoder widths 16-32-64,
  32x32 images, classification + segmentation + depth, 2,500 images in batches of 32) with
  :class:`mtml_lib.mtl.trainer.MultiTaskTrainer`, for equal weights (EW: the ordinary gradient all-reduce)
  and PCGrad (the per-task gradients all-reduced before PCGrad combines them); each rank steps on half of
  every batch, BatchNorm statistics local. The epoch time is ``--steps`` steps timed and scaled to the
  epoch's 79 steps.

The inputs are random tensors of the notebooks' shapes (the time of a step does not depend on the pixel
values). Three set-ups: 1 process with 1 thread, 1 process with 2 threads (what one process makes of
the two cores), 2 processes with 1 thread each. Each set-up runs in fresh processes: ``--warmup`` untimed
steps, then ``--steps`` timed steps, the slowest rank's time. Set-ups run one after another, not
interleaved, so load from other work on the machine can favour one; the script prints the load average
before and after.

Run: ``.venv/bin/python benchmarks/bench_distributed.py`` (``--help`` for options; ``--only maml`` or
``--only epoch`` for one workload).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SETUPS = (("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2), ("2 processes, 1 thread each", 2, 1))


def _maml_seconds(args) -> float:
    from mtml_lib import config, fewshot
    from mtml_lib.meta import meta_train
    from mtml_lib.meta.tasks import TaskBatch

    profile = "paper" if args.paper else "full"
    spec = next(s for s in config.load_profile("04_few_shot_classification", profile).learners
                if s.learner == "maml" and s.n_way == 5 and s.k_shot == 1)
    torch.manual_seed(0)
    learner = fewshot.make_learner(spec)
    g = torch.Generator().manual_seed(1)
    n_s, n_q = spec.n_way * spec.k_shot, spec.n_way * spec.n_query
    labels = lambda n: torch.arange(spec.n_way).repeat_interleave(n).expand(spec.meta_batch, -1).clone()  # noqa: E731
    batch = TaskBatch(torch.rand(spec.meta_batch, n_s, 1, 28, 28, generator=g), labels(spec.k_shot),
                      torch.rand(spec.meta_batch, n_q, 1, 28, 28, generator=g), labels(spec.n_query))
    meta_train(learner, lambda n: batch, args.warmup, spec.meta_batch, spec.meta_lr, log_every=args.warmup)
    dist.barrier() if dist.is_initialized() else None
    start = time.perf_counter()
    meta_train(learner, lambda n: batch, args.steps, spec.meta_batch, spec.meta_lr, log_every=args.steps)
    return (time.perf_counter() - start) / args.steps


def _epoch_seconds(args, strategy: str) -> float:
    from mtml_lib import config, distributed
    from mtml_lib.data import shapes
    from mtml_lib.mtl import case_study
    from mtml_lib.mtl.trainer import MultiTaskTrainer

    s = config.load_profile("02_multitask_cls_seg", "quick")
    cfg = shapes.ShapesConfig(image_size=s.image_size)
    tasks = list(case_study.TASKS)
    model = case_study.build_model(tasks, s.widths, cfg, seed=0)
    trainer = MultiTaskTrainer(model, case_study.make_strategy(strategy, tasks), optimizer="adam", lr=s.lr,
                               progress=False)
    rank, world = distributed.world_info()
    part = distributed.shard(s.batch_size, rank, world)
    g = torch.Generator().manual_seed(2)
    n, side = s.batch_size, s.image_size
    batch = (torch.rand(n, 3, side, side, generator=g),
             {"cls": torch.randint(cfg.n_classes, (n,), generator=g),
              "seg": torch.randint(cfg.n_mask_classes, (n, side, side), generator=g),
              "depth": torch.rand(n, side, side, generator=g)})
    local = (batch[0][part], {k: v[part] for k, v in batch[1].items()})
    for _ in range(args.warmup):
        trainer.step(local)
    dist.barrier() if dist.is_initialized() else None
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.step(local)
    steps_per_epoch = -(-s.n_train // s.batch_size)
    return (time.perf_counter() - start) / args.steps * steps_per_epoch


def _worker(rank: int, world: int, threads: int, rendezvous: str, args, out) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        results = {}
        if args.only in (None, "maml"):
            results["maml"] = _maml_seconds(args)
        if args.only in (None, "epoch"):
            for strategy in ("ew", "pcgrad"):
                results[f"epoch/{strategy}"] = _epoch_seconds(args, strategy)
        if world > 1:  # the slowest rank's time: the step is over when every rank is done
            values = torch.tensor(list(results.values()), dtype=torch.float64)
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
            results = dict(zip(results, values.tolist()))
        if rank == 0:
            out.update(results)
    finally:
        if world > 1:
            dist.destroy_process_group()


def run_setup(world: int, threads: int, args) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(world, threads, os.path.join(folder, "rendezvous"), args, out), nprocs=world)
        return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per workload (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--only", choices=("maml", "epoch"), default=None)
    parser.add_argument("--paper", action="store_true", help="the paper profile's MAML (32 tasks a meta-batch)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores; load average before: {os.getloadavg()}")
    results = {name: run_setup(world, threads, args) for name, world, threads in SETUPS}
    print(f"load average after: {os.getloadavg()}\n")
    rows = list(next(iter(results.values())))
    base = results[SETUPS[0][0]]
    labels = {"maml": "MAML meta-step (s)", "epoch/ew": "epoch, EW (s)", "epoch/pcgrad": "epoch, PCGrad (s)"}
    print("| set-up | " + " | ".join(labels[r] for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for name, values in results.items():
        cells = [f"{values[r]:.3f} ({base[r] / values[r]:.2f}x)" for r in rows]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n(x): speed-up over 1 process with 1 thread")


if __name__ == "__main__":
    main()
