"""The multi-task trainer: loss-based and gradient-based strategies, batch shapes, selection, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtml_lib.models.multitask import MultiTaskModel, Task, mse_loss
from mtml_lib.mtl.trainer import History, MultiTaskTrainer, NonFiniteLossError, evaluate, train
from mtml_lib.mtl.weighting.base import EqualWeights, FixedWeights, Weighting


def _linear_model(dim=5, rank=2, names=("a", "b"), seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    tasks = [Task(n, head=lambda: nn.Linear(rank, 1, bias=False), loss=mse_loss) for n in names]
    return MultiTaskModel(nn.Linear(dim, rank, bias=False), tasks).to(dtype)


def _per_task_batch(names=("a", "b"), n=16, dim=5, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for i, name in enumerate(names):
        x = torch.randn(n, dim, generator=g, dtype=dtype)
        w = torch.randn(dim, 1, generator=g, dtype=dtype)
        batch[name] = (x, x @ w)
    return batch


class SumGradients(Weighting):
    """Gradient-based strategy equal to EW: the direction is Σ_i g_i."""

    name = "sumgrad"
    uses_gradients = True

    def combine(self, grads, losses, step=0):
        self.seen = grads.clone()
        return grads.sum(0)


class FirstTaskOnly(Weighting):
    name = "first"
    uses_gradients = True

    def combine(self, grads, losses, step=0):
        return grads[0]


class LearnedLogWeights(Weighting):
    """Loss-based with a learnable parameter (shape of uncertainty weighting)."""

    name = "learned"

    def __init__(self, n_tasks):
        super().__init__(n_tasks)
        self.s = nn.Parameter(torch.zeros(n_tasks, dtype=torch.float64))

    def parameters(self):
        return [self.s]

    def loss(self, losses, step=0):
        self.last_weights = torch.exp(-self.s).detach()
        return (torch.exp(-self.s) * losses + self.s).sum()


def test_full_batch_training_reduces_every_task_loss():
    model = _linear_model()
    history = train(model, _per_task_batch(), epochs=200, lr=0.05, progress=False)
    assert isinstance(history, History)
    assert history.epochs == 200 and history.steps == 200 and len(history.step_losses) == 200
    for name in ("a", "b"):
        assert history.task_losses[name][-1] < 0.5 * history.task_losses[name][0]
    assert history.weights[-1] == [1.0, 1.0]
    frame = history.to_frame()
    assert list(frame.columns[:3]) == ["epoch", "objective", "lr"] and len(frame) == 200


def test_fixed_weights_objective_is_weighted_sum():
    model = _linear_model()
    batch = _per_task_batch()
    trainer = MultiTaskTrainer(model, FixedWeights(2, [0.25, 2.0]), optimizer="sgd", lr=1e-3, progress=False)
    losses = trainer.step(batch)
    assert math.isclose(trainer._last_objective, 0.25 * losses[0].item() + 2.0 * losses[1].item(), rel_tol=1e-12)


def test_gradient_path_with_sum_equals_loss_path():
    batch = _per_task_batch()
    results = []
    for weighting in (EqualWeights(2), SumGradients(2)):
        model = _linear_model(seed=3)
        trainer = MultiTaskTrainer(model, weighting, optimizer="sgd", lr=0.01, momentum=0.0, progress=False)
        for _ in range(5):
            trainer.step(batch)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)


def test_gradient_matrix_rows_are_per_task_gradients():
    model = _linear_model(seed=4)
    batch = _per_task_batch()
    strategy = SumGradients(2)
    trainer = MultiTaskTrainer(model, strategy, optimizer="sgd", lr=1e-9, progress=False)
    expected = []
    for name in ("a", "b"):
        x, y = batch[name]
        loss = mse_loss(model(x, task=name), y)
        (g,) = torch.autograd.grad(loss, [model.shared.weight])
        expected.append(g.flatten())
    trainer.step(batch)
    assert strategy.seen.shape == (2, model.shared.weight.numel())
    torch.testing.assert_close(strategy.seen, torch.stack(expected))


def test_gradient_based_strategy_steers_shared_only_heads_keep_own_gradient():
    model = _linear_model(seed=5)
    batch = _per_task_batch()
    trainer = MultiTaskTrainer(model, FirstTaskOnly(2), optimizer="sgd", lr=1.0, momentum=0.0, progress=False)
    trainer.optimizer.step = lambda: None  # inspect the gradients the step would apply
    trainer.step(batch)
    x, y = batch["a"]
    (g_shared,) = torch.autograd.grad(mse_loss(model(x, task="a"), y), [model.shared.weight])
    torch.testing.assert_close(model.shared.weight.grad, g_shared)
    xb, yb = batch["b"]
    (g_head_b,) = torch.autograd.grad(mse_loss(model(xb, task="b"), yb), [model.heads["b"].weight])
    torch.testing.assert_close(model.heads["b"].weight.grad, g_head_b)


def test_strategy_parameters_are_optimised_with_the_model():
    model = _linear_model()
    strategy = LearnedLogWeights(2)
    history = train(model, _per_task_batch(), epochs=20, weighting=strategy, lr=0.05, progress=False)
    assert not torch.equal(strategy.s.detach(), torch.zeros(2, dtype=torch.float64))
    assert history.weights[-1] != [1.0, 1.0]


class SceneSet(Dataset):
    """Shared input, two targets: a class label and a regression value."""

    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.label = (self.x[:, 0] > 0).long()
        self.value = self.x[:, 1:2] * 2.0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], {"cls": self.label[i], "reg": self.value[i]}


def test_shared_input_batches_from_a_dataloader():
    torch.manual_seed(0)
    tasks = [
        Task("cls", head=lambda: nn.Linear(8, 2), loss=nn.functional.cross_entropy, kind="classification"),
        Task("reg", head=lambda: nn.Linear(8, 1), loss=mse_loss),
    ]
    model = MultiTaskModel(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), tasks)
    loader = DataLoader(SceneSet(), batch_size=16, shuffle=False)
    history = train(model, loader, epochs=15, lr=0.02, progress=False, schedule="cosine")
    assert history.steps == 15 * 4
    assert history.task_losses["cls"][-1] < history.task_losses["cls"][0]
    assert history.task_losses["reg"][-1] < history.task_losses["reg"][0]
    assert history.lr[0] == pytest.approx(0.02) and history.lr[-1] < 0.02 * 0.05
    report = evaluate(model, loader)
    assert set(report) == {"cls", "reg", "mean"}


def test_validation_selects_and_restores_best_state():
    model = _linear_model()
    batch = _per_task_batch()
    calls = []

    def validate(m):
        calls.append(1)
        # a score that is best at the 3rd validation, then gets worse
        return {"score": abs(len(calls) - 3)}

    history = train(model, batch, epochs=10, lr=0.05, progress=False, validate=validate, eval_every=2)
    assert len(history.val) == 5 and [v["epoch"] for v in history.val] == [1, 3, 5, 7, 9]
    assert history.best_epoch == 5 and history.best_score == 0
    # restored: the model holds the parameters after epoch 5, i.e. after 6 steps from the same start
    reference = _linear_model()
    trainer = MultiTaskTrainer(reference, lr=0.05, progress=False)
    for _ in range(6):
        trainer.step(batch)
    torch.testing.assert_close(model.shared.weight, reference.shared.weight)


def test_validation_on_loss_selects_minimum_with_evaluate():
    model = _linear_model()
    train_batch, val_batch = _per_task_batch(seed=1), _per_task_batch(seed=1, n=32)
    history = train(model, train_batch, epochs=30, lr=0.05, progress=False,
                    validate=lambda m: evaluate(m, val_batch), monitor="mean")
    assert history.best_score == min(v["mean"] for v in history.val)


def test_nan_loss_names_task_and_step():
    model = _linear_model()
    batch = _per_task_batch()
    x, y = batch["b"]
    y = y.clone()
    y[3] = float("nan")
    batch["b"] = (x, y)
    with pytest.raises(NonFiniteLossError, match=r"task 'b' is nan at step 0 \(epoch 0\)"):
        train(model, batch, epochs=3, progress=False)


def test_divergence_is_caught_with_step_number():
    model = _linear_model()
    batch = _per_task_batch()
    with pytest.raises(NonFiniteLossError, match=r"loss of task '(a|b)' is (inf|nan) at step \d+"):
        train(model, batch, epochs=500, optimizer="sgd", lr=50.0, momentum=0.0, progress=False)


def test_bad_inputs_raise_clear_errors():
    model = _linear_model()
    batch = _per_task_batch()
    with pytest.raises(KeyError, match=r"unknown task\(s\) \['c'\]"):
        train(model, {**batch, "c": batch["a"]}, epochs=1, progress=False)
    with pytest.raises(KeyError, match="trains tasks"):
        train(model, {"a": batch["a"]}, epochs=1, progress=False)
    with pytest.raises(ValueError, match="is for 3 tasks"):
        MultiTaskTrainer(model, EqualWeights(3))
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        MultiTaskTrainer(model, optimizer="rmsprop")
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        MultiTaskTrainer(model, schedule="linear")
    with pytest.raises(ValueError, match="at least one task"):
        MultiTaskTrainer(model, tasks=[])
    with pytest.raises(KeyError, match="unknown task 'z'"):
        MultiTaskTrainer(model, tasks=["z"])
    with pytest.raises(ValueError, match="same number of examples"):
        train(model, {"a": batch["a"], "b": (batch["b"][0], batch["b"][1][:-1])}, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"task 'a'.*shared module cannot take an input of shape \(16, 7\)"):
        train(model, {"a": (torch.randn(16, 7, dtype=torch.float64), batch["a"][1]), "b": batch["b"]},
              epochs=1, progress=False)
    with pytest.raises(TypeError, match="a batch must be"):
        train(model, [torch.zeros(3)], epochs=1, progress=False)
    with pytest.raises(ValueError, match="monitor"):
        train(model, batch, epochs=2, progress=False, validate=lambda m: {"x": 1.0, "y": 2.0})


def test_training_a_subset_of_tasks_leaves_the_others_untouched():
    model = _linear_model()
    before = model.heads["b"].weight.detach().clone()
    batch = _per_task_batch()
    train(model, {"a": batch["a"]}, epochs=5, tasks=["a"], lr=0.1, progress=False)
    assert torch.equal(model.heads["b"].weight, before)


def test_lbfgs_reaches_the_least_squares_minimum():
    model = _linear_model(dim=5, rank=5)
    batch = _per_task_batch()
    history = train(model, batch, epochs=10, optimizer="lbfgs", lr=1.0, progress=False)
    assert history.task_losses["a"][0] > 0.1
    # rank = dim: every task is exactly representable, so the noiseless data is fitted to round-off
    report = evaluate(model, batch)
    assert report["a"] < 1e-10 and report["b"] < 1e-10


def test_lbfgs_weight_decay_is_the_l2_term_of_the_objective():
    model = _linear_model()
    batch = _per_task_batch()
    trainer = MultiTaskTrainer(model, optimizer="lbfgs", lr=1.0, weight_decay=0.5, progress=False, lbfgs_iterations=200)
    for _ in range(5):
        trainer.step(batch)
    model.zero_grad()
    objective = sum(batch_losses_of(model, batch)) + 0.25 * sum((p ** 2).sum() for p in model.parameters())
    objective.backward()
    # at the minimum of J + (λ/2)|θ|² the gradient vanishes
    assert max(p.grad.abs().max().item() for p in model.parameters()) < 1e-6


def batch_losses_of(model, batch):
    from mtml_lib.mtl.trainer import batch_losses

    return batch_losses(model, batch, model.task_names)


def test_lbfgs_refuses_gradient_based_strategies_and_clipping():
    model = _linear_model()
    with pytest.raises(ValueError, match="needs a loss-based strategy"):
        MultiTaskTrainer(model, SumGradients(2), optimizer="lbfgs", lr=1.0)
    with pytest.raises(ValueError, match="grad_clip"):
        MultiTaskTrainer(model, optimizer="lbfgs", lr=1.0, grad_clip=1.0)
