"""Profiles of notebook 02_multitask_cls_seg: data size, network width, training length, seeds.

Every profile trains the single-task baselines and every strategy of ``strategies`` for each seed of
``seeds``; the splits are fixed by ``data_seed`` whatever the training seed. Both real profiles run on the
two-core CPU the notebooks are written for, two trainings at a time (``workers``, one thread each: small
convolutions on a CPU run fastest on one thread, and the runs are independent):

- ``quick`` (about 12 minutes): one seed, 2,500 images, 10 epochs; far enough that every network has left
  the single-task classifier's chance plateau and the signs of the comparison are those of ``full``
  (``benchmarks/bench_profile_agreement.py`` checks them on the committed results);
- ``full`` (about 2 hours): three seeds, 4,000 images, 20 epochs, a larger test split;
  every network reaches the plateau of its validation curve (the notebook measures what the last quarter
  of the epochs still adds). Resumable: each finished run is kept in the cache, so a stopped run
  continues and a rerun of a finished one only evaluates.

Adam at 1e-3 on a cosine schedule: at 2e-3 the single-task classifier stays at chance for many epochs on
some seeds (measured: all 12 epochs for seed 1 with 4,000 images, 5 epochs for seed 2; at 1e-3 both
leave the plateau by epoch 4-6 and end at 88-89 % test accuracy).
"""

from dataclasses import dataclass

from mtml_lib.mtl.case_study import STRATEGIES


@dataclass(frozen=True)
class ClsSegProfile:
    image_size: int  # side of the square images, pixels (divisible by 2^(len(widths) - 1))
    n_train: int  # images in the training split
    n_val: int  # images in the validation split (model selection)
    n_test: int  # images in the test split (reported once)
    widths: tuple[int, ...]  # channels of the encoder stages (each stage halves the resolution after the first)
    epochs: int  # passes over the training split
    batch_size: int
    lr: float  # Adam step size
    seeds: tuple[int, ...]  # training seeds: initialisation, batch order, random strategies
    strategies: tuple[str, ...] = STRATEGIES
    data_seed: int = 0  # fixes the three splits
    n_show: int = 6  # images in the data grid and the prediction panel
    schedule: str = "cosine"  # learning-rate schedule over the epochs ("constant" or "cosine")
    threads: int | None = None  # torch CPU threads per training process (None: torch's default)
    workers: int = 1  # trainings run at once, in separate processes (independent runs: same numbers)
    resumable: bool = False  # keep every finished run in the cache; a rerun continues (or only evaluates)


PROFILES = {
    "smoke": ClsSegProfile(image_size=16, n_train=64, n_val=32, n_test=32, widths=(4, 8, 8), epochs=2,
                           batch_size=32, lr=2e-3, seeds=(0,), threads=1),
    "quick": ClsSegProfile(image_size=32, n_train=2500, n_val=500, n_test=1000, widths=(16, 32, 64), epochs=10,
                           batch_size=32, lr=1e-3, seeds=(0,), threads=1, workers=2),
    "full": ClsSegProfile(image_size=32, n_train=4000, n_val=500, n_test=2000, widths=(16, 32, 64), epochs=20,
                          batch_size=32, lr=1e-3, seeds=(0, 1, 2), threads=1, workers=2, resumable=True),
}
