"""Metrics for classification, segmentation and depth, and Δm% against single-task baselines.

Conventions, stated once:

- **Arguments** come as ``(target, prediction)`` (scikit-learn's ``y_true, y_pred`` order). A prediction
  may be labels (same shape as the target) or scores with one extra class dimension at position 1
  (``(N, C)`` logits or ``(B, C, H, W)`` per-pixel logits), which are turned into labels by ``argmax``.
- **Confusion matrix** ``cm[i, j]`` counts items of true class ``i`` predicted as ``j``.
- **Ignore index**: target entries equal to ``ignore_index`` are dropped before anything is counted,
  exactly as ``torch.nn.functional.cross_entropy(..., ignore_index=...)`` drops them from the loss.
  Any other target or predicted label outside ``0..C-1`` raises ``ValueError``.
- **Segmentation (mIoU, pixel accuracy)**: one confusion matrix is accumulated over the *whole split*
  (:class:`ConfusionMatrix`), then IoU_c = TP_c / (TP_c + FP_c + FN_c). A class absent from both the
  truth and the predictions of the whole split has an undefined IoU (NaN) and is left out of the mean;
  a class present in one but not the other has IoU 0 and counts. Averaging per-batch mIoUs would weight
  small batches and rare classes wrongly, and is not done.
- **Classification (macro precision / recall / F1)**: the mean over all ``C`` classes, the convention of
  ``sklearn.metrics.*_score(labels=range(C), average="macro", zero_division=0)``: a class that is
  never predicted has precision 0, a class with no true items has recall 0, and both count in the mean.
- **Depth**: mean absolute error, root mean squared error and mean absolute relative error
  ``|d - d*| / d*``, over all valid pixels of the split.
- **Δm%** (Maninis et al. 2019; Vandenhende et al. 2021): for each task t, the mean over its metrics m of
  ``±100 (M_m - B_m) / B_m`` (+ when higher is better, − when lower is), then the mean over tasks. B is
  the single-task baseline. Positive Δm% means the multi-task model beats the single-task models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _tensor(x: ArrayLike | Iterable, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a tensor or array, got {type(x).__name__}: {err}") from None


def to_labels(target: ArrayLike, prediction: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target, prediction)`` as two integer tensors of the same shape (scores -> argmax over dim 1)."""
    t = _tensor(target, "target")
    p = _tensor(prediction, "prediction")
    if t.is_floating_point():
        raise TypeError(f"target must hold integer class labels, got dtype {t.dtype}")
    if p.dim() == t.dim() + 1:
        if p.dim() < 2:
            raise ValueError(f"scores need a class dimension at position 1, got prediction shape {tuple(p.shape)}")
        p = p.argmax(dim=1)
    elif p.is_floating_point():
        if not bool((p == p.round()).all()):
            raise ValueError("prediction has the target's shape but non-integer values: "
                             "pass labels or scores (N, C, ...)")
        p = p.long()
    if p.shape != t.shape:
        raise ValueError(
            f"prediction shape {tuple(p.shape)} does not match target shape {tuple(t.shape)} "
            "(labels must match the target's shape; scores add a class dimension at position 1)"
        )
    return t.long(), p.long()


def _check_range(values: torch.Tensor, n_classes: int, what: str) -> None:
    if values.numel() == 0:
        return
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= n_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{what} label {bad} is out of range: valid labels are 0..{n_classes - 1}")


def confusion_matrix(target: ArrayLike, prediction: ArrayLike, n_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """``(C, C)`` int64 counts, rows = true class, columns = predicted class; ignored targets dropped."""
    if not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    if ignore_index is not None and 0 <= ignore_index < n_classes:
        raise ValueError(f"ignore_index {ignore_index} collides with a class label (0..{n_classes - 1})")
    t, p = to_labels(target, prediction)
    t, p = t.reshape(-1), p.reshape(-1)
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    _check_range(t, n_classes, "target")
    _check_range(p, n_classes, "predicted")
    counts = torch.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


class ConfusionMatrix:
    """A confusion matrix accumulated batch by batch over a whole split.

    ``update(target, prediction)`` adds a batch (labels or scores, see the module docstring);
    :meth:`miou`, :meth:`iou`, :meth:`pixel_accuracy` read the totals.
    """

    def __init__(self, n_classes: int, ignore_index: int | None = None):
        if not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
        self.n_classes = n_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(n_classes, n_classes, dtype=torch.int64)

    def update(self, target: ArrayLike, prediction: ArrayLike) -> "ConfusionMatrix":
        self.matrix += confusion_matrix(target, prediction, self.n_classes, self.ignore_index)
        return self

    def iou(self) -> torch.Tensor:
        return iou_per_class(self.matrix)

    def miou(self) -> float:
        return mean_iou(self.matrix)

    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.matrix)


