"""mtml_lib.metrics against scikit-learn and against confusion matrices computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from mtml_lib import metrics as M

IGNORE = 255


def test_confusion_matrix_by_hand_with_ignore_index():
    target = torch.tensor([[0, 0, 1], [2, IGNORE, 1]])
    prediction = torch.tensor([[0, 1, 1], [2, 0, 2]])  # the 0 under IGNORE must not be counted
    cm = M.confusion_matrix(target, prediction, 3, ignore_index=IGNORE)
    expected = torch.tensor([[1, 1, 0],
                             [0, 1, 1],
                             [0, 0, 1]])
    assert torch.equal(cm, expected)
    # rows = truth, columns = prediction, as in scikit-learn
    keep = (target != IGNORE).flatten().numpy()
    sk = skm.confusion_matrix(target.flatten().numpy()[keep], prediction.flatten().numpy()[keep], labels=[0, 1, 2])
    assert np.array_equal(cm.numpy(), sk)


def test_iou_miou_and_pixel_accuracy_by_hand():
    cm = torch.tensor([[3, 1, 0],
                       [2, 4, 0],
                       [0, 0, 0]])  # class 2 absent from truth and prediction
    iou = M.iou_per_class(cm)
    assert iou[0].item() == pytest.approx(3 / (3 + 1 + 2))
    assert iou[1].item() == pytest.approx(4 / (4 + 2 + 1))
    assert math.isnan(iou[2].item())
    assert M.mean_iou(cm) == pytest.approx((3 / 6 + 4 / 7) / 2)  # the absent class is left out
    assert M.pixel_accuracy(cm) == pytest.approx(7 / 10)


def test_class_present_in_prediction_only_has_iou_zero_and_counts():
    target = torch.tensor([0, 0, 1, 1])
    prediction = torch.tensor([0, 2, 1, 1])  # class 2 predicted once, never true
    cm = M.confusion_matrix(target, prediction, 3)
    iou = M.iou_per_class(cm)
    assert iou.tolist() == pytest.approx([1 / 2, 1.0, 0.0])
    assert M.mean_iou(cm) == pytest.approx(0.5)


def test_miou_accumulates_over_the_split_not_per_batch():
    meter = M.ConfusionMatrix(2)
    batch_a = (torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 0]))  # mIoU 1 alone
    batch_b = (torch.tensor([1, 1]), torch.tensor([0, 1]))  # mIoU (0 + 1/2) / 2 alone
    meter.update(*batch_a).update(*batch_b)
    # whole split: cm = [[4, 0], [1, 1]] -> IoU_0 = 4/5, IoU_1 = 1/2
    assert meter.miou() == pytest.approx((4 / 5 + 1 / 2) / 2)
    per_batch = (M.mean_iou(M.confusion_matrix(*batch_a, 2)) + M.mean_iou(M.confusion_matrix(*batch_b, 2))) / 2
    assert per_batch != pytest.approx(meter.miou())
    assert meter.pixel_accuracy() == pytest.approx(5 / 6)


def test_scores_are_turned_into_labels_by_argmax():
    logits = torch.zeros(2, 3, 2, 2)
    logits[0, 1] = 1.0  # image 0: class 1 everywhere
    logits[1, 2] = 1.0  # image 1: class 2 everywhere
    target = torch.tensor([[[1, 1], [1, 0]], [[2, 2], [IGNORE, 2]]])
    cm = M.confusion_matrix(target, logits, 3, ignore_index=IGNORE)
    assert cm.sum() == 7 and cm[1, 1] == 3 and cm[0, 1] == 1 and cm[2, 2] == 3


def test_ignore_index_is_masked_in_loss_and_metric_alike():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 5)
    target = torch.randint(0, 4, (2, 5, 5))
    target[0, :2] = IGNORE
    keep = target != IGNORE
    loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE)
    manual = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    cm = M.confusion_matrix(target, logits, 4, ignore_index=IGNORE)
    assert cm.sum() == keep.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n_classes = 5
    target = rng.integers(0, n_classes, size=200)
    prediction = np.where(rng.random(200) < 0.6, target, rng.integers(0, n_classes, size=200))
    ours = M.classification_metrics(target, prediction, n_classes)
    labels = list(range(n_classes))
    assert ours["accuracy"] == pytest.approx(skm.accuracy_score(target, prediction))
    for name, fn in [("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)]:
        assert ours[name] == pytest.approx(fn(target, prediction, labels=labels, average="macro", zero_division=0))
    per_class = M.precision_recall_f1(target, prediction, n_classes, average=None)
    assert np.allclose(per_class["f1"].numpy(), skm.f1_score(target, prediction, labels=labels, average=None))


def test_macro_scores_with_absent_classes_follow_the_stated_convention():
    target = np.array([0, 0, 1, 1, 1])
    prediction = np.array([0, 1, 1, 1, 3])  # class 2: never true, never predicted; class 3: predicted, never true
    ours = M.precision_recall_f1(target, prediction, 4)
    for name, fn in [("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)]:
        expected = fn(target, prediction, labels=[0, 1, 2, 3], average="macro", zero_division=0)
        assert ours[name] == pytest.approx(expected)
    # by hand: precision = (1, 2/3, 0, 0) / 4, recall = (1/2, 2/3, 0, 0) / 4
    assert ours["precision"] == pytest.approx((1 + 2 / 3) / 4)
    assert ours["recall"] == pytest.approx((1 / 2 + 2 / 3) / 4)


def test_depth_errors_by_hand_with_valid_mask():
    target = torch.tensor([[1.0, 2.0], [4.0, 8.0]])
    prediction = torch.tensor([[1.5, 2.0], [3.0, 0.0]])
    valid = torch.tensor([[True, True], [True, False]])
    errors = M.DepthErrors().update(target, prediction, valid).compute()
    assert errors["abs_err"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert errors["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 1) / 3))
    assert errors["rel_err"] == pytest.approx((0.5 / 1 + 0 + 1 / 4) / 3)


def test_delta_m_per_task_then_averaged():
    baseline = {"cls": {"accuracy": 0.80, "f1": 0.50}, "depth": {"abs_err": 0.20}}
    metrics = {"cls": {"accuracy": 0.88, "f1": 0.45}, "depth": {"abs_err": 0.25}}
    overall, per_task = M.delta_m(metrics, baseline, {"accuracy": True, "f1": True, "abs_err": False})
    assert per_task["cls"] == pytest.approx((10.0 + -10.0) / 2)
    assert per_task["depth"] == pytest.approx(-25.0)  # lower is better: an increase is a loss
    assert overall == pytest.approx((0.0 - 25.0) / 2)  # tasks weigh equally, whatever their metric count
    same, _ = M.delta_m(baseline, baseline, {"accuracy": True, "f1": True, "abs_err": False})
    assert same == 0.0


def test_mean_std():
    assert M.mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert M.mean_std([4.0]) == (4.0, 0.0)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 10, 29, 30, 99])
def test_student_t_matches_scipy(df):
    stats = pytest.importorskip("scipy.stats")
    for t in (0.1, 1.0, 2.5, 7.0):
        assert M.student_t_two_sided(t, df) == pytest.approx(stats.t.cdf(t, df) - stats.t.cdf(-t, df), abs=1e-12)
    for level in (0.9, 0.95, 0.99):
        assert M.student_t_quantile(level, df) == pytest.approx(stats.t.ppf(0.5 + level / 2, df), rel=1e-9)


def test_mean_ci_uses_student_t_for_few_seeds():
    mean, half = M.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))  # t_{0.975, 2}, not 1.96
    one, none = M.mean_ci([5.0])
    assert one == 5.0 and math.isnan(none)
    with pytest.raises(ValueError, match="no values"):
        M.mean_ci([])


def test_paired_difference_is_narrower_than_the_separate_intervals():
    reference = [0.50, 0.70, 0.90]  # seeds differ a lot ...
    values = [0.52, 0.72, 0.925]  # ... but each seed's run is a little better
    diff, half = M.paired_difference(values, reference)
    assert diff == pytest.approx(0.065 / 3)
    assert half < diff < M.mean_ci(reference)[1]  # distinguishable paired, not separately
    with pytest.raises(ValueError, match="one reference per value"):
        M.paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive integer"):
        M.student_t_two_sided(1.0, 0)


# ------------------------------------------------------------------------------------------ bad inputs
def test_mismatched_mask_shape_raises():
    with pytest.raises(ValueError, match=r"prediction shape \(2, 4, 4\) does not match target shape \(2, 5, 5\)"):
        M.confusion_matrix(torch.zeros(2, 5, 5, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="does not match"):
        M.ConfusionMatrix(3).update(torch.zeros(2, 5, 5, dtype=torch.long), torch.zeros(2, 3, 4, 4))


def test_labels_out_of_range_raise():
    with pytest.raises(ValueError, match=r"target label 3 is out of range: valid labels are 0..2"):
        M.confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match=r"predicted label -1 is out of range"):
        M.confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, -1]), 3)
    with pytest.raises(ValueError, match="out of range"):  # an unknown value that is not the ignore index
        M.confusion_matrix(torch.tensor([0, 254]), torch.tensor([0, 1]), 3, ignore_index=IGNORE)
    with pytest.raises(ValueError, match="collides"):
        M.confusion_matrix(torch.tensor([0]), torch.tensor([0]), 3, ignore_index=1)


def test_other_bad_inputs_raise():
    with pytest.raises(TypeError, match="integer class labels"):
        M.accuracy(torch.tensor([0.5, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="empty confusion matrix"):
        M.mean_iou(torch.zeros(3, 3))
    with pytest.raises(KeyError, match="no baseline for task 'seg'"):
        M.delta_m({"seg": {"miou": 0.5}}, {"cls": {"accuracy": 0.5}}, {"miou": True})
    with pytest.raises(KeyError, match="higher is better"):
        M.delta_m({"seg": {"miou": 0.5}}, {"seg": {"miou": 0.4}}, {})
    with pytest.raises(ValueError, match="depth targets must be positive"):
        M.DepthErrors().update(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]))
