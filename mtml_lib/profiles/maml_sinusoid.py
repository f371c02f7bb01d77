"""Profiles of notebook 03_maml_sinusoid: MAML and its variants on the sinusoid tasks of Finn et al. (2017).

``full`` is the paper's setting (MLP 1-40-40-1 ReLU, α = 0.01, Adam 1e-3, 25 tasks a meta-batch, K = 10,
one inner step in training, 70,000 iterations, 600 test tasks). ``quick`` keeps every setting but the
number of iterations; ``smoke`` only checks that the notebook runs.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class MamlSinusoidProfile:
    n_iterations: int  # meta-training iterations of every method (the pretrained baseline too)
    hidden: tuple[int, ...] = (40, 40)  # hidden layer sizes of the ReLU MLP
    k_shot: int = 10  # support (and query) points per task during meta-training
    meta_batch: int = 25  # tasks per meta-batch
    inner_lr: float = 0.01  # α, the inner-loop step size (also the fine-tuning step size at test time)
    meta_lr: float = 1e-3  # Adam step size of the outer loop (and of the pretrained baseline)
    inner_steps: int = 1  # inner steps during meta-training (MAML, FOMAML, ANIL, Meta-SGD)
    reptile_inner_steps: int = 5  # Reptile's inner steps during meta-training
    test_steps: int = 10  # gradient steps at test time
    eval_k_shots: tuple[int, ...] = (5, 10, 20)  # support sizes of the MSE-versus-steps figure
    n_test_tasks: int = 600  # test tasks of the table and the curves
    eval_query_points: int = 100  # query points per test task (the task's MSE is measured on them)
    log_every: int = 100  # iterations per logged training loss
    threads: int = 1  # CPU threads (a 1-40-40-1 MLP runs fastest on one)
    compile: bool = False  # torch.compile the meta-step (~30 s per method once, then several times faster)


PROFILES = {
    "smoke": MamlSinusoidProfile(n_iterations=40, n_test_tasks=40, log_every=10),
    "quick": MamlSinusoidProfile(n_iterations=3000),
    "full": MamlSinusoidProfile(n_iterations=70000, log_every=500, compile=True),
}