def _check_matrix(cm: ArrayLike) -> torch.Tensor:
    cm = _tensor(cm, "confusion matrix")
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix must be square (C, C), got shape {tuple(cm.shape)}")
    if bool((cm < 0).any()):
        raise ValueError("a confusion matrix holds counts; it has negative entries")
    return cm.double()


def iou_per_class(cm: ArrayLike) -> torch.Tensor:
    """IoU of every class ``(C,)`` from a confusion matrix: TP / (TP + FP + FN); NaN where the class is
    absent from both truth and prediction (union 0)."""
    cm = _check_matrix(cm)
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def mean_iou(cm: ArrayLike) -> float:
    """Mean IoU over the classes present in truth or prediction (absent classes are left out)."""
    iou = iou_per_class(cm)
    present = ~torch.isnan(iou)
    if not bool(present.any()):
        raise ValueError("mean IoU of an empty confusion matrix is undefined (no pixel was counted)")
    return float(iou[present].mean())


def pixel_accuracy(cm: ArrayLike) -> float:
    """Fraction of counted items (pixels) whose class is right: trace / sum."""
    cm = _check_matrix(cm)
    total = cm.sum()
    if total == 0:
        raise ValueError("pixel accuracy of an empty confusion matrix is undefined (no pixel was counted)")
    return float(cm.trace() / total)


def accuracy(target: ArrayLike, prediction: ArrayLike, ignore_index: int | None = None) -> float:
    """Fraction of items whose predicted label equals the target (ignored targets left out)."""
    t, p = to_labels(target, prediction)
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    if t.numel() == 0:
        raise ValueError("accuracy of zero items is undefined")
    return float((t == p).double().mean())


def precision_recall_f1(target: ArrayLike, prediction: ArrayLike, n_classes: int, average: str | None = "macro"
                        ) -> dict[str, float | torch.Tensor]:
    """Precision, recall and F1: per class ``(C,)`` tensors with ``average=None``, their means with
    ``"macro"`` (see the module docstring for classes without predictions or without true items)."""
    if average not in ("macro", None):
        raise ValueError(f"unknown average {average!r}; valid: 'macro', None")
    cm = confusion_matrix(target, prediction, n_classes).double()
    tp = cm.diagonal()
    predicted, actual = cm.sum(0), cm.sum(1)

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))

    scores = {"precision": ratio(tp, predicted), "recall": ratio(tp, actual), "f1": ratio(2 * tp, predicted + actual)}
    if average is None:
        return scores
    return {name: float(values.mean()) for name, values in scores.items()}


def classification_metrics(target: ArrayLike, prediction: ArrayLike, n_classes: int) -> dict[str, float]:
    """Accuracy and macro precision, recall and F1 of one split."""
    return {"accuracy": accuracy(target, prediction), **precision_recall_f1(target, prediction, n_classes)}


class DepthErrors:
    """Depth errors accumulated over a whole split: ``update(target, prediction, valid=None)``, then
    :meth:`compute` -> ``{"abs_err", "rmse", "rel_err"}`` (depth units, depth units, fraction)."""

    def __init__(self):
        self.abs_sum = 0.0
        self.sq_sum = 0.0
        self.rel_sum = 0.0
        self.count = 0

    def update(self, target: ArrayLike, prediction: ArrayLike, valid: ArrayLike | None = None) -> "DepthErrors":
        t = _tensor(target, "target").double()
        p = _tensor(prediction, "prediction").double()
        if p.dim() == t.dim() + 1 and p.shape[1] == 1:
            p = p.squeeze(1)
        if p.shape != t.shape:
            raise ValueError(f"depth prediction shape {tuple(p.shape)} does not match target shape {tuple(t.shape)}")
        if valid is not None:
            keep = _tensor(valid, "valid").bool()
            if keep.shape != t.shape:
                raise ValueError(f"valid mask shape {tuple(keep.shape)} does not match target shape {tuple(t.shape)}")
            t, p = t[keep], p[keep]
        if bool((t <= 0).any()):
            raise ValueError("depth targets must be positive (the relative error divides by them)")
        err = (p - t).abs()
        self.abs_sum += float(err.sum())
        self.sq_sum += float((err**2).sum())
        self.rel_sum += float((err / t).sum())
        self.count += t.numel()
        return self

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("depth errors of zero pixels are undefined")
        n = self.count
        return {"abs_err": self.abs_sum / n, "rmse": math.sqrt(self.sq_sum / n), "rel_err": self.rel_sum / n}


