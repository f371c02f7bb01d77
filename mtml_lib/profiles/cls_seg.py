"""Profiles of notebook 02_multitask_cls_seg: data size, network width, training length, seeds.

Every profile trains the single-task baselines and every strategy of ``strategies`` for each seed of
``seeds``; the splits are fixed by ``data_seed`` whatever the training seed. ``quick`` is sized for a
two-core laptop CPU (one seed, short training: the comparison it shows is of lightly trained models,
with a constant step size, since a decaying one stalls the single-task classifier in so few steps);
``full`` is the paper setting (64x64 images, wider network, longer training, three seeds) and wants a GPU.
Small convolutions on a shared CPU run fastest on one thread (``threads``): a second thread mostly waits.
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
    "quick": ClsSegProfile(image_size=32, n_train=1600, n_val=300, n_test=800, widths=(16, 32, 64), epochs=5,
                           batch_size=32, lr=1e-3, seeds=(0,), schedule="constant", threads=1),
    "full": ClsSegProfile(image_size=64, n_train=10000, n_val=1000, n_test=2000, widths=(32, 64, 128), epochs=30,
                          batch_size=64, lr=1e-3, seeds=(0, 1, 2)),
}
