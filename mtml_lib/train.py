"""Meta-train notebook 04's learners outside the notebook, on one process or data-parallel under ``torchrun``.

The long trainings of the ``full`` and ``paper`` profiles are the notebook's cost. This entry point trains
the learners of a profile exactly as the notebook does (same specs, data, seeds and checkpoint files),
and spreads each meta-batch over the processes that ``torchrun`` starts::

    python -m mtml_lib.train --profile full --learner "MAML 5-way"              # one process
    torchrun --nproc-per-node 2 -m mtml_lib.train --profile full                # 2 processes, one machine
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m mtml_lib.train --profile paper --device cuda   # 2 machines

Every rank adapts its share of the tasks of a meta-batch and the meta-gradients are averaged over the
whole meta-batch (:func:`mtml_lib.meta.meta_train`), so W processes compute the one-process run (to
float rounding). The state is written, by rank 0 only, to the checkpoint files the notebook uses under
``config.cache_dir()/fewshot`` (``MTML_CACHE`` moves it); a run stopped on any number of processes
continues on any other number, and the notebook of a resumable profile (``full``, ``paper``) picks the
finished learners up instead of training them again. ``--out DIR`` also writes each trained learner with
:func:`mtml_lib.fewshot.save`.

Learners whose meta-batch is smaller than the number of processes (ProtoNets train one episode per step)
cannot be shared out this way; they are listed and skipped (train them with one process).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mtml_lib import config, distributed, fewshot


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mtml_lib.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="full", help="notebook 04's profile (smoke, quick, full, paper)")
    parser.add_argument("--learner", action="append", default=None, metavar="NAME",
                        help="train only this learner (its name, e.g. 'MAML 5-way'; repeat for several); "
                             "default: every learner of the profile")
    parser.add_argument("--seed", type=int, default=0, help="the notebook's seed (its profile adds its offsets)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process, by LOCAL_RANK)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per process (default: the cores divided among the local processes)")
    parser.add_argument("--out", type=Path, default=None, help="also save every trained learner into this folder")
    parser.add_argument("--verbose", action="store_true", help="print a line at every validation (rank 0)")
    return parser


def _start(device: str) -> torch.device:
    """Join the process group that ``torchrun`` describes (its environment variables); none when alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        place = torch.device("cuda", local)
    else:
        place = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if place.type == "cuda" else "gloo")
    return place


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    place = _start(args.device)
    rank, world = distributed.world_info()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local_world))
    try:
        settings = config.load_profile("04_few_shot_classification", config.resolve_profile(args.profile))
        specs = [s for s in settings.learners if args.learner is None or s.name in args.learner]
        unknown = sorted(set(args.learner or ()) - {s.name for s in settings.learners})
        if unknown:
            raise SystemExit(f"unknown learner(s) {unknown} in profile {args.profile!r}; "
                             f"valid: {[s.name for s in settings.learners]}")
        skipped = [s.name for s in specs if s.meta_batch < world]
        specs = [s for s in specs if s.meta_batch >= world]
        if skipped and rank == 0:
            print(f"skipped (meta-batch smaller than {world} processes): {', '.join(skipped)}", flush=True)

        from mtml_lib.data import glyphs

        render = glyphs.RenderSettings(fonts=settings.fonts)
        if rank == 0:  # renders and caches the prototypes once; the others read the cache
            protos = glyphs.load_prototypes(render)
        distributed.barrier()
        if rank != 0:
            protos = glyphs.load_prototypes(render)

        def train_set(draw: int):
            return glyphs.load_glyphs("train", settings.n_per_class, seed=args.seed, max_classes=settings.max_classes,
                                      protos=protos, draw=draw)

        val = glyphs.load_glyphs("val", settings.n_per_class, seed=args.seed, max_classes=settings.max_classes,
                                 protos=protos)
        data_key = glyphs.data_key(protos.settings, settings.n_per_class, settings.max_classes)
        for spec in specs:
            for offset in settings.seeds:
                seed = args.seed + offset
                checkpoint = fewshot.checkpoint_path(spec, seed, data_key)
                if rank == 0:
                    checkpoint.parent.mkdir(parents=True, exist_ok=True)
                    print(f"{spec.name} seed {seed} on {world} process(es): {checkpoint}", flush=True)
                result = fewshot.train(spec, train_set, val, seed=seed, device=place, verbose=args.verbose,
                                       checkpoint=checkpoint)
                if rank == 0:
                    print({**result.summary(), "seed": seed}, flush=True)
                    if args.out is not None:
                        slug = spec.name.lower().replace(" ", "-")
                        fewshot.save(result, args.out / f"{slug}-seed{seed}.pt", data=f"glyphs {data_key}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
