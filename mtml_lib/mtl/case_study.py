"""The experiment of notebook 02: one shared CNN for image classification, segmentation and depth, against
single-task networks, under every loss-weighting strategy.

Protocol, in the order the code follows it:

1. **Data**: the shape scenes of :mod:`mtml_lib.data.shapes`, with fixed train/validation/test splits
   (``data_seed``); the training seeds vary the initialisation, the batch order and the random strategies.
2. **Single-task baselines** (``"stl"``): for each task, the same encoder and the same head as in the
   multi-task model, trained alone; the epoch is selected on validation by the task's first metric.
3. **Multi-task models**, one per strategy: shared encoder, three heads, trained with
   :class:`~mtml_lib.mtl.trainer.MultiTaskTrainer`; the epoch is selected by the validation Δm% against
   the single-task validation metrics of the same seed (the quantity the table reports).
4. **Test**: every selected model is evaluated once on the test split; Δm% is computed per seed against
   that seed's single-task test metrics, then averaged over seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.nn import functional as F

from mtml_lib import config
from mtml_lib import metrics as M
from mtml_lib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mtml_lib.data import shapes
from mtml_lib.models.cnn import ClassifierHead, DenseDecoder, Encoder
from mtml_lib.models.multitask import MultiTaskModel, Task, mse_loss
from mtml_lib.mtl.trainer import History, MultiTaskTrainer
from mtml_lib.mtl.weighting import WEIGHTINGS, Weighting, get_weighting
from mtml_lib.mtl.weighting.uncertainty import CLASSIFICATION_KINDS, uncertainty_factors

TASKS: tuple[str, ...] = ("cls", "seg", "depth")
KINDS: dict[str, str] = {"cls": "classification", "seg": "segmentation", "depth": "depth"}
#: the metrics of each task that enter Δm% (the first one selects single-task epochs)
TASK_METRICS: dict[str, tuple[str, ...]] = {"cls": ("accuracy", "f1"), "seg": ("miou", "pixel_acc"),
                                            "depth": ("abs_err", "rel_err")}
HIGHER_IS_BETTER: dict[str, bool] = {"accuracy": True, "f1": True, "precision": True, "recall": True,
                                     "miou": True, "pixel_acc": True, "abs_err": False, "rmse": False,
                                     "rel_err": False}
#: strategies compared in the notebook, in table order
STRATEGIES: tuple[str, ...] = ("ew", "uw", "dwa", "rlw", "gradnorm", "pcgrad", "mgda", "cagrad")
STL = "stl"
#: initial output of the depth head: most pixels are background, at depth shapes.BACKGROUND_DEPTH
DEPTH_INIT = shapes.BACKGROUND_DEPTH


# ----------------------------------------------------------------------------------------------- model
def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Pixel-wise cross-entropy ``(B, C, H, W)`` vs ``(B, H, W)``; pixels marked ``IGNORE_INDEX`` are left out
    (as in :class:`mtml_lib.metrics.ConfusionMatrix`)."""
    if logits.dim() != 4 or masks.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"segmentation loss: logits {tuple(logits.shape)} need masks (B, H, W) = "
                         f"{(logits.shape[0], *logits.shape[2:])}, got {tuple(masks.shape)}")
    return F.cross_entropy(logits, masks, ignore_index=shapes.IGNORE_INDEX)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"classification loss: logits {tuple(logits.shape)} need labels ({logits.shape[0]},), "
                         f"got {tuple(labels.shape)}")
    return F.cross_entropy(logits, labels)


def make_task(name: str, widths: Sequence[int], cfg: shapes.ShapesConfig | None = None) -> Task:
    """The :class:`Task` ``"cls"`` (CE), ``"seg"`` (CE with ignore index) or ``"depth"`` (MSE)."""
    cfg = cfg or shapes.ShapesConfig()
    widths = tuple(widths)
    if name == "cls":
        return Task("cls", lambda: ClassifierHead(widths[-1], cfg.n_classes), classification_loss, KINDS["cls"],
                    (cfg.n_classes,))
    if name == "seg":
        return Task("seg", lambda: DenseDecoder(widths, cfg.n_mask_classes), segmentation_loss, KINDS["seg"],
                    (cfg.n_mask_classes, cfg.image_size, cfg.image_size))
    if name == "depth":
        return Task("depth", lambda: DenseDecoder(widths, 1, squeeze=True, bias=DEPTH_INIT), mse_loss, KINDS["depth"],
                    (cfg.image_size, cfg.image_size))
    raise ValueError(f"unknown task {name!r}; valid tasks: {list(TASKS)}")


def build_model(tasks: Sequence[str] = TASKS, widths: Sequence[int] = (16, 32, 64),
                cfg: shapes.ShapesConfig | None = None, seed: int | None = None) -> MultiTaskModel:
    """Shared :class:`Encoder` and one head per task; a single task gives the single-task network of the
    same size. ``seed`` fixes the initialisation."""
    if seed is not None:
        torch.manual_seed(seed)
    return MultiTaskModel(Encoder(3, widths), [make_task(t, widths, cfg) for t in tasks])


def make_strategy(name: str, tasks: Sequence[str], steps_per_epoch: int = 1, seed: int = 0) -> Weighting:
    """The strategy ``name`` for ``tasks`` with the options it needs (task kinds, epoch length, seed)."""
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting strategy {name!r}; valid strategies: {sorted(WEIGHTINGS)}")
    options: dict[str, Any] = {
        "uw": {"kinds": [KINDS[t] for t in tasks]},
        "dwa": {"steps_per_epoch": steps_per_epoch},
        "rlw": {"seed": seed},
        "pcgrad": {"seed": seed},
    }.get(name, {})
    return get_weighting(name, len(tasks), **options)