def delta_m(metrics: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]],
            higher_is_better: Mapping[str, bool]) -> tuple[float, dict[str, float]]:
    """Δm% of ``metrics`` against ``baseline`` (both ``{task: {metric: value}}``): per task the mean over
    its metrics of ``±100 (M - B) / B``, then the mean over tasks. Returns ``(overall, {task: Δ_task})``.

    Every metric of ``metrics`` must appear in ``baseline`` and in ``higher_is_better``.
    """
    if not metrics:
        raise ValueError("delta_m needs at least one task")
    per_task: dict[str, float] = {}
    for task, values in metrics.items():
        if task not in baseline:
            raise KeyError(f"no baseline for task {task!r}; baseline tasks: {sorted(baseline)}")
        if not values:
            raise ValueError(f"task {task!r} has no metrics")
        terms = []
        for name, value in values.items():
            if name not in baseline[task]:
                raise KeyError(f"baseline of task {task!r} has no metric {name!r}; it has {sorted(baseline[task])}")
            if name not in higher_is_better:
                raise KeyError(f"say whether higher is better for metric {name!r} (higher_is_better)")
            base = float(baseline[task][name])
            if base == 0:
                raise ValueError(f"baseline {task}/{name} is 0: a relative change is undefined")
            sign = 1.0 if higher_is_better[name] else -1.0
            terms.append(sign * 100.0 * (float(value) - base) / abs(base))
        per_task[task] = sum(terms) / len(terms)
    return sum(per_task.values()) / len(per_task), per_task


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_std of no values")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


# ---------------------------------------------------------------------------------- seeds and intervals
def student_t_two_sided(t: float, df: int) -> float:
    """P(−t < T < t) for Student's t with an integer number ``df`` >= 1 of degrees of freedom, in closed form
    (Abramowitz & Stegun 26.7.3-4: a finite series in θ = arctan(t / √df))."""
    if not isinstance(df, (int, np.integer)) or df < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df!r}")
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        term, series = math.cos(theta), 0.0  # cos θ, then cos θ · (2/3) cos²θ, ...
        for k in range(1, (df - 1) // 2 + 1):
            series += term
            term *= c2 * (2 * k) / (2 * k + 1)
        return (2.0 / math.pi) * (theta + s * series) if df > 1 else 2.0 * theta / math.pi
    term, series = 1.0, 0.0  # 1, (1/2) cos²θ, (1·3)/(2·4) cos⁴θ, ...
    for k in range(1, df // 2 + 1):
        series += term
        term *= c2 * (2 * k - 1) / (2 * k)
    return s * series


def student_t_quantile(level: float, df: int) -> float:
    """The t with P(−t < T < t) = ``level`` (two-sided) for Student's t with ``df`` degrees of freedom
    (``level = 0.95`` gives the familiar 12.706, 4.303, 3.182, 2.776, ... for df = 1, 2, 3, 4)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1), got {level!r}")
    lo, hi = 0.0, 1.0
    while student_t_two_sided(hi, df) < level:
        hi *= 2.0
    for _ in range(200):  # bisection to the float's resolution
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if student_t_two_sided(mid, df) < level else (lo, mid)
    return 0.5 * (lo + hi)


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the ``level`` confidence interval of the mean over a few independent runs
    (seeds): ``t_{n-1} · s / √n`` with Student's t, the right interval for small n (3 seeds: t = 4.30, not
    the normal 1.96). A single value has no interval (NaN half-width)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_ci of no values")
    if arr.size == 1:
        return float(arr[0]), float("nan")
    return float(arr.mean()), student_t_quantile(level, arr.size - 1) * float(arr.std(ddof=1)) / math.sqrt(arr.size)


def paired_difference(values: Iterable[float], reference: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and CI half-width of the per-seed differences ``values[s] - reference[s]``: runs that share a
    seed share the data order and the initialisation, so the paired interval is much narrower than the
    two separate ones. The difference is distinguishable from 0 when ``|mean| > half-width``."""
    a = np.asarray(list(values), dtype=np.float64)
    b = np.asarray(list(reference), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one reference per value, got {a.size} and {b.size}")
    return mean_ci(a - b, level)
