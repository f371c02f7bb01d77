"""MultiTaskModel (shared θ + heads θ_i), its error messages, and knowledge transfer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtml_lib.models.multitask import MultiTaskModel, Task, mse_loss
from mtml_lib.mtl.transfer import transfer


def _task(name, rank=3, out=1):
    return Task(name, head=lambda: nn.Linear(rank, out, bias=False), loss=mse_loss)


def _model(names=("a", "b"), dim=4, rank=3):
    torch.manual_seed(0)
    return MultiTaskModel(nn.Linear(dim, rank, bias=False), [_task(n, rank) for n in names]).double()


def test_forward_one_all_and_some_tasks():
    model = _model(names=("a", "b", "c"))
    x = torch.randn(5, 4, dtype=torch.float64)
    z = model.shared(x)
    out = model(x)
    assert list(out) == ["a", "b", "c"]
    torch.testing.assert_close(model(x, task="b"), model.heads["b"](z))
    some = model(x, task=["c", "a"])
    assert list(some) == ["c", "a"]
    torch.testing.assert_close(some["a"], out["a"])


def test_forward_tasks_uses_each_tasks_own_inputs():
    model = _model()
    xa, xb = torch.randn(5, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    out = model.forward_tasks({"a": xa, "b": xb})
    assert out["a"].shape == (5, 1) and out["b"].shape == (7, 1)
    torch.testing.assert_close(out["b"], model(xb, task="b"))


def test_task_losses_follow_prediction_order():
    model = _model()
    preds = {"b": torch.ones(3, 1), "a": torch.zeros(3, 1)}
    targets = {"a": torch.ones(3, 1), "b": torch.ones(3, 1) * 3}
    torch.testing.assert_close(model.task_losses(preds, targets), torch.tensor([4.0, 1.0]))


def test_unknown_task_name_is_a_clear_error_everywhere():
    model = _model()
    x = torch.randn(2, 4, dtype=torch.float64)
    for call in (
        lambda: model(x, task="z"),
        lambda: model(x, task=["a", "z"]),
        lambda: model.forward_tasks({"z": x}),
        lambda: model.head_parameters("z"),
        lambda: model.task_losses({"z": x}, {"z": x}),
    ):
        with pytest.raises(KeyError, match=r"unknown task 'z'; valid tasks: \['a', 'b'\]"):
            call()
    with pytest.raises(KeyError, match="predictions are for tasks"):
        model.task_losses({"a": x}, {"b": x})


def test_zero_tasks_duplicates_and_wrong_types_are_refused():
    with pytest.raises(ValueError, match="at least one task.*T = 0"):
        MultiTaskModel(nn.Linear(4, 3), [])
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        MultiTaskModel(nn.Linear(4, 3), [_task("a"), _task("a")])
    with pytest.raises(TypeError, match="Task instances"):
        MultiTaskModel(nn.Linear(4, 3), ["a"])
    with pytest.raises(ValueError, match="non-empty string"):
        _task("")


def test_mismatched_shapes_are_errors_not_broadcasts():
    with pytest.raises(ValueError, match=r"prediction shape \(4, 1\) != target shape \(4,\)"):
        mse_loss(torch.zeros(4, 1), torch.zeros(4))
    model = _model()
    with pytest.raises(ValueError, match=r"task 'a'.*same number of examples"):
        model.task_losses({"a": torch.zeros(4, 1)}, {"a": torch.zeros(5, 1)})
    with pytest.raises(ValueError, match=r"task 'b'.*cannot take an input of shape \(3, 6\)"):
        model.forward_tasks({"a": torch.zeros(3, 4, dtype=torch.float64), "b": torch.zeros(3, 6, dtype=torch.float64)})
    m = MultiTaskModel(nn.Linear(4, 3), [Task("a", head=lambda: nn.Linear(3, 2), loss=nn.functional.cross_entropy)])
    with pytest.raises(ValueError, match=r"task 'a': loss failed"):
        m.task_losses({"a": torch.zeros(4, 2)}, {"a": torch.zeros(4, 3, dtype=torch.long)})


def test_add_task_and_freeze_shared():
    model = _model()
    head = model.add_task(_task("new"))
    assert model.task_names == ["a", "b", "new"] and head.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="already exists"):
        model.add_task(_task("a"))
    model.freeze_shared()
    assert model.shared_parameters() == []
    model.freeze_shared(False)
    assert len(model.shared_parameters()) == 1


def _new_task_data(model, n=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    a_true = torch.randn(3, 1, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model.shared(x) @ a_true  # representable with the current θ: frozen transfer can fit it exactly
    return x, y, a_true


def test_transfer_with_frozen_shared_fits_only_the_new_head():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y, a_true = _new_task_data(model)
    result = transfer(model, _task("new"), {"new": (x, y)}, epochs=5, optimizer="lbfgs", lr=1.0, progress=False)
    # the original model is untouched (copy=True) and still trainable
    assert model.task_names == ["a", "b"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    adapted = result.model
    torch.testing.assert_close(adapted.shared.weight, model.shared.weight)
    torch.testing.assert_close(adapted.heads["new"].weight, a_true.T, rtol=1e-6, atol=1e-6)
    assert all(p.requires_grad for p in adapted.shared.parameters())
    assert result.fine_tune_history is None and result.head_history.task_losses["new"][0] > 1e-3


def test_transfer_fine_tuning_moves_shared_and_can_work_in_place():
    model = _model()
    x, y, _ = _new_task_data(model)
    y = y + torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    shared_before = model.shared.weight.detach().clone()
    result = transfer(model, [_task("new")], {"new": (x, y)}, epochs=3, fine_tune_epochs=20, fine_tune_lr=0.05,
                      optimizer="adam", lr=0.1, progress=False, copy=False)
    assert result.model is model and "new" in model.task_names
    assert not torch.allclose(model.shared.weight, shared_before)
    assert result.fine_tune_history.task_losses["new"][-1] < result.head_history.task_losses["new"][-1]


def test_transfer_bad_inputs():
    model = _model()
    x, y, _ = _new_task_data(model)
    with pytest.raises(ValueError, match=r"\['a'\] already exist"):
        transfer(model, _task("a"), {"a": (x, y)}, epochs=1, progress=False)
    with pytest.raises(ValueError, match="at least one new task"):
        transfer(model, [], {}, epochs=1, progress=False)
    with pytest.raises(KeyError, match=r"unknown task\(s\) \['other'\]"):
        transfer(model, _task("new"), {"other": (x, y)}, epochs=1, progress=False)
    # a failed transfer leaves the shared parameters trainable
    assert all(p.requires_grad for p in model.shared.parameters())
