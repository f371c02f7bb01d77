"""mtml_lib.meta: the batched path equals the per-task loop and finite differences; the variants differ
where they should; the BatchNorm trap is caught; bad inputs raise."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtml_lib.data.sinusoid import SinusoidTasks
from mtml_lib.meta import ALGORITHMS, MetaLearner, TaskBatch, inner_update, last_layer_names, mean_ci95, meta_train
from mtml_lib.models import MLP, Conv4

DT = torch.float64




def flat(grads: dict) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads.values()])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def sinusoid_batch(n_tasks=4, k=5, seed=1):
    return SinusoidTasks().sample(n_tasks, k, k + 2, torch.Generator().manual_seed(seed), dtype=DT)


def image_batch(n_tasks=3, n_way=2, k_shot=2, n_query=3, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = lambda n: torch.arange(n_way).repeat(n).expand(n_tasks, -1).clone()  # noqa: E731
    return TaskBatch(
        torch.randn(n_tasks, n_way * k_shot, 1, side, side, generator=g, dtype=DT), labels(k_shot),
        torch.randn(n_tasks, n_way * n_query, 1, side, side, generator=g, dtype=DT), labels(n_query),
    )


def mlp(sizes=(1, 8, 8, 1), seed=0):
    torch.manual_seed(seed)
    return MLP(list(sizes)).to(DT)


def conv4(norm, seed=0):
    torch.manual_seed(seed)
    return Conv4(1, hidden=4, n_out=2, norm=norm, image_size=16).to(DT)


def both_paths(model, loss_fn, batch, **kw):
    out = {}
    for batched in (True, False):
        learner = MetaLearner(model, loss_fn, batched=batched, **kw)
        out[learner.path] = flat(learner.meta_gradient(batch)[0])
    return out["vmap"], out["loop"]


# --------------------------------------------------------------------------- batched == loop
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_batched_equals_loop_mlp(algorithm):
    g_vmap, g_loop = both_paths(mlp(), F.mse_loss, sinusoid_batch(), algorithm=algorithm, inner_steps=2)
    assert g_loop.norm() > 0
    assert rel(g_vmap, g_loop) <= 1e-10


@pytest.mark.parametrize("norm", ["plain", "none"])
@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "anil", "metasgd"])
def test_batched_equals_loop_conv4(norm, algorithm):
    g_vmap, g_loop = both_paths(conv4(norm), F.cross_entropy, image_batch(), algorithm=algorithm, inner_lr=0.1, inner_steps=2)
    assert rel(g_vmap, g_loop) <= 1e-10


def test_batchnorm_model_never_gets_the_vmap_gradient():
    """vmap over nn.BatchNorm2d gives a wrong second-order meta-gradient (torch 2.13): the learner must
    route such models to the loop. If the guard is removed, the first assertion fails."""
    model, batch = conv4("batchnorm"), image_batch()
    with pytest.warns(UserWarning, match="BatchNorm"):
        auto = MetaLearner(model, F.cross_entropy, inner_lr=0.1)
    reference = MetaLearner(model, F.cross_entropy, inner_lr=0.1, batched=False)
    g_ref = flat(reference.meta_gradient(batch)[0])
    assert auto.path == "loop"
    assert rel(flat(auto.meta_gradient(batch)[0]), g_ref) <= 1e-12
    # the trap itself: forcing vmap onto this model is visibly wrong at second order, right at first order
    auto.path = "vmap"
    assert rel(flat(auto.meta_gradient(batch)[0]), g_ref) > 1e-6
    fo = MetaLearner(model, F.cross_entropy, "fomaml", inner_lr=0.1, batched=False)
    g_fo = flat(fo.meta_gradient(batch)[0])
    fo.path = "vmap"
    assert rel(flat(fo.meta_gradient(batch)[0]), g_fo) <= 1e-10


def test_auto_takes_the_loop_for_convolutions_on_the_cpu_and_vmap_otherwise():
    conv = MetaLearner(conv4("plain"), F.cross_entropy)
    assert conv.path == "loop" and "convolution" in conv.path_reason
    assert MetaLearner(conv4("plain"), F.cross_entropy, batched=True).path == "vmap"
    assert MetaLearner(mlp(), F.mse_loss).path == "vmap"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_compiled_function_equals_the_loop(algorithm):
    """meta_gradient(compile=True) runs _functional_meta_gradient under torch.compile; compiling takes
    tens of seconds, so the test checks the function itself (benchmarks/bench_maml.py runs it compiled)."""
    model, batch = mlp(), sinusoid_batch()
    learner = MetaLearner(model, F.mse_loss, algorithm, inner_steps=2)
    params, rest = learner._theta()
    lrs = learner._lrs()
    lrs = {n: v.detach() for n, v in lrs.items()} if isinstance(lrs, dict) else lrs
    grads, task_losses, inner = learner._functional_meta_gradient(
        {n: p.detach() for n, p in params.items()}, lrs, rest, *batch.tensors(), 2)
    reference, out = MetaLearner(model, F.mse_loss, algorithm, inner_steps=2, batched=False).meta_gradient(batch)
    assert set(grads) == set(reference)
    assert rel(flat({n: grads[n] for n in reference}), flat(reference)) <= 1e-10
    assert torch.allclose(task_losses, out.task_losses, rtol=1e-12) and inner.shape == (batch.n_tasks, 2)


def test_batched_true_refuses_batchnorm():
    with pytest.raises(ValueError, match=r"BatchNorm.*features\.0\.1"):
        MetaLearner(conv4("batchnorm"), F.cross_entropy, batched=True)


# ------------------------------------------------------------------ second order: finite differences
def test_second_order_meta_gradient_matches_finite_differences():
    model = mlp((1, 3, 1), seed=3)
    batch = sinusoid_batch(n_tasks=2, k=4)
    learner = MetaLearner(model, F.mse_loss, "maml", inner_lr=0.05, inner_steps=2)
    grads, _ = learner.meta_gradient(batch)
    eps = 1e-6
    for name, p in model.named_parameters():
        fd = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += eps
                up = learner.meta_loss(batch).loss.item()
                p.view(-1)[i] -= 2 * eps
                down = learner.meta_loss(batch).loss.item()
                p.view(-1)[i] += eps
            fd.view(-1)[i] = (up - down) / (2 * eps)
        assert torch.allclose(grads[f"model.{name}"], fd, rtol=1e-6, atol=1e-8), name


def test_first_order_differs_from_second_order_and_equals_query_gradient_at_phi():
    model, batch = mlp(), sinusoid_batch()
    so = flat(MetaLearner(model, F.mse_loss, "maml", inner_lr=0.05).meta_gradient(batch)[0])
    learner = MetaLearner(model, F.mse_loss, "fomaml", inner_lr=0.05)
    fo = flat(learner.meta_gradient(batch)[0])
    assert rel(fo, so) > 1e-3
    # FOMAML's meta-gradient is the mean of ∇_φ L_Q(φ_i), evaluated at the adapted parameters
    phi = learner.adapt(batch.support_x, batch.support_y, steps=1)
    expected = []
    for i in range(batch.n_tasks):
        p = {n: v[i].clone().requires_grad_() for n, v in phi.items()}
        loss = F.mse_loss(torch.func.functional_call(model, p, (batch.query_x[i],)), batch.query_y[i])
        expected.append(flat(dict(zip(p, torch.autograd.grad(loss, list(p.values()))))))
    assert rel(fo, torch.stack(expected).mean(0)) <= 1e-10
    # with a vanishing inner step the second-order term vanishes too
    tiny = dict(inner_lr=1e-9)
    a = flat(MetaLearner(model, F.mse_loss, "maml", **tiny).meta_gradient(batch)[0])
    b = flat(MetaLearner(model, F.mse_loss, "fomaml", **tiny).meta_gradient(batch)[0])
    assert rel(a, b) < 1e-7


def test_facade_equals_meta_gradient():
    model, batch = mlp(), sinusoid_batch()
    learner = MetaLearner(model, F.mse_loss, "maml", inner_lr=0.05, inner_steps=2)
    total = 0.0
    for i in range(batch.n_tasks):
        fast = learner.clone()
        for _ in range(2):
            fast.adapt(F.mse_loss(fast(batch.support_x[i]), batch.support_y[i]))
        total = total + F.mse_loss(fast(batch.query_x[i]), batch.query_y[i])
    facade = torch.autograd.grad(total / batch.n_tasks, list(model.parameters()))
    core = learner.meta_gradient(batch)[0]
    assert rel(torch.cat([g.reshape(-1) for g in facade]), flat(core)) <= 1e-12


# --------------------------------------------------------------------------------------- variants
def test_anil_adapts_only_the_head_but_meta_learns_the_body():
    model, batch = mlp(), sinusoid_batch()
    learner = MetaLearner(model, F.mse_loss, "anil", inner_lr=0.05)
    assert learner.adapted_names == ["4.weight", "4.bias"] == last_layer_names(model)
    assert MetaLearner(conv4("plain"), F.cross_entropy, "anil").adapted_names == ["head.weight", "head.bias"]
    phi = learner.adapt(batch.support_x, batch.support_y, steps=3)
    theta = dict(model.named_parameters())
    for name in ("0.weight", "2.bias"):
        assert torch.equal(phi[name], theta[name].detach().expand_as(phi[name]))
    assert not torch.equal(phi["4.weight"][0], theta["4.weight"].detach())
    grads, _ = learner.meta_gradient(batch)
    assert grads["model.0.weight"].abs().sum() > 0


def test_metasgd_gradient_of_the_rates_and_learning_them():
    model, batch = mlp(), sinusoid_batch()
    learner = MetaLearner(model, F.mse_loss, "metasgd", inner_lr=0.05)
    grads, _ = learner.meta_gradient(batch)
    # one inner step: ∂L_Q/∂α = −mean_i ∇_θ L_S,i(θ) ⊙ ∇_φ L_Q,i(φ_i)
    phi = learner.adapt(batch.support_x, batch.support_y, steps=1)
    expected = torch.zeros_like(model[0].weight)
    for i in range(batch.n_tasks):
        def grad_at(params, x, y):
            p = {n: v.detach().clone().requires_grad_() for n, v in params.items()}
            loss = F.mse_loss(torch.func.functional_call(model, p, (x,)), y)
            return dict(zip(p, torch.autograd.grad(loss, list(p.values()))))

        g_s = grad_at(dict(model.named_parameters()), batch.support_x[i], batch.support_y[i])["0.weight"]
        g_q = grad_at({n: v[i] for n, v in phi.items()}, batch.query_x[i], batch.query_y[i])["0.weight"]
        expected -= g_s * g_q / batch.n_tasks
    assert torch.allclose(grads["inner_lrs.0__weight"], expected, rtol=1e-10, atol=1e-14)
    # a few Adam steps move the rates away from their common initial value
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    sample = SinusoidTasks().sampler(5, seed=2, dtype=DT)
    for _ in range(5):
        learner.meta_step(opt, sample(4))
    rates = learner.learned_inner_lrs()
    assert set(rates) == {n for n, _ in model.named_parameters()}
    assert all(not torch.allclose(r, torch.full_like(r, 0.05)) for r in rates.values())


def test_reptile_one_step_is_the_support_gradient():
    model, batch = mlp(), sinusoid_batch()
    learner = MetaLearner(model, F.mse_loss, "reptile", inner_lr=0.05, inner_steps=1)
    grads, out = learner.meta_gradient(batch)
    x, y = batch.support_x, batch.support_y
    per_task = [torch.autograd.grad(F.mse_loss(model(x[i]), y[i]), list(model.parameters())) for i in range(batch.n_tasks)]
    expected = torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in per_task]).mean(0)
    assert rel(flat(grads), expected) <= 1e-10
    assert out.task_losses.shape == (batch.n_tasks,)
    with pytest.raises(ValueError, match="Reptile has no differentiable meta-loss"):
        learner.meta_loss(batch)


def test_inner_update_is_pure_and_supports_per_entry_rates():
    p = {"w": torch.ones(2), "b": torch.zeros(1)}
    out = inner_update(p, {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.5, 0.25])})
    assert torch.equal(out["w"], torch.tensor([0.5, 0.5])) and out["b"] is p["b"]
    assert torch.equal(p["w"], torch.ones(2))


# ------------------------------------------------------------------------------ adapt / evaluate
def test_evaluate_and_adapt_agree_across_paths_and_with_the_model():
    model, batch = mlp(), sinusoid_batch()
    ev = {}
    for batched in (True, False):
        learner = MetaLearner(model, F.mse_loss, batched=batched, inner_lr=0.05, test_steps=3)
        ev[batched] = learner.evaluate(batch, chunk_size=3)
    assert ev[True].loss.shape == (4, batch.n_tasks) and ev[True].metric is None
    assert torch.allclose(ev[True].loss, ev[False].loss, rtol=1e-12)
    with torch.no_grad():
        step0 = torch.stack([F.mse_loss(model(batch.query_x[i]), batch.query_y[i]) for i in range(batch.n_tasks)])
    assert torch.allclose(ev[True].loss[0], step0, rtol=1e-12)
    assert bool((ev[True].loss[3] < ev[True].loss[0]).all())
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.05)
    phi = learner.adapt(batch.support_x, batch.support_y, steps=3)
    pred = learner.predict(phi, batch.query_x)
    assert pred.shape == batch.query_y.shape
    per_task = ((pred - batch.query_y) ** 2).mean(dim=(1, 2))
    assert torch.allclose(per_task, ev[True].loss[3], rtol=1e-12)


def test_evaluate_with_a_metric_on_images():
    batch = image_batch()
    learner = MetaLearner(conv4("plain"), F.cross_entropy, inner_lr=0.1)
    acc = lambda logits, y: (logits.argmax(-1) == y).float().mean()  # noqa: E731
    ev = learner.evaluate(batch, steps=2, metric=acc)
    assert ev.metric.shape == (3, batch.n_tasks)
    assert bool(((ev.metric >= 0) & (ev.metric <= 1)).all())


def test_meta_training_improves_one_step_adaptation():
    torch.manual_seed(0)
    learner = MetaLearner(MLP([1, 20, 20, 1]), F.mse_loss, "maml", inner_lr=0.01)
    test = SinusoidTasks().sample(100, 10, generator=torch.Generator().manual_seed(99))
    before = learner.evaluate(test, steps=1).loss[1].mean()
    history = meta_train(learner, SinusoidTasks().sampler(10, seed=1), n_iterations=200, meta_batch=10,
                         meta_lr=5e-3, log_every=50)
    after = learner.evaluate(test, steps=1).loss[1].mean()
    assert history.iterations == [50, 100, 150, 200] and history.seconds > 0
    assert after < 0.8 * before


def test_meta_train_keeps_the_best_validated_parameters():
    torch.manual_seed(0)
    learner = MetaLearner(MLP([1, 8, 1]), F.mse_loss, "maml", inner_lr=0.01)
    scores, snapshots = iter([0.2, 0.9, 0.9, 0.4]), []

    def validate(model):  # a scripted score; remember the parameters it was given
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    history = meta_train(learner, SinusoidTasks().sampler(5, seed=1), n_iterations=8, meta_batch=2, meta_lr=1e-2,
                         log_every=2, cosine=True, validate=validate)
    assert history.iterations == [2, 4, 6, 8] and history.val_score == [0.2, 0.9, 0.9, 0.4]
    assert (history.best_iteration, history.best_score) == (4, 0.9)  # the first of a tie
    kept = learner.state_dict()
    assert all(torch.equal(kept[k], snapshots[1][k]) for k in kept)
    assert not all(torch.equal(snapshots[1][k], snapshots[3][k]) for k in kept)  # training did move on


def test_meta_train_refuses_a_non_finite_validation_score():
    learner = MetaLearner(MLP([1, 8, 1]), F.mse_loss, "maml", inner_lr=0.01)
    with pytest.raises(FloatingPointError, match="validation score nan at iteration 3"):
        meta_train(learner, SinusoidTasks().sampler(5, seed=1), n_iterations=6, meta_batch=2, log_every=3,
                   validate=lambda model: float("nan"))


def test_meta_train_cosine_schedule_ends_with_a_zero_step():
    # Adam moves each parameter by about the step size: with the cosine schedule the last move is ~0
    def moves(cosine):
        torch.manual_seed(0)
        learner = MetaLearner(MLP([1, 8, 1]), F.mse_loss, "maml", inner_lr=0.01)
        seen = []
        meta_train(learner, SinusoidTasks().sampler(5, seed=1), n_iterations=20, meta_batch=2, meta_lr=1e-2,
                   log_every=1, cosine=cosine,
                   validate=lambda m: seen.append(torch.cat([p.detach().flatten() for p in m.parameters()])) or 0.0)
        return [float((b - a).abs().max()) for a, b in zip(seen, seen[1:])]

    flat, cos = moves(False), moves(True)
    assert flat[-1] > 0.5 * flat[0] and cos[-1] < 0.02 * cos[0]


def test_mean_ci95():
    mean, half = mean_ci95(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
    assert mean.tolist() == [2.0, 2.0]
    assert half[0] == pytest.approx(1.96 * 2 ** 0.5 / 2 ** 0.5) and half[1] == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        mean_ci95(torch.ones(3, 1))


# ----------------------------------------------------------------------------------------- errors
def test_zero_inner_steps_refused_for_meta_training_but_allowed_at_test_time():
    model, batch = mlp(), sinusoid_batch()
    with pytest.raises(ValueError, match="inner_steps must be an integer >= 1, got 0"):
        MetaLearner(model, F.mse_loss, inner_steps=0)
    learner = MetaLearner(model, F.mse_loss)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        learner.meta_loss(batch, steps=0)
    with pytest.raises(ValueError, match="test_steps must be an integer >= 0"):
        MetaLearner(model, F.mse_loss, test_steps=-1)
    assert learner.evaluate(batch, steps=0).loss.shape == (1, batch.n_tasks)


def test_mismatched_shapes_raise():
    x, y = torch.zeros(4, 5, 1), torch.zeros(4, 5, 1)
    with pytest.raises(ValueError, match="same number of tasks"):
        TaskBatch(x, y, torch.zeros(3, 5, 1), torch.zeros(3, 5, 1))
    with pytest.raises(ValueError, match="same number of examples"):
        TaskBatch(x, torch.zeros(4, 6, 1), x, y)
    with pytest.raises(ValueError, match="same shape"):
        TaskBatch(x, y, torch.zeros(4, 5, 2), y)
    with pytest.raises(ValueError, match=r"task and an example dimension.*\(5,\)"):
        TaskBatch(torch.zeros(5), y, x, y)
    with pytest.raises(TypeError, match="TaskBatch or"):
        MetaLearner(mlp(), F.mse_loss).meta_loss(x)


@pytest.mark.parametrize("batched", [True, False])
def test_non_finite_loss_raises_naming_the_task(batched):
    batch = sinusoid_batch()
    bad_y = batch.support_y.clone()
    bad_y[2, 0, 0] = float("nan")
    learner = MetaLearner(mlp(), F.mse_loss, batched=batched)
    with pytest.raises(FloatingPointError, match="non-finite support loss nan in task 2 at inner step 0"):
        learner.meta_loss(TaskBatch(batch.support_x, bad_y, batch.query_x, batch.query_y))
    bad_q = batch.query_y.clone()
    bad_q[1, 0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite query loss inf in task 1"):
        learner.meta_loss(TaskBatch(batch.support_x, batch.support_y, batch.query_x, bad_q))
    exploding = MetaLearner(mlp(), F.mse_loss, inner_lr=1e200, batched=batched)
    with pytest.raises(FloatingPointError, match="inner_lr=1e"):
        exploding.meta_loss(batch, steps=3)


def test_bad_settings_raise_and_name_the_choices():
    model = mlp()
    with pytest.raises(ValueError, match="unknown algorithm 'mamal'.*'maml', 'fomaml'"):
        MetaLearner(model, F.mse_loss, "mamal")
    with pytest.raises(ValueError, match="inner_lr must be a finite number > 0, got -0.1"):
        MetaLearner(model, F.mse_loss, inner_lr=-0.1)
    with pytest.raises(ValueError, match="batched must be one of"):
        MetaLearner(model, F.mse_loss, batched="yes")
    with pytest.raises(ValueError, match="prefix 'head' matches no trainable parameter"):
        MetaLearner(model, F.mse_loss, inner_params=["head"])
    with pytest.raises(ValueError, match="first-order by definition"):
        MetaLearner(model, F.mse_loss, "fomaml", first_order=False)
    with pytest.raises(ValueError, match="only algorithm 'metasgd'"):
        MetaLearner(model, F.mse_loss).learned_inner_lrs()
    with pytest.raises(ValueError, match="scalar"):
        MetaLearner(model, lambda p, y: (p - y) ** 2, batched=False).meta_loss(sinusoid_batch())


def test_inner_params_selects_by_prefix():
    learner = MetaLearner(conv4("none"), F.cross_entropy, inner_params=["features.3", "head"])
    assert learner.adapted_names == ["features.3.0.weight", "features.3.0.bias", "head.weight", "head.bias"]


def test_instance_norm_is_also_routed_to_the_loop():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.InstanceNorm2d(2, affine=True), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 1, 5, 5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert MetaLearner(model, F.cross_entropy).path == "loop"
    assert any("InstanceNorm" in str(w.message) for w in caught)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_batched_equals_loop_for_the_strided_conv4_with_its_normalisation_left_out_of_the_inner_loop(algorithm):
    from mtml_lib.models import StridedConv4

    torch.manual_seed(0)
    model = StridedConv4(1, hidden=4, n_out=2).to(DT)
    g_vmap, g_loop = both_paths(model, F.cross_entropy, image_batch(), algorithm=algorithm, inner_lr=0.1,
                                inner_steps=2, inner_params=model.fast_names)
    assert g_loop.norm() > 0 and rel(g_vmap, g_loop) <= 1e-10
    learner = MetaLearner(model, F.cross_entropy, algorithm=algorithm, inner_params=model.fast_names)
    assert not any(n.startswith("norms.") for n in learner.adapted_names) and len(learner.adapted_names) == 10
