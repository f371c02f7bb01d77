"""Cost of the loss-weighting strategies: one training step of each, relative to equal weighting (EW).

The model is the case study's (notebook 02): shared CNN encoder, classification head, segmentation and
depth decoders; the batch is one fixed batch of shape scenes. Every strategy runs
``MultiTaskTrainer.step`` on a fresh copy of the same initial model, so the only difference is the
strategy: loss-based ones (EW, UW, DWA, RLW) back-propagate one scalar; gradient-based ones (GradNorm,
PCGrad, MGDA, CAGrad) take one gradient per task over the shared parameters, ``(T, P)``, then combine.

Timing: ``--repeats`` rounds, each timing ``--steps`` steps of every strategy in turn (so that load from
other processes hits all of them alike); the table gives the median per step over rounds, the ratio to
EW, and the time of the strategy's own mathematics (``combine`` on the ``(T, P)`` gradient matrix, or
``loss`` on the loss vector) measured apart: what remains is autograd.

Run: ``.venv/bin/python benchmarks/bench_weighting.py`` (``--help`` for options). Exits non-zero when
a loss-based strategy costs more than ``--max-loss-ratio`` times EW (their mathematics is a handful of
scalar operations, so the step should cost the same as EW's).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import interleaved_median  # noqa: E402
from mtml_lib.data import shapes  # noqa: E402
from mtml_lib.models.cnn import count_parameters  # noqa: E402
from mtml_lib.mtl import case_study as cs  # noqa: E402
from mtml_lib.mtl.trainer import MultiTaskTrainer  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--widths", type=str, default="16,32,64", help="encoder channels per stage")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--strategies", type=str, default=",".join(cs.STRATEGIES))
    parser.add_argument("--repeats", type=int, default=5, help="rounds (the median is reported)")
    parser.add_argument("--steps", type=int, default=3, help="steps of each strategy per round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--max-loss-ratio", type=float, default=1.5)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    widths = tuple(int(w) for w in args.widths.split(","))
    strategies = [s for s in args.strategies.split(",") if s]
    if "ew" not in strategies:
        strategies.insert(0, "ew")
    cfg = shapes.ShapesConfig(image_size=args.image_size)
    split = shapes.make_split(args.batch_size, seed=0, split="train", cfg=cfg, cache=False)
    tasks = list(cs.TASKS)
    batch = (split.images, split.targets())
    initial = cs.build_model(tasks, widths, cfg, seed=0)
    n_shared = sum(p.numel() for p in initial.shared_parameters())

    trainers = {}
    for name in strategies:
        trainers[name] = MultiTaskTrainer(copy.deepcopy(initial), cs.make_strategy(name, tasks), progress=False)
    # one warm-up step each (allocations, first-call costs), then interleaved rounds
    step_s = interleaved_median({name: (lambda t=trainer: t.step(batch)) for name, trainer in trainers.items()},
                                args.repeats, args.steps)

    # the strategies' own mathematics, apart from autograd
    maths: dict[str, float] = {}
    generator = torch.Generator().manual_seed(0)
    grads = torch.randn(len(tasks), n_shared, generator=generator)
    losses = torch.rand(len(tasks), generator=generator) + 0.5
    for name in strategies:
        strategy = cs.make_strategy(name, tasks)
        runs = []
        for step in range(max(5, args.steps)):
            start = time.perf_counter()
            if strategy.uses_gradients:
                strategy.combine(grads, losses, step)
            else:
                strategy.loss(losses.clone().requires_grad_(True), step)
            runs.append(time.perf_counter() - start)
        maths[name] = statistics.median(runs)

    ew = step_s["ew"]
    print(f"one training step, {len(tasks)} tasks ({', '.join(tasks)}), batch {args.batch_size} of "
          f"{args.image_size}x{args.image_size} images, encoder widths {widths}: {count_parameters(initial):,} "
          f"parameters, {n_shared:,} shared (P)")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"median of {args.repeats} rounds x {args.steps} steps\n")
    print("| strategy | kind | ms / step | vs EW | strategy maths (ms) |")
    print("|---|---|---:|---:|---:|")
    failed = []
    for name in strategies:
        step = step_s[name]
        kind = "gradient" if trainers[name].weighting.uses_gradients else "loss"
        ratio = step / ew
        print(f"| {name} | {kind} | {1000 * step:.1f} | {ratio:.2f}x | {1000 * maths[name]:.2f} |")
        if kind == "loss" and ratio > args.max_loss_ratio:
            failed.append(f"{name} costs {ratio:.2f}x EW (limit {args.max_loss_ratio}x)")
    for message in failed:
        print(f"TARGET MISSED: {message}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
