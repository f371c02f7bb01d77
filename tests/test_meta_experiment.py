"""mtml_lib.meta.sinusoid_experiment: the helpers of notebook 03 (tables, test tasks, curvature)."""

import math

import pytest
import torch
import torch.nn.functional as F

from mtml_lib.meta import MetaLearner, TaskBatch
from mtml_lib.meta import sinusoid_experiment as ex
from mtml_lib.models import MLP
from mtml_lib.profiles.maml_sinusoid import PROFILES




def test_results_table_counts_diverged_tasks_and_refuses_to_average_them():
    curves = {"maml": torch.tensor([[2.0, 2.0, 2.0], [1.0, 2.0, 3.0]]),
              "metasgd": torch.tensor([[2.0, 2.0, 2.0], [1.0, float("nan"), 1e7]])}
    table = ex.results_table(curves, steps=(0, 1))
    assert table.loc["MAML", "MSE 1 step"] == pytest.approx(2.0)
    assert table.loc["MAML", "± CI 1"] == pytest.approx(1.96 / math.sqrt(3))
    assert table.loc["Meta-SGD", "diverged 1"] == 2 and math.isnan(table.loc["Meta-SGD", "MSE 1 step"])
    assert table.loc["Meta-SGD", "diverged 0"] == 0 and table.loc["Meta-SGD", "MSE 0 steps"] == 2.0


def test_evaluation_tasks_share_tasks_and_query_points_across_k():
    s = PROFILES["smoke"]
    five, twenty = ex.evaluation_tasks(s, 5), ex.evaluation_tasks(s, 20)
    assert five.support_x.shape == (s.n_test_tasks, 5, 1) and five.query_x.shape == (s.n_test_tasks, s.eval_query_points, 1)
    assert torch.equal(five.support_x, twenty.support_x[:, :5]) and torch.equal(five.query_y, twenty.query_y)
    assert not torch.equal(ex.evaluation_tasks(s, 5, seed=1).support_x, five.support_x)


def test_head_step_curvature_of_a_linear_model():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 1)
    batch = TaskBatch(x, x, x, x)
    learner = MetaLearner(MLP([1, 1]), F.mse_loss, inner_lr=0.1)
    design = torch.cat([x, torch.ones_like(x)], -1)  # features of a linear model: (x, 1)
    expected = 0.1 * torch.linalg.eigvalsh(2 * design.transpose(1, 2) @ design / 4)[:, -1]
    assert torch.allclose(ex.head_step_curvature(learner, batch), expected)
    # the same number from autograd: the Hessian of the support MSE w.r.t. (weight, bias) of task 0
    def loss(wb):
        return F.mse_loss(x[0] * wb[0] + wb[1], x[0])
    hessian = torch.autograd.functional.hessian(loss, torch.zeros(2))
    assert torch.allclose(0.1 * torch.linalg.eigvalsh(hessian)[-1], expected[0])


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="unknown method 'mamal'.*'maml'"):
        ex.train_method("mamal", PROFILES["smoke"])


def test_describe_results_quotes_the_table_and_the_curvatures():
    curves = {m: torch.full((11, 4), v) for m, v in
              (("maml", 0.5), ("fomaml", 0.7), ("anil", 0.9), ("metasgd", 0.3), ("reptile", 0.8), ("pretrained", 2.0))}
    curves["metasgd"][10, 0] = float("nan")
    table = ex.results_table(curves, steps=(1, 10))
    curvature = {"maml": torch.tensor([0.2, 0.3]), "anil": torch.tensor([1.0, 2.5])}
    text = ex.describe_results(table, curvature, test_steps=10)
    assert "a ratio of 0.25" in text and "above MAML by 0.200" in text
    assert "above 2 on 1 of 2 test tasks (MAML: 0)" in text
    assert "the best of all methods" in text and "diverged on 1 of the test tasks" in text
