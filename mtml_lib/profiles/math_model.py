"""Profiles of notebook 01_math_model: the linear task family, the sweeps, and how the shared model is fitted.

``seeds`` runs of every sweep start at the notebook's ``seed``; each draws a new family (basis B) and new
tasks. ``decay`` is the constant c of the shared model's weight decay λ = c / n; it was set once on a
pilot draw with other seeds (100-102) than the notebook uses, never on the numbers it reports.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class MathModelProfile:
    # the task family (mtml_lib.data.linear_tasks)
    dim: int  # d: input dimension = number of weights per task
    rank: int  # k: dimension of the shared subspace (the shared model is given this rank)
    noise: float  # σ: label noise standard deviation (signal energy is 1)
    spread: float  # s: share of each task's weight energy that is task-specific
    n_tasks: int  # T: tasks trained together
    # comparison of the four estimators
    sample_sizes: tuple[int, ...]  # examples per task n
    n_seeds: int  # independent draws (family + tasks) per setting: error bars
    structure_samples: int  # n for the sweep over the off-subspace fraction ρ
    off_subspace: tuple[float, ...]  # ρ values of that sweep
    # fitting the shared model (MultiTaskTrainer with L-BFGS)
    epochs: int  # L-BFGS steps (up to 20 iterations each)
    decay: float  # weight decay c / n
    # transfer to new tasks
    transfer_pretrain_samples: int  # n of the T pretraining tasks
    transfer_sizes: tuple[int, ...]  # n of the new task
    transfer_new_tasks: int  # new tasks per seed
    fine_tune_epochs: int  # Adam epochs of the fine-tuning phase
    fine_tune_lr: float


PROFILES = {
    "smoke": MathModelProfile(
        dim=8, rank=2, noise=0.3, spread=0.7, n_tasks=6,
        sample_sizes=(4, 16), n_seeds=1, structure_samples=8, off_subspace=(0.0, 1.0),
        epochs=5, decay=4.0,
        transfer_pretrain_samples=16, transfer_sizes=(2, 8), transfer_new_tasks=2,
        fine_tune_epochs=10, fine_tune_lr=0.01,
    ),
    "quick": MathModelProfile(
        dim=20, rank=2, noise=0.3, spread=0.7, n_tasks=20,
        sample_sizes=(2, 4, 8, 16, 32, 64), n_seeds=3, structure_samples=16,
        off_subspace=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
        epochs=20, decay=4.0,
        transfer_pretrain_samples=32, transfer_sizes=(1, 2, 4, 8, 16, 32), transfer_new_tasks=5,
        fine_tune_epochs=50, fine_tune_lr=0.01,
    ),
    "full": MathModelProfile(
        dim=20, rank=2, noise=0.3, spread=0.7, n_tasks=20,
        sample_sizes=(2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128), n_seeds=10, structure_samples=16,
        off_subspace=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
        epochs=20, decay=4.0,
        transfer_pretrain_samples=32, transfer_sizes=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), transfer_new_tasks=10,
        fine_tune_epochs=50, fine_tune_lr=0.01,
    ),
}
