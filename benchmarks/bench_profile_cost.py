"""What one meta-batch of each learner of a notebook-04 profile costs here, and what its whole run would cost.

Times ``--steps`` meta-updates (after one warm-up update) of every learner of a profile of notebook 04
(default ``paper``: the published protocols, GPU-scale) on the glyph training split, with the profile's
episodes, backbone and loss, on this machine, and prints the time per meta-batch and the projected
training time of the profile's iterations (validation not counted). With it a user sizes a GPU run before
starting it, or sees why a profile is not run on a CPU.

Run: ``.venv/bin/python benchmarks/bench_profile_cost.py`` (``--profile full``, ``--steps 5``, ``--device cuda``,
``--threads 2``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtml_lib import config, fewshot  # noqa: E402
from mtml_lib.data import glyphs  # noqa: E402
from mtml_lib.data.episodes import EpisodeSampler  # noqa: E402
from mtml_lib.profiles.few_shot import PROFILES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="paper", choices=sorted(PROFILES), help="profile of notebook 04")
    parser.add_argument("--steps", type=int, default=3, help="timed meta-updates per learner")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: auto)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    torch.set_num_threads(args.threads)
    device = config.resolve_device(args.device)
    profile = PROFILES[args.profile]
    protos = glyphs.load_prototypes(glyphs.RenderSettings(fonts=profile.fonts))
    data = glyphs.load_glyphs("train", n_per_class=profile.n_per_class, seed=0, protos=protos,
                              max_classes=profile.max_classes)
    print(f"profile {args.profile} of notebook 04, {device}, {args.threads} thread(s), torch {torch.__version__}, "
          f"median of {args.steps} meta-updates after one warm-up\n")
    print("| learner | episodes a meta-batch | s / meta-batch | iterations | projected training |")
    print("|---|---:|---:|---:|---:|")
    total = 0.0
    for spec in profile.learners:
        torch.manual_seed(0)
        learner = fewshot.make_learner(spec, in_channels=data.image_shape[0], image_size=data.image_shape[-1]).to(device)
        optimizer = torch.optim.Adam(learner.parameters(), lr=spec.meta_lr)
        sampler = EpisodeSampler(data, spec.n_way, spec.k_shot, spec.n_query, seed=0)
        times = []
        for step in range(args.steps + 1):
            batch = sampler.sample(spec.meta_batch).to(device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            learner.meta_step(optimizer, batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step:
                times.append(time.perf_counter() - start)
        seconds = sorted(times)[len(times) // 2]
        hours = seconds * spec.iterations / 3600
        total += hours
        print(f"| {spec.name} | {spec.meta_batch} | {seconds:.3f} | {spec.iterations:,} | {hours:.1f} h |")
    print(f"\nall {len(profile.learners)} learners one after another: {total:.1f} h of training on this device")
    return 0


if __name__ == "__main__":
    sys.exit(main())
