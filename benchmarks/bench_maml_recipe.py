"""How the MAML family's recipe of notebook 04 was chosen: validation accuracy of each candidate, side by side.

Trains MAML and FOMAML 5-way 1-shot with the quick profile's sizes (Conv4-32, 4 tasks a meta-batch, Adam
2e-3 on a cosine, one inner step) for ``--iterations`` meta-batches under each candidate recipe: the head's
initialisation (torch's random init; zero; zero after every meta-update, the "zeroing trick" of Kao, Chiu &
Chen, ICLR 2022) and the inner step size α (on the mean cross-entropy; Finn et al.'s 0.4, and 0.1 and 0.8).
Every run uses the same seed, data and validation episodes (``--val-episodes`` 5-way 1-shot episodes of the
glyph meta-validation split). Nothing here reads the meta-test split: the recipe of
``mtml_lib.profiles.few_shot.RECIPE`` is the best of this table, and the test numbers of notebook 04 come
after it. Runs are spread over ``--workers`` processes of one thread each.

Run: ``.venv/bin/python benchmarks/bench_maml_recipe.py`` (about 5 minutes on 2 cores with the defaults).
Measured before the profiles were fixed (one seed, 300 validation episodes): after 200 meta-batches MAML
scored 79.6 / 86.7 / 89.2 % with a random / zero / zeroing head; after 400 with zeroing, 89.2 / 93.4 / 92.7 %
at α = 0.1 / 0.4 / 0.8, FOMAML 58.6 / 64.4 / 64.1 %.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtml_lib import fewshot  # noqa: E402
from mtml_lib.data import glyphs  # noqa: E402
from mtml_lib.profiles.few_shot import PROFILES  # noqa: E402

CANDIDATES = [("maml", head, 0.4) for head in fewshot.HEAD_INITS] + [("maml", "zeroing", a) for a in (0.1, 0.8)] \
    + [("fomaml", "random", 0.4)] + [("fomaml", "zeroing", a) for a in (0.1, 0.4, 0.8)]


def _run(args: tuple) -> tuple:
    (learner, head, alpha), iterations, val_episodes, seed = args
    torch.set_num_threads(1)
    base = next(s for s in PROFILES["quick"].learners if s.learner == learner)
    spec = dataclasses.replace(base, head_init=head, inner_lr=alpha, iterations=iterations,
                               val_every=max(1, iterations // 4), val_episodes=val_episodes)
    protos = glyphs.load_prototypes(glyphs.RenderSettings())
    train = lambda draw: glyphs.load_glyphs("train", 20, seed=seed, protos=protos, draw=draw)  # noqa: E731
    val = glyphs.load_glyphs("val", 20, seed=seed, protos=protos)
    result = fewshot.train(spec, train, val, seed=seed)
    return learner, head, alpha, result.val_accuracy, result.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=400, help="meta-batches per run")
    parser.add_argument("--val-episodes", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.val_episodes < 1 or args.workers < 1:
        print("bench_maml_recipe: --iterations, --val-episodes and --workers must be >= 1", file=sys.stderr)
        return 2
    jobs = [(c, args.iterations, args.val_episodes, args.seed) for c in CANDIDATES]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(_run, jobs))
    print(f"5-way 1-shot validation accuracy (%), {args.val_episodes} episodes, after each quarter of "
          f"{args.iterations} meta-batches\n")
    print("| learner | head | α | validation accuracy (%) | seconds |")
    print("|---|---|---:|---|---:|")
    for learner, head, alpha, curve, seconds in rows:
        print(f"| {learner} | {head} | {alpha} | {' / '.join(f'{100 * v:.1f}' for v in curve)} | {seconds:.0f} |")
    best = max(rows, key=lambda r: r[3][-1] if r[0] == "maml" else -1)
    print(f"\nbest MAML recipe: head {best[1]}, α = {best[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
