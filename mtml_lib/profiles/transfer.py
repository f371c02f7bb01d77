"""Profiles of notebook 05_knowledge_transfer: which start makes a new task cheapest to learn.

The meta-learners and the joint baseline use the sinusoid settings of Finn et al. (2017) (MLP 1-40-40-1,
α = 0.01, Adam 1e-3, 25 tasks a meta-batch, K = 10); ``full`` trains them for the paper's 70,000
iterations. The multi-task trunk sees a fixed set of ``mt_tasks`` tasks with ``mt_points`` examples each.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class TransferProfile:
    n_iterations: int  # meta-training iterations of MAML and ANIL (and of the joint baseline)
    mt_tasks: int  # training tasks of the multi-task trunk
    mt_epochs: int  # full-batch Adam steps of the multi-task trunk
    n_test_tasks: int  # new tasks per family and support size
    n_val_tasks: int = 100  # validation tasks (training family) that choose step sizes and ridge penalties
    mt_points: int = 20  # examples per training task of the multi-task trunk
    k_shots: tuple[int, ...] = (5, 10, 20, 40)  # support sizes of the new tasks (K of Finn et al.'s figures and more)
    n_query: int = 100  # query points per new task (its MSE is measured on them)
    adapt_steps: int = 10  # gradient steps every gradient-based method gets on a new task
    select_k: int = 10  # support size of the validation tasks
    step_size_grid: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03)  # candidate fine-tuning step sizes
    ridge_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)  # candidate ridge penalties
    hidden: tuple[int, ...] = (40, 40)
    k_shot: int = 10  # support (and query) points per task during meta-training
    meta_batch: int = 25
    inner_lr: float = 0.01
    meta_lr: float = 1e-3
    inner_steps: int = 1
    reptile_inner_steps: int = 5
    test_steps: int = 10
    log_every: int = 100
    threads: int = 1  # CPU threads (the small MLPs run fastest on one)
    compile: bool = False


PROFILES = {
    "smoke": TransferProfile(n_iterations=30, mt_tasks=10, mt_epochs=30, n_test_tasks=20, n_val_tasks=20,
                             k_shots=(5, 10), log_every=10),
    "quick": TransferProfile(n_iterations=3000, mt_tasks=100, mt_epochs=1500, n_test_tasks=300),
    "full": TransferProfile(n_iterations=70000, mt_tasks=1000, mt_epochs=5000, n_test_tasks=600, log_every=500,
                            compile=True),
}