# ------------------------------------------------------------------------------------------------ data
class Batches:
    """Re-iterable mini-batches ``(images, {task: target})`` of a split, reshuffled every epoch from its own
    generator (``seed``), so runs repeat exactly."""

    def __init__(self, split: shapes.ShapesSplit, tasks: Sequence[str], batch_size: int, shuffle: bool = True,
                 seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.split, self.tasks, self.batch_size, self.shuffle = split, list(tasks), batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            targets = self.split.targets(idx)
            yield self.split.images[idx], {t: targets[t] for t in self.tasks}


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(model: MultiTaskModel, split: shapes.ShapesSplit, tasks: Sequence[str] | None = None,
             batch_size: int = 256) -> dict[str, dict[str, float]]:
    """Metrics of every task over the whole split: ``{"cls": {accuracy, precision, recall, f1},
    "seg": {miou, pixel_acc}, "depth": {abs_err, rmse, rel_err}}`` (see :mod:`mtml_lib.metrics`)."""
    tasks = list(model.task_names if tasks is None else tasks)
    device = next(model.parameters()).device
    n_classes = len(shapes.CATEGORIES)
    was_training = model.training
    model.eval()
    labels, predicted = [], []
    confusion = M.ConfusionMatrix(n_classes + 1, ignore_index=shapes.IGNORE_INDEX)
    depth = M.DepthErrors()
    try:
        for images, targets in Batches(split, tasks, batch_size, shuffle=False):
            out = model(images.to(device), task=tasks)
            if "cls" in out:
                labels.append(targets["cls"])
                predicted.append(out["cls"].argmax(1).cpu())
            if "seg" in out:
                confusion.update(targets["seg"], out["seg"].argmax(1).cpu())
            if "depth" in out:
                depth.update(targets["depth"], out["depth"].cpu())
    finally:
        model.train(was_training)
    result: dict[str, dict[str, float]] = {}
    if "cls" in tasks:
        result["cls"] = M.classification_metrics(torch.cat(labels), torch.cat(predicted), n_classes)
    if "seg" in tasks:
        result["seg"] = {"miou": confusion.miou(), "pixel_acc": confusion.pixel_accuracy()}
    if "depth" in tasks:
        result["depth"] = depth.compute()
    return result


def delta_m(task_metrics: dict[str, dict[str, float]],
            baseline: dict[str, dict[str, float]]) -> tuple[float, dict[str, float]]:
    """Δm% of ``task_metrics`` against ``baseline`` over the metrics in :data:`TASK_METRICS`."""
    chosen = {t: {m: task_metrics[t][m] for m in TASK_METRICS[t]} for t in task_metrics}
    return M.delta_m(chosen, baseline, HIGHER_IS_BETTER)


def _flat(task_metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{t}/{m}": v for t, values in task_metrics.items() for m, v in values.items()}


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class RunResult:
    """One trained model: ``method`` is a strategy name or ``"stl"`` (then ``tasks`` has one task)."""

    method: str
    seed: int
    tasks: list[str]
    val: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    history: History
    best_epoch: int | None
    wall_time_s: float
    model: MultiTaskModel | None = field(default=None, repr=False)
    cached: bool = False  # read back from a resumable study's cache, not trained in this call


def train_run(method: str, tasks: Sequence[str], data: dict[str, shapes.ShapesSplit], settings: Any, seed: int,
              baseline_val: dict[str, dict[str, float]] | None = None, keep_model: bool = False,
              device: torch.device | str = "cpu") -> RunResult:
    """Train one model and evaluate it on validation (selected epoch) and test.

    ``method``: ``"stl"`` (``tasks`` must then be one task) or a strategy name. ``settings`` needs
    ``widths``, ``epochs``, ``batch_size``, ``lr``, ``image_size`` and may set ``schedule`` (default
    cosine). Multi-task runs need ``baseline_val`` (the single-task validation metrics of the same seed)
    for model selection.
    """
    tasks = list(tasks)
    if method == STL and len(tasks) != 1:
        raise ValueError(f"a single-task run trains one task, got {tasks}")
    if method != STL and baseline_val is None:
        raise ValueError("multi-task runs select their epoch by validation Δm%: pass baseline_val")
    cfg = shapes.ShapesConfig(image_size=settings.image_size)
    model = build_model(tasks, settings.widths, cfg, seed=seed).to(device)
    batches = Batches(data["train"], tasks, settings.batch_size, seed=seed)
    strategy = make_strategy("ew" if method == STL else method, tasks, len(batches), seed)
    for p in strategy.parameters():
        p.data = p.data.to(device)

    if method == STL:
        metric = TASK_METRICS[tasks[0]][0]
        monitor, mode = f"{tasks[0]}/{metric}", "max" if HIGHER_IS_BETTER[metric] else "min"

        def validate(m: MultiTaskModel) -> dict[str, float]:
            return _flat(evaluate(m, data["val"], tasks))
    else:
        monitor, mode = "delta_m", "max"

        def validate(m: MultiTaskModel) -> dict[str, float]:
            values = evaluate(m, data["val"], tasks)
            return {**_flat(values), "delta_m": delta_m(values, baseline_val)[0]}

    t0 = time.perf_counter()
    trainer = MultiTaskTrainer(model, strategy, optimizer="adam", lr=settings.lr,
                               schedule=getattr(settings, "schedule", "cosine"),
                               progress=False, desc=f"{method} seed {seed}")
    history = trainer.fit(batches, settings.epochs, validate=validate, monitor=monitor, mode=mode)
    val = evaluate(model, data["val"], tasks)
    test = evaluate(model, data["test"], tasks)
    return RunResult(method, seed, tasks, val, test, history, history.best_epoch, time.perf_counter() - t0,
                     model if keep_model else None)


def load_data(settings: Any) -> dict[str, shapes.ShapesSplit]:
    """The fixed splits of the profile (``n_train``, ``n_val``, ``n_test``, ``image_size``, ``data_seed``)."""
    cfg = shapes.ShapesConfig(image_size=settings.image_size)
    sizes = {"train": settings.n_train, "val": settings.n_val, "test": settings.n_test}
    return shapes.make_splits(sizes, settings.data_seed, cfg)


@dataclass
class Study:
    """All runs of :func:`run_study`: ``runs[(method, seed)]`` (single-task runs under ``("stl:<task>", seed)``)."""

    runs: dict[tuple[str, int], RunResult]
    seeds: list[int]
    strategies: list[str]
    tasks: list[str]

    def stl_metrics(self, seed: int, split: str = "test") -> dict[str, dict[str, float]]:
        return {t: getattr(self.runs[(f"{STL}:{t}", seed)], split)[t] for t in self.tasks}

    def test_metrics(self, method: str, seed: int) -> dict[str, dict[str, float]]:
        return self.stl_metrics(seed) if method == STL else self.runs[(method, seed)].test


#: the settings a single run depends on (the others choose which runs there are, or what is shown)
RUN_SETTINGS: tuple[str, ...] = ("image_size", "n_train", "n_val", "n_test", "widths", "epochs", "batch_size", "lr",
                                 "schedule", "data_seed")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A digest of the source of everything a run's numbers depend on (data generation, models, losses,
    trainer, strategies, metrics, this module's training and evaluation functions): an edit to any of it
    makes :func:`run_path` name a new file, so a resumed study never mixes runs of two versions of the code.
    Computed once per process (it reads the source files)."""
    import hashlib
    import inspect
    import pkgutil

    from mtml_lib import metrics as metrics_module
    from mtml_lib.models import cnn, multitask
    from mtml_lib.mtl import trainer, weighting

    modules = [shapes, cnn, multitask, trainer, metrics_module, weighting]
    modules += [importlib.import_module(f"{weighting.__name__}.{m.name}") for m in pkgutil.iter_modules(weighting.__path__)]
    parts = [inspect.getsource(m) for m in modules]
    parts += [inspect.getsource(f) for f in (segmentation_loss, classification_loss, make_task, build_model,
                                            make_strategy, Batches, evaluate, delta_m, _flat, train_run, load_data)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def run_path(method: str, tasks: Sequence[str], settings: Any, seed: int, root: str | Path | None = None) -> Path:
    """Where a resumable study keeps one finished run: ``root`` (default ``config.cache_dir()/cls_seg``) /
    ``<method>-seed<seed>-<digest>.pt``, the digest covering the method, the tasks, the seed, every setting of
    :data:`RUN_SETTINGS` and :func:`code_fingerprint`."""
    import hashlib
    import json

    root = Path(root) if root is not None else config.cache_dir() / "cls_seg"
    key = {"method": method, "tasks": list(tasks), "seed": int(seed), "code": code_fingerprint(),
           **{name: getattr(settings, name, None) for name in RUN_SETTINGS}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:16]
    label = method if method != STL else f"{STL}-{tasks[0]}"
    return root / f"{label}-seed{int(seed)}-{digest}.pt"


def save_run(path: str | Path, run: RunResult, model: MultiTaskModel) -> Path:
    """Write a finished run (its selected model, metrics, history and time) with :func:`save_checkpoint`."""
    extra = {"method": run.method, "seed": run.seed, "tasks": run.tasks, "val": run.val, "test": run.test,
             "history": dataclasses.asdict(run.history), "best_epoch": run.best_epoch, "wall_time_s": run.wall_time_s}
    return save_checkpoint(path, model, extra)


def load_run(path: str | Path, method: str, tasks: Sequence[str], settings: Any, seed: int,
             keep_model: bool = False) -> RunResult:
    """Read a run written by :func:`save_run` back (checked: digest, model shapes, method, seed and tasks);
    raises :class:`~mtml_lib.checkpoint.CheckpointError` naming the file otherwise."""
    model = build_model(tasks, settings.widths, shapes.ShapesConfig(image_size=settings.image_size))
    payload = load_checkpoint(path, model)
    extra = payload["extra"]
    if (extra.get("method"), extra.get("seed"), extra.get("tasks")) != (method, int(seed), list(tasks)):
        raise CheckpointError(f"run file {path} holds {extra.get('method')!r} seed {extra.get('seed')} on "
                              f"{extra.get('tasks')}, not {method!r} seed {seed} on {list(tasks)}; delete it")
    model.eval()
    return RunResult(method, int(seed), list(tasks), extra["val"], extra["test"], History(**extra["history"]),
                     extra["best_epoch"], extra["wall_time_s"], model if keep_model else None, cached=True)


@dataclass(frozen=True)
class _Job:
    method: str
    tasks: tuple[str, ...]
    seed: int
    baseline_val: dict[str, dict[str, float]] | None = None


def _run_key(method: str, tasks: Sequence[str], seed: int) -> tuple[str, int]:
    """The key of a run in :attr:`Study.runs`: ``(method, seed)``, or ``("stl:<task>", seed)``."""
    return (f"{STL}:{tasks[0]}" if method == STL else method, seed)


#: per worker process: the data splits and the run options, set once by :func:`_init_worker`
_WORKER: dict[str, Any] = {}


def _init_worker(data: dict[str, shapes.ShapesSplit], settings: Any, device: str, keep_model: bool,
                 cache_root: str | None, threads: int, deterministic: bool) -> None:
    torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    _WORKER.update(data=data, settings=settings, device=device, keep_model=keep_model, cache_root=cache_root)


def _run_job(job: _Job) -> tuple[RunResult, dict[str, torch.Tensor] | None]:
    """Train one run (or read it from the cache of a resumable study) with the worker's data and options.
    Returns the run without its model (the heads hold closures, which cannot cross processes) and the
    model's parameters when the study keeps models."""
    w = _WORKER
    path = run_path(job.method, job.tasks, w["settings"], job.seed, w["cache_root"]) if w["cache_root"] else None
    if path is not None and path.is_file():
        run = load_run(path, job.method, job.tasks, w["settings"], job.seed, keep_model=True)
    else:
        run = train_run(job.method, job.tasks, w["data"], w["settings"], job.seed, job.baseline_val,
                        keep_model=True, device=w["device"])
        if path is not None:
            save_run(path, run, run.model)
    state = {k: v.detach().cpu() for k, v in run.model.state_dict().items()} if w["keep_model"] else None
    run.model = None
    return run, state


def run_study(settings: Any, data: dict[str, shapes.ShapesSplit] | None = None,
              on_run: Callable[[RunResult], None] | None = None, device: torch.device | str = "cpu",
              keep_models: bool = False, workers: int | None = None, resumable: bool | None = None,
              cache_root: str | Path | None = None) -> Study:
    """Single-task baselines and every strategy of ``settings.strategies`` over ``settings.seeds``.

    ``on_run`` is called after each run (progress, in the order runs finish); ``keep_models`` keeps the
    trained models in the runs. ``workers`` (default ``settings.workers``, else 1) trains that many runs at
    once in separate processes, each with ``settings.threads`` threads: the runs are independent, so the
    numbers are those of one process (a test checks it). A seed's strategies start once its three
    single-task networks are done (they select their epoch against them). ``resumable`` (default
    ``settings.resumable``) writes every finished run to ``cache_root`` (default ``config.cache_dir()/cls_seg``;
    see :func:`run_path`) and reads it back instead of training again, so a study that stopped continues
    where it was and a rerun of a finished one only evaluates.
    """
    data = data if data is not None else load_data(settings)
    tasks, strategies = list(TASKS), list(settings.strategies)
    for name in strategies:
        if name not in WEIGHTINGS:
            raise ValueError(f"unknown weighting strategy {name!r}; valid strategies: {sorted(WEIGHTINGS)}")
    workers = int(workers if workers is not None else getattr(settings, "workers", 1) or 1)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    resumable = bool(resumable if resumable is not None else getattr(settings, "resumable", False))
    root = str(cache_root if cache_root is not None else config.cache_dir() / "cls_seg") if resumable else None
    options = (data, settings, str(device), keep_models, root, getattr(settings, "threads", None) or 1,
               torch.are_deterministic_algorithms_enabled())

    runs: dict[tuple[str, int], RunResult] = {}

    def strategy_jobs(seed: int) -> list[_Job]:
        baseline_val = {t: {m: runs[(f"{STL}:{t}", seed)].val[t][m] for m in TASK_METRICS[t]} for t in tasks}
        # the gradient-based strategies take longest: start them first so that the workers finish together
        order = sorted(strategies, key=lambda name: not make_strategy(name, tasks).uses_gradients)
        return [_Job(name, tuple(tasks), seed, baseline_val) for name in order]

    def finished(result: tuple[RunResult, dict[str, torch.Tensor] | None]) -> RunResult:
        run, state = result
        if state is not None:
            run.model = build_model(run.tasks, settings.widths, shapes.ShapesConfig(image_size=settings.image_size))
            run.model.load_state_dict(state)
            run.model.to(device).eval()
        runs[_run_key(run.method, run.tasks, run.seed)] = run
        if on_run:
            on_run(run)
        return run

    stl_jobs = [_Job(STL, (t,), seed) for seed in settings.seeds for t in tasks]
    if workers == 1:
        saved_threads = torch.get_num_threads()
        _init_worker(*options)
        torch.set_num_threads(saved_threads)
        try:
            for seed in settings.seeds:
                for job in [j for j in stl_jobs if j.seed == seed]:
                    finished(_run_job(job))
                for job in strategy_jobs(seed):
                    finished(_run_job(job))
        finally:
            _WORKER.clear()
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # fork (Linux, CPU) copies the data into the workers for free and needs no `if __name__ == "__main__"`
        # guard in a user's script; CUDA cannot be used after a fork, so a GPU study spawns its workers
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() and torch.device(device).type == "cpu" \
            else "spawn"
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=options) as pool:
            pending = {pool.submit(_run_job, job) for job in stl_jobs}
            left = {seed: len(tasks) for seed in settings.seeds}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    run = finished(future.result())
                    if run.method == STL:
                        left[run.seed] -= 1
                        if left[run.seed] == 0:
                            pending |= {pool.submit(_run_job, job) for job in strategy_jobs(run.seed)}
    order = [_run_key(STL, [t], seed) for seed in settings.seeds for t in tasks]
    order += [_run_key(name, tasks, seed) for seed in settings.seeds for name in strategies]
    return Study({key: runs[key] for key in order}, list(settings.seeds), strategies, tasks)


def results_frame(study: Study) -> pd.DataFrame:
    """One row per (method, seed): test metrics of every task, Δm% (per task and overall) against the
    single-task networks of the same seed, the selected epoch and the training time (``time_s``; for
    ``"stl"`` the sum over the single-task networks)."""
    rows = []
    for method in [STL, *study.strategies]:
        for seed in study.seeds:
            test = study.test_metrics(method, seed)
            overall, per_task = delta_m(test, study.stl_metrics(seed))
            row: dict[str, Any] = {"method": method, "seed": seed, **_flat(test), "delta_m": overall}
            row.update({f"delta_m/{t}": v for t, v in per_task.items()})
            if method == STL:
                runs = [study.runs[(f"{STL}:{t}", seed)] for t in study.tasks]
                row["best_epoch"] = None
            else:
                runs = [study.runs[(method, seed)]]
                row["best_epoch"] = runs[0].best_epoch + 1 if runs[0].best_epoch is not None else None
            row["time_s"] = sum(r.wall_time_s for r in runs)
            rows.append(row)
    return pd.DataFrame(rows)


#: metrics in [0, 1] that tables show in percent
PERCENT_METRICS = ("accuracy", "f1", "precision", "recall", "miou", "pixel_acc", "rel_err")


def _metric_columns(frame: pd.DataFrame, columns: Sequence[str] | None) -> list[str]:
    return list(columns) if columns is not None else \
        [c for c in frame.columns if c not in ("method", "seed", "best_epoch", "time_s")]


def _cell(mean: float, half: float, column: str, percent: bool, signed: bool = False) -> str:
    scale = 100.0 if percent and column.split("/")[-1] in PERCENT_METRICS else 1.0
    digits = 3 if column.startswith("depth/") and scale == 1.0 else 1
    sign = "+" if signed else ""
    text = f"{mean * scale:{sign}.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {half * scale:.{digits}f}"


def summary_table(frame: pd.DataFrame, columns: Sequence[str] | None = None, percent: bool = True) -> pd.DataFrame:
    """``mean ± half-width of the 95 % confidence interval`` over seeds per method (Student's t with
    n - 1 degrees of freedom, :func:`mtml_lib.metrics.mean_ci`; one seed: the value alone), rows in the
    frame's order; by default every metric and Δm% column. Metrics of :data:`PERCENT_METRICS` are shown in
    percent; Δm% columns already are percentages."""
    out = {}
    for method, group in frame.groupby("method", sort=False):
        out[method] = {c: _cell(*M.mean_ci(group.sort_values("seed")[c]), c, percent)
                       for c in _metric_columns(frame, columns)}
    return pd.DataFrame.from_dict(out, orient="index")


def paired_differences(frame: pd.DataFrame, columns: Sequence[str] | None = None, reference: str = "ew"
                       ) -> pd.DataFrame:
    """Per method and column, the mean difference to ``reference`` over the seeds they share and the
    half-width of its 95 % interval (:func:`mtml_lib.metrics.paired_difference`): a long table with
    ``method, column, diff, half, better, distinguishable``. ``better`` accounts for the metric's direction
    (a lower depth error is better); ``distinguishable`` is True when the interval excludes 0."""
    ref = frame[frame.method == reference].set_index("seed")
    if ref.empty:
        raise ValueError(f"no runs of the reference method {reference!r}; methods: {list(frame.method.unique())}")
    rows = []
    for method, group in frame.groupby("method", sort=False):
        if method == reference:
            continue
        group = group.set_index("seed")
        seeds = sorted(set(group.index) & set(ref.index))
        for column in _metric_columns(frame, columns):
            diff, half = M.paired_difference(group.loc[seeds, column], ref.loc[seeds, column])
            higher = HIGHER_IS_BETTER.get(column.split("/")[-1], True)
            rows.append({"method": method, "column": column, "diff": diff, "half": half,
                         "better": (diff > 0) == higher and diff != 0,
                         "distinguishable": bool(abs(diff) > half) if not math.isnan(half) else False})
    return pd.DataFrame(rows)


def paired_table(frame: pd.DataFrame, columns: Sequence[str] | None = None, reference: str = "ew",
                 percent: bool = True) -> pd.DataFrame:
    """:func:`paired_differences` as a table of ``diff ± half`` cells (one row per method); a cell whose
    interval excludes 0 is marked ``*``."""
    long = paired_differences(frame, columns, reference)
    out: dict[str, dict[str, str]] = {}
    for row in long.itertuples():
        cell = _cell(row.diff, row.half, row.column, percent, signed=True)
        out.setdefault(row.method, {})[row.column] = cell + (" *" if row.distinguishable else "")
    return pd.DataFrame.from_dict(out, orient="index")


def late_gains(study: Study, fraction: float = 0.25) -> pd.DataFrame:
    """How much each run's selection metric still improved in the last ``fraction`` of its epochs: the best
    validation value over all epochs minus the best over the epochs before that last part (≥ 0; in the
    metric's units, Δm% points for multi-task runs). Near 0 means the run had reached its plateau within the
    budget. The last part holds at least one validation. One row per run: ``method, task`` (``"all"`` for multi-task runs), ``seed, metric, gain``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    rows = []
    for (key, seed), run in study.runs.items():
        if key.startswith(STL):
            task = run.tasks[0]
            metric, method = f"{task}/{TASK_METRICS[task][0]}", STL
        else:
            task, metric, method = "all", "delta_m", key
        sign = 1.0 if metric == "delta_m" or HIGHER_IS_BETTER[metric.split("/")[1]] else -1.0
        values = [sign * v[metric] for v in run.history.val]
        if len(values) < 2:
            raise ValueError(f"run {key} seed {seed} has {len(values)} validation(s): a late gain needs two")
        cut = min(max(1, int(round(len(values) * (1.0 - fraction)))), len(values) - 1)
        rows.append({"method": method, "task": task, "seed": seed, "metric": metric,
                     "gain": max(values) - max(values[:cut])})
    return pd.DataFrame(rows)


def curves_frame(study: Study) -> pd.DataFrame:
    """Long table of per-epoch training losses and validation metrics: ``method, seed, epoch, task,
    train_loss`` and the validation metrics of that task."""
    rows = []
    for (key, seed), run in study.runs.items():
        method = STL if key.startswith(STL) else key
        val_by_epoch = {v["epoch"]: v for v in run.history.val}
        for task in run.tasks:
            for epoch, loss in enumerate(run.history.task_losses[task]):
                row = {"method": method, "seed": seed, "epoch": epoch + 1, "task": task, "train_loss": loss}
                for metric in TASK_METRICS[task]:
                    row[f"val_{metric}"] = val_by_epoch.get(epoch, {}).get(f"{task}/{metric}")
                rows.append(row)
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------------- figures
#: colours of the mask classes: background, then one per category; ignored pixels are drawn white
MASK_COLOURS = ("#d9d9d9", "#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc")


def mask_image(mask: torch.Tensor) -> torch.Tensor:
    """An RGB picture ``(H, W, 3)`` of a mask ``(H, W)`` in :data:`MASK_COLOURS` (ignored pixels white)."""
    from matplotlib.colors import to_rgb

    palette = torch.tensor([to_rgb(c) for c in MASK_COLOURS] + [(1.0, 1.0, 1.0)])
    index = torch.where(mask == shapes.IGNORE_INDEX, len(MASK_COLOURS), mask).long()
    return palette[index]


def plot_scenes(split: shapes.ShapesSplit, n: int, predictions: dict[str, dict[str, torch.Tensor]] | None = None):
    """A grid with one column per image: the image (titled with its label), its mask and depth map, and
    optionally rows of predicted masks/depths (``{row title: {"seg": (n, H, W), "depth": (n, H, W)}}``).
    A legend below names the mask colours; a colour bar gives the depth scale."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    rows: list[tuple[str, Callable[[int], tuple[Any, dict]]]] = [
        ("image", lambda i: (split.images[i].permute(1, 2, 0), {})),
        ("mask", lambda i: (mask_image(split.masks[i]), {})),
        ("depth", lambda i: (split.depth[i], {"cmap": "viridis_r", "vmin": 1.0, "vmax": shapes.BACKGROUND_DEPTH})),
    ]
    for title, pred in (predictions or {}).items():
        if "seg" in pred:
            rows.append((f"{title}\nmask", lambda i, p=pred: (mask_image(p["seg"][i]), {})))
        if "depth" in pred:
            rows.append((f"{title}\ndepth", lambda i, p=pred: (p["depth"][i], {"cmap": "viridis_r", "vmin": 1.0,
                                                                                 "vmax": shapes.BACKGROUND_DEPTH})))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.45 * n + 1.6, 1.45 * len(rows) + 0.5), squeeze=False,
                             layout="constrained")
    for r, (title, picture) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            data, style = picture(i)
            ax.imshow(data, interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if r == 0:
                ax.set_title(shapes.CATEGORIES[int(split.labels[i])], fontsize="small")
        axes[r, 0].set_ylabel(title, fontsize="small")
    depth_axes = [ax for r, (title, _) in enumerate(rows) if title.endswith("depth") for ax in axes[r]]
    scale = ScalarMappable(Normalize(1.0, shapes.BACKGROUND_DEPTH), cmap="viridis_r")
    fig.colorbar(scale, ax=depth_axes, label="depth", shrink=0.9, aspect=12 * len(depth_axes) // n)
    names = ("background", *shapes.CATEGORIES, "ignored (255)")
    colours = (*MASK_COLOURS, "white")
    handles = [Patch(facecolor=c, edgecolor="0.4", label=name) for name, c in zip(names, colours)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize="x-small", title="mask classes",
               title_fontsize="x-small", frameon=False)
    return fig


@torch.no_grad()
def predictions(study: Study, split: shapes.ShapesSplit, methods: Sequence[str], seed: int, n: int
                ) -> dict[str, dict[str, torch.Tensor]]:
    """Predicted masks and depth maps of the first ``n`` images of ``split`` by each method's model
    (``"stl"``: the single-task segmentation and depth networks). Needs runs kept with their models."""
    images = split.images[:n]
    out: dict[str, dict[str, torch.Tensor]] = {}
    for method in methods:
        found = {}
        for task in ("seg", "depth"):
            key = (f"{STL}:{task}", seed) if method == STL else (method, seed)
            model = study.runs[key].model
            if model is None:
                raise ValueError(f"run {key} kept no model: call run_study(..., keep_models=True)")
            model.eval()
            device = next(model.parameters()).device
            pred = model(images.to(device), task=task).cpu()
            found[task] = pred.argmax(1) if task == "seg" else pred
        out[method] = found
    return out


def _plain_axes(*axes) -> None:
    """Integer epochs on x; plain numbers (0.2, 0.5, 1 rather than powers of ten) on logarithmic y axes."""
    from matplotlib.ticker import MaxNLocator

    from mtml_lib.plotting import plain_log_axis

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_yscale() == "log":
            plain_log_axis(ax, "y")


def plot_curves(study: Study):
    """Training loss (top) and validation metric (bottom) per task and epoch, mean over seeds; single-task
    networks dashed grey, every strategy in its colour of :data:`mtml_lib.plotting.METHOD_COLOURS`."""
    import matplotlib.pyplot as plt

    from mtml_lib.plotting import canonical_method, method_style

    frame = curves_frame(study)
    methods = [STL, *study.strategies]
    fig, axes = plt.subplots(2, len(study.tasks), figsize=(4.0 * len(study.tasks), 6.0), squeeze=False)
    for j, task in enumerate(study.tasks):
        metric = TASK_METRICS[task][0]
        part = frame[frame.task == task].groupby(["method", "epoch"], sort=False).mean(numeric_only=True).reset_index()
        for method in methods:
            rows = part[part.method == method]
            style = method_style(method) | {"lw": 1.8 if method == STL else 1.2}
            axes[0, j].plot(rows.epoch, rows.train_loss, label=canonical_method(method), **style)
            axes[1, j].plot(rows.epoch, rows[f"val_{metric}"], **style)
        axes[0, j].set(title=f"{task}: training loss", yscale="log", xlabel="epoch")
        axes[1, j].set(title=f"{task}: validation {metric}", xlabel="epoch")
        _plain_axes(axes[0, j], axes[1, j])
    axes[0, 0].legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    return fig


def uw_weights_frame(study: Study) -> pd.DataFrame:
    """Per epoch and task, UW's effective weight c e^{-s} and σ² = e^{s} (mean over seeds)."""
    rows = []
    for (method, seed), run in study.runs.items():
        if method != "uw":
            continue
        factors = uncertainty_factors([KINDS[t] for t in run.tasks]).tolist()
        for epoch, weights in enumerate(run.history.weights):
            for task, w, c in zip(run.tasks, weights, factors):
                rows.append({"seed": seed, "epoch": epoch + 1, "task": task, "weight": w, "sigma2": c / w})
    if not rows:
        raise ValueError("the study has no uncertainty-weighting ('uw') runs")
    return pd.DataFrame(rows).groupby(["task", "epoch"], sort=False).mean(numeric_only=True).reset_index()


def plot_uw_weights(study: Study):
    """UW's learned weights c e^{-s_i} per task over the epochs, next to the training losses (log scale)."""
    import matplotlib.pyplot as plt

    from mtml_lib.plotting import dataset_colour

    frame = uw_weights_frame(study)
    losses = curves_frame(study)
    losses = losses[losses.method == "uw"].groupby(["task", "epoch"], sort=False).mean(numeric_only=True).reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for task in study.tasks:
        part = frame[frame.task == task]
        form = "L/σ²" if KINDS[task] in CLASSIFICATION_KINDS else "L/2σ²"
        axes[0].plot(part.epoch, part.weight, marker="o", ms=3, color=dataset_colour(task), label=f"{task} ({form})")
        part = losses[losses.task == task]
        axes[1].plot(part.epoch, part.train_loss, marker="o", ms=3, color=dataset_colour(task), label=task)
    axes[0].set(title="UW: learned task weight c·exp(-s)", xlabel="epoch")
    axes[1].set(title="UW: training loss per task", xlabel="epoch", yscale="log")
    _plain_axes(*axes)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_toy_directions(grads: torch.Tensor, c: float = 0.4):
    """The update of EW, PCGrad, MGDA and CAGrad for two 2-D task gradients (all on the EW scale)."""
    import matplotlib.pyplot as plt

    from mtml_lib.plotting import method_colour
    from mtml_lib.mtl.weighting.cagrad import cagrad_direction
    from mtml_lib.mtl.weighting.mgda import mgda_direction
    from mtml_lib.mtl.weighting.pcgrad import pcgrad

    n = grads.shape[0]
    directions = {"EW": grads.sum(0), "PCGrad": pcgrad(grads), "MGDA": n * mgda_direction(grads)[0],
                  "CAGrad": n * cagrad_direction(grads, c)[0]}
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    for i, g in enumerate(grads):
        ax.annotate("", xy=g.tolist(), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "grey", "lw": 1.5})
        ax.text(float(g[0]) * 1.05, float(g[1]) * 1.05, f"$g_{i + 1}$", color="grey")
    for name, d in directions.items():
        colour = method_colour(name)
        ax.annotate("", xy=d.tolist(), xytext=(0, 0), arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 2})
        ax.plot([], [], color=colour, lw=2, label=name)
    points = torch.cat([grads, torch.stack(list(directions.values()))])
    lo, hi = points.min(0).values.clamp(max=0) - 0.3, points.max(0).values.clamp(min=0) + 0.3
    ax.set(xlim=(float(lo[0]), float(hi[0])), ylim=(float(lo[1]), float(hi[1])), aspect="equal")
    ax.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    return fig, directions


# ---------------------------------------------------------------------------------- the reading, in words
#: strategies that combine per-task gradients (one backward pass per task through the encoder)
GRADIENT_BASED: tuple[str, ...] = ("gradnorm", "pcgrad", "mgda", "cagrad")


def _label(method: str) -> str:
    from mtml_lib.plotting import canonical_method

    return canonical_method(method)


def _span(values, fmt: str = "{:.1f}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if abs(hi - lo) < 1e-12 else f"{fmt.format(lo)} to {fmt.format(hi)}"


def describe_results(record: dict[str, Any]) -> str:
    """The reading of one run of notebook 02 as Markdown bullets, every number taken from ``record``
    (the dict the notebook writes to ``results/<profile>/02_multitask_cls_seg.json``: ``mean``,
    ``paired_vs_ew``, ``late_gain``, ``settings`` and, when recorded, ``uw_final_weights``), so that the
    words follow the profile and the seeds that produced the numbers."""
    mean, settings = record["mean"], record["settings"]
    strategies = [m for m in mean if m != STL]
    stl = mean[STL]
    n_seeds = len(settings["seeds"])
    lines = []

    acc = {m: 100 * (mean[m]["cls/accuracy"] - stl["cls/accuracy"]) for m in strategies}
    gain = [m for m in strategies if acc[m] > 0]
    loss = [m for m in strategies if acc[m] <= 0]
    text = (f"- **Classification.** {len(gain)} of the {len(strategies)} strategies beat the single-task classifier "
            f"({100 * stl['cls/accuracy']:.1f} % test accuracy)")
    if gain:
        best = sorted(gain, key=acc.get, reverse=True)[:2]
        text += (f", by {_span([acc[m] for m in gain])} points (best: "
                 + ", ".join(f"{_label(m)} {100 * mean[m]['cls/accuracy']:.1f} %" for m in best) + ")")
    if loss:
        text += "; " + ", ".join(f"{_label(m)} loses {-acc[m]:.1f}" for m in loss) + " points"
    lines.append(text + ". The shared encoder also learns from the per-pixel segmentation and depth losses; this "
                 "run does not isolate whether that is the cause.")

    miou = {m: 100 * mean[m]["seg/miou"] for m in strategies}
    err = {m: 100 * (mean[m]["depth/abs_err"] / stl["depth/abs_err"] - 1) for m in strategies}
    seg_better = [m for m in strategies if miou[m] > 100 * stl["seg/miou"]]
    depth_better = [m for m in strategies if err[m] < 0]
    lines.append(
        f"- **Segmentation and depth.** mIoU goes from the single-task {100 * stl['seg/miou']:.1f} % to "
        f"{_span(miou.values())} % ({'better with ' + ', '.join(map(_label, seg_better)) if seg_better else 'lower under every strategy'}); "
        f"the depth error from {stl['depth/abs_err']:.3f} to {_span([mean[m]['depth/abs_err'] for m in strategies], '{:.3f}')} "
        f"({_span(err.values(), '{:+.0f}')} % relative; "
        f"{'better with ' + ', '.join(map(_label, depth_better)) if depth_better else 'worse under every strategy'}).")

    dm = {m: mean[m]["delta_m"] for m in strategies}
    ranked = sorted(strategies, key=dm.get, reverse=True)
    below = sum(dm[m] < 0 for m in strategies)
    terms = {t: sum(abs(mean[m][f"delta_m/{t}"]) for m in strategies) / len(strategies) for t in TASKS}
    largest = max(terms, key=terms.get)
    by_task = sorted(strategies, key=lambda m: mean[m][f"delta_m/{largest}"], reverse=True)[:2]
    lines.append(
        f"- **Δm%** folds the trade-off into one number: {below} of {len(strategies)} strategies are below the "
        f"single-task networks (Δm% < 0). Ranked: " + ", ".join(f"{_label(m)} {dm[m]:+.1f}" for m in ranked)
        + f". The largest of the three task terms is {largest}'s (mean size "
        + ", ".join(f"{terms[t]:.1f}" for t in TASKS) + f" points for {', '.join(TASKS)}); the two strategies best on "
        f"{largest} ({', '.join(map(_label, by_task))}) rank " + " and ".join(str(ranked.index(m) + 1) for m in by_task)
        + " on Δm%.")

    paired = {r["method"]: r for r in record["paired_vs_ew"] if r["column"] == "delta_m"}
    if n_seeds < 2:
        lines.append(f"- **Against EW, paired by seed.** One seed: the differences ("
                     + ", ".join(f"{_label(m)} {paired[m]['diff']:+.1f}" for m in strategies if m in paired and m != "ew")
                     + " Δm% points) have no interval, so this run cannot say which are real.")
    else:
        dist = [m for m in strategies if m in paired and paired[m]["distinguishable"]]
        lines.append(f"- **Against EW, paired by seed** ({n_seeds} seeds, 95 % interval): "
                     + (", ".join(f"{_label(m)} {paired[m]['diff']:+.1f} ± {paired[m]['half']:.1f}" for m in dist)
                        + " are distinguishable from EW; the others are not." if dist else "no strategy is distinguishable from EW."))

    if "rlw" in dm and "ew" in dm:
        others = [dm[m] for m in strategies if m != "rlw"]
        inside = min(others) <= dm["rlw"] <= max(others)
        verdict = ("within the range of the other strategies" if inside else
                   "below every other strategy" if dm["rlw"] < min(others) else "above every other strategy")
        extra = ""
        if n_seeds >= 2 and "rlw" in paired:
            extra = (f"; paired with EW it differs by {paired['rlw']['diff']:+.1f} ± {paired['rlw']['half']:.1f}, "
                     + ("distinguishable" if paired["rlw"]["distinguishable"] else "not distinguishable"))
        lines.append(f"- **RLW** (random weights every step) reaches Δm% {dm['rlw']:+.1f}, {verdict} "
                     f"({_span(others, '{:+.1f}')}){extra}. Lin et al. (2022) report that random loss weights are "
                     "competitive with the elaborate strategies: it is the baseline a strategy must beat to earn its cost.")

    if record.get("uw_final_weights"):
        w = record["uw_final_weights"]
        start = dict(zip(w, uncertainty_factors([KINDS[t] for t in w]).tolist()))
        moved = max(w, key=lambda t: abs(math.log(w[t] / start[t])))
        lines.append("- **UW's learned weights** c/σ² went from " + ", ".join(f"{start[t]:g} to {w[t]:.2f} ({t})" for t in w)
                     + f" over {settings['epochs']} epochs; the largest relative change is {moved}'s, "
                       f"a factor {w[moved] / start[moved]:.2f}.")

    times = {m: mean[m]["time_s"] / mean["ew"]["time_s"] for m in strategies if m in GRADIENT_BASED}
    if times and "ew" in mean:
        lines.append(f"- **Cost.** The gradient-based strategies took {_span(times.values())} times EW's training time: "
                     "they need one backward pass per task through the shared encoder (their own arithmetic on the "
                     "gradients is timed in `benchmarks/bench_weighting.py`).")

    gains = pd.DataFrame(record["late_gain"])
    stl_gain = gains[gains.method == STL].groupby("metric").gain.mean()
    shared_gain = gains[gains.method != STL].groupby("method").gain.mean()
    units = {"cls/accuracy": ("{:.1f}", "accuracy points"), "seg/miou": ("{:.1f}", "mIoU points"),
             "depth/abs_err": ("{:.4f}", "depth error")}
    lines.append(
        f"- **Did training finish?** In the last quarter of the epochs the single-task networks still gained "
        + ", ".join(units[k][0].format(v) + " " + units[k][1] for k, v in stl_gain.items() if k in units)
        + f" on validation, and the shared networks {_span(shared_gain.values)} Δm% points. Gains well above zero "
          "mean the comparison partly measures how fast each network learns, not where it ends.")
    return "\n".join(lines)
