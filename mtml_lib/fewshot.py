"""Few-shot image classification experiments: build a learner, train it episodically, evaluate it.

One :class:`TrainSpec` describes one learner and how it is meta-trained; :func:`train` runs it with
validation-based model selection (the parameters with the best validation accuracy are kept, never the
test-selected ones); :func:`evaluate` measures accuracy on fresh test episodes with a 95% confidence
interval; :func:`accuracy_vs_steps` gives the MAML family's accuracy after each adaptation step.
``train(..., checkpoint=fewshot.checkpoint_path(...))`` makes a long run resumable. For error analysis,
:func:`one_shot_confusion` and :func:`expected_accuracy` take a ProtoNet's 1-shot errors apart class pair
by class pair, and :func:`confusion_report` names the classes and pairs behind them.

Learners (all on the Conv4 backbone, ``norm="plain"`` unless the spec says otherwise):

* ``protonet``: Prototypical Networks (:mod:`mtml_lib.meta.protonet`); one encoder serves any N-way K-shot;
* ``maml``, ``fomaml``, ``anil``, ``metasgd``: the MAML family (:class:`mtml_lib.meta.MetaLearner`) with a
  linear head of ``n_way`` outputs, so a model serves the number of ways it was trained for (any shot).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from mtml_lib.data.episodes import ClassDataset, EpisodeSampler
from mtml_lib.meta import MetaLearner, mean_ci95, meta_train
from mtml_lib.meta.protonet import ProtoNet
from mtml_lib.meta.tasks import TaskBatch
from mtml_lib.models.backbones import Conv4, StridedConv4

LEARNERS: tuple[str, ...] = ("protonet", "maml", "fomaml", "anil", "metasgd")
#: how the MAML family's linear head starts: torch's default random init, zero, or zero after every
#: meta-update (the "zeroing trick" of Kao, Chiu & Chen, ICLR 2022)
HEAD_INITS: tuple[str, ...] = ("random", "zero", "zeroing")
#: the MAML family's backbone: this package's Conv4 (max-pooling) or the Conv4 of Finn et al.'s Omniglot code
BACKBONES: tuple[str, ...] = ("conv4", "strided")
#: how a task's loss is reduced over its examples: the mean, or Finn et al.'s sum divided by the shot
LOSSES: tuple[str, ...] = ("mean", "sum_over_shot")
MAML_FAMILY: tuple[str, ...] = ("maml", "fomaml", "anil", "metasgd")


@dataclass(frozen=True)
class TrainSpec:
    """One learner and its episodic meta-training.

    ``n_way``/``k_shot``/``n_query``: the training episodes. ``meta_batch``: episodes per update.
    ``meta_lr``: Adam step size, decayed to zero on a cosine over ``iterations`` when ``cosine``.
    ``inner_lr``/``inner_steps``/``test_steps``: the MAML family's inner loop (ignored by ProtoNets).
    ``hidden``/``norm``: the Conv4 backbone. ``val_every``/``val_episodes``: model selection on a fixed
    set of validation episodes (``val_way``-way ``val_shot``-shot; default: the training way and shot).
    ``refresh_every``: draw fresh distortions of the training characters every so many iterations
    (None: keep the instances fixed, like Omniglot's 20 drawings). ``head_init`` (MAML family): the
    linear head's weight and bias start random (torch's default), at ``"zero"``, or are set to zero after
    every meta-update too (``"zeroing"``, Kao et al. 2022). Why zero helps: a head that starts at zero
    gives every class the same logit, so one inner step sets the row of class c to
    (α/n) Σ_j (1[y_j = c] - 1/N) φ(x_j), the class's support features against those of all classes (a
    prototype), and no random row favours one label before the task is seen; with ``"zeroing"`` the
    meta-learned head is always zero and the inner loop alone builds it from the support set.

    Published protocols (the ``paper`` profile) need four more switches. ``backbone="strided"``: the
    :class:`~mtml_lib.models.backbones.StridedConv4` of Finn et al., its normalisation left out of the
    inner loop as theirs. ``loss="sum_over_shot"``: a task's cross-entropy summed over its examples and
    divided by ``k_shot``, as their code computes it, so their α = 0.4 (5-way) is α = 2.0 on the mean.
    ``halve_every``: halve Adam's step every so many iterations instead of the cosine (Snell et al.);
    ``select="last"``: keep the last parameters rather than the best on validation (Finn et al. select
    no model). ``match_shot``: the learner serves only episodes of its own ``k_shot`` (both papers train
    one model per shot).
    """

    learner: str
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 5
    meta_batch: int = 1
    iterations: int = 1000
    meta_lr: float = 1e-3
    cosine: bool = True
    inner_lr: float = 0.4
    inner_steps: int = 1
    test_steps: int = 3
    hidden: int = 64
    norm: str = "plain"
    val_every: int = 100
    val_episodes: int = 100
    val_way: int | None = None
    val_shot: int | None = None
    refresh_every: int | None = None
    head_init: str = "random"
    backbone: str = "conv4"
    loss: str = "mean"
    halve_every: int | None = None
    select: str = "best"
    match_shot: bool = False

    def __post_init__(self):
        if self.learner not in LEARNERS:
            raise ValueError(f"unknown learner {self.learner!r}; valid learners: {', '.join(map(repr, LEARNERS))}")
        for name, valid in (("backbone", BACKBONES), ("loss", LOSSES), ("select", ("best", "last"))):
            if getattr(self, name) not in valid:
                raise ValueError(f"TrainSpec.{name} must be one of {', '.join(map(repr, valid))}, "
                                 f"got {getattr(self, name)!r}")
        if self.backbone == "strided" and self.learner == "protonet":
            raise ValueError("TrainSpec.backbone 'strided' is the MAML family's (Finn et al.); ProtoNets use 'conv4'")
        if self.halve_every is not None and self.cosine:
            raise ValueError("TrainSpec: choose one schedule, cosine=True or halve_every, not both")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"TrainSpec.head_init must be one of {', '.join(map(repr, HEAD_INITS))}, "
                             f"got {self.head_init!r}")
        for name in ("n_way", "k_shot", "n_query", "meta_batch", "iterations", "inner_steps", "hidden", "val_every",
                     "val_episodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainSpec.{name} must be an integer >= 1, got {value!r}")
        if self.refresh_every is not None and self.refresh_every < 1:
            raise ValueError(f"TrainSpec.refresh_every must be None or >= 1, got {self.refresh_every!r}")

    @property
    def name(self) -> str:
        """Readable label, e.g. ``"MAML 5-way"`` (ProtoNets serve every way: no suffix; a shot-matched
        learner adds its shot: ``"MAML 5-way 5-shot"``, ``"ProtoNet 1-shot"``)."""
        label = {"protonet": "ProtoNet", "maml": "MAML", "fomaml": "FOMAML", "anil": "ANIL", "metasgd": "Meta-SGD"}
        name = label[self.learner] if self.learner == "protonet" else f"{label[self.learner]} {self.n_way}-way"
        return f"{name} {self.k_shot}-shot" if self.match_shot else name

    def serves(self, n_way: int, k_shot: int | None = None) -> bool:
        """Whether a learner trained with this spec classifies ``n_way``-way (``k_shot``-shot) episodes."""
        if self.match_shot and k_shot is not None and k_shot != self.k_shot:
            return False
        return self.learner == "protonet" or self.n_way == n_way


def make_learner(spec: TrainSpec, in_channels: int = 1, image_size: int = 28) -> ProtoNet | MetaLearner:
    """A fresh, randomly initialised learner for ``spec`` (seed torch before calling for repeatability)."""
    if spec.learner == "protonet":
        return ProtoNet(Conv4(in_channels, spec.hidden, None, norm=spec.norm, image_size=image_size))
    inner_params = None
    if spec.backbone == "strided":
        model = StridedConv4(in_channels, spec.hidden, spec.n_way)
        inner_params = model.fast_names if spec.learner != "anil" else None
    else:
        model = Conv4(in_channels, spec.hidden, spec.n_way, norm=spec.norm, image_size=image_size)
    loss_fn = F.cross_entropy if spec.loss == "mean" else functools.partial(sum_over_shot_cross_entropy,
                                                                           k_shot=spec.k_shot)
    learner = MetaLearner(model, loss_fn, algorithm=spec.learner, inner_lr=spec.inner_lr,
                          inner_steps=spec.inner_steps, test_steps=spec.test_steps, inner_params=inner_params)
    if spec.head_init != "random":
        zero_head(learner)
    return learner


def sum_over_shot_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, k_shot: int) -> torch.Tensor:
    """Finn et al.'s reduction: the cross-entropy of a task's examples summed, divided by ``k_shot``
    (= N x the mean for N-way episodes with ``k_shot`` examples per class)."""
    return F.cross_entropy(logits, labels, reduction="sum") / k_shot


@torch.no_grad()
def zero_head(learner: MetaLearner) -> None:
    """Set the weight and bias of the learner's linear head (``model.head``) to zero, in place."""
    head = getattr(learner.model, "head", None)
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"zero_head needs a model with a linear head, got {type(head).__name__}")
    head.weight.zero_()
    head.bias.zero_()


def _accuracy(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction.argmax(-1) == target).float().mean()


@torch.no_grad()
def episode_accuracy(learner: ProtoNet | MetaLearner, batch: TaskBatch, steps: int | None = None) -> torch.Tensor:
    """Query accuracy ``(T,)`` of each episode: ProtoNets classify directly, the MAML family first adapts
    on the support set for ``steps`` (default: the learner's ``test_steps``) inner steps. The learner is in
    evaluation mode meanwhile (normalisation with running statistics uses them; batch statistics are
    batch statistics in either mode)."""
    was_training = learner.training
    learner.eval()
    try:
        if isinstance(learner, ProtoNet):
            return learner.evaluate(batch).metric[0]
        phi = learner.adapt(batch.support_x, batch.support_y, steps=steps)
        pred = learner.predict(phi, batch.query_x)
        return (pred.argmax(-1) == batch.query_y).float().mean(-1)
    finally:
        learner.train(was_training)


def _device_of(learner: torch.nn.Module) -> torch.device:
    return next(learner.parameters(), torch.empty(0)).device


@dataclass(frozen=True)
class Episode:
    """One fixed episode: ``support[w]`` and ``query[w]`` list the instances of way ``w``'s class
    ``classes[w]`` (indices or class names of the data set). Published test sets are lists of these."""

    classes: tuple
    support: tuple
    query: tuple


def episodes_from_sampler(data: ClassDataset, n_way: int, k_shot: int, n_query: int, n_episodes: int,
                          seed: int = 0, chunk: int = 50) -> list[Episode]:
    """The episodes that :func:`evaluate` draws with this seed and ``chunk`` (the sampler draws ``chunk``
    episodes at a time), as a fixed list to store, share or hand back to :func:`evaluate`."""
    sampler = EpisodeSampler(data, n_way, k_shot, n_query, seed=seed)
    out = []
    for done in range(0, n_episodes, chunk):
        classes, order = sampler.draw_indices(min(chunk, n_episodes - done))
        for c, o in zip(classes.tolist(), order.tolist()):
            out.append(Episode(tuple(c), tuple(tuple(r[:k_shot]) for r in o), tuple(tuple(r[k_shot:]) for r in o)))
    return out


def episode_batch(data: ClassDataset, episodes: list[Episode]) -> TaskBatch:
    """Fixed episodes as one :class:`TaskBatch` (the sampler's layout: class-major, labels in the order of
    ``classes``). Every episode of the list must have the same way, shot and query counts; class names are
    looked up in ``data.class_names``; raises ``ValueError`` naming the bad episode otherwise."""
    if not episodes:
        raise ValueError("episodes: the list is empty")
    first = episodes[0]
    n, k, q = len(first.classes), len(first.support[0]), len(first.query[0])
    index = {name: i for i, name in enumerate(data.class_names)}
    classes, order = [], []
    for e, ep in enumerate(episodes):
        if len(ep.classes) != n or len(ep.support) != n or len(ep.query) != n \
                or any(len(s) != k for s in ep.support) or any(len(r) != q for r in ep.query):
            raise ValueError(f"episode {e}: expected {n} ways of {k} support and {q} query instances like episode 0")
        row = []
        for c in ep.classes:
            if isinstance(c, str):
                if c not in index:
                    raise ValueError(f"episode {e}: class {c!r} is not in the {data.split} data set")
                c = index[c]
            if not 0 <= int(c) < len(data):
                raise ValueError(f"episode {e}: class index {c} outside 0..{len(data) - 1}")
            row.append(int(c))
        inst = [list(s) + list(r) for s, r in zip(ep.support, ep.query)]
        if any(not 0 <= int(i) < data.n_per_class for r in inst for i in r) or any(len(set(r)) != len(r) for r in inst):
            raise ValueError(f"episode {e}: instances must be distinct indices in 0..{data.n_per_class - 1} per class")
        classes.append(row)
        order.append(inst)
    classes_t, order_t = torch.tensor(classes), torch.tensor(order)
    images = data.gather(classes_t.unsqueeze(-1).expand_as(order_t), order_t)
    T, shape = len(episodes), images.shape[3:]
    labels = torch.arange(n).view(1, n, 1).expand(T, n, k + q)
    return TaskBatch(support_x=images[:, :, :k].reshape(T, n * k, *shape),
                     support_y=labels[:, :, :k].reshape(T, n * k),
                     query_x=images[:, :, k:].reshape(T, n * q, *shape),
                     query_y=labels[:, :, k:].reshape(T, n * q), info={"classes": classes_t})


def evaluate(learner: ProtoNet | MetaLearner, data: ClassDataset, n_way: int | None = None, k_shot: int | None = None,
             n_query: int | None = None, n_episodes: int = 600, seed: int = 0, steps: int | None = None,
             chunk: int = 50, episodes: list[Episode] | None = None) -> dict[str, float]:
    """Mean query accuracy over ``n_episodes`` fresh episodes of ``data`` and its 95% CI half-width.

    The episodes depend on ``seed`` only, so learners evaluated with the same seed see the same episodes
    (a paired comparison). Or pass ``episodes``, a fixed list of :class:`Episode` (a published test set,
    or :func:`episodes_from_sampler`'s output); way, shot and queries then come from it. Returns
    ``{"mean", "ci95", "episodes", "seconds"}``.
    """
    device = _device_of(learner)
    start = time.perf_counter()
    accs = []
    if episodes is not None:
        for i in range(0, len(episodes), chunk):
            accs.append(episode_accuracy(learner, episode_batch(data, episodes[i:i + chunk]).to(device), steps).cpu())
        n_episodes = len(episodes)
    else:
        if None in (n_way, k_shot, n_query):
            raise ValueError("evaluate: give n_way, k_shot and n_query, or a list of episodes")
        sampler = EpisodeSampler(data, n_way, k_shot, n_query, seed=seed)
        for done in range(0, n_episodes, chunk):
            batch = sampler.sample(min(chunk, n_episodes - done)).to(device)
            accs.append(episode_accuracy(learner, batch, steps).cpu())
    mean, ci = mean_ci95(torch.cat(accs))
    return {"mean": float(mean), "ci95": float(ci), "episodes": n_episodes, "seconds": time.perf_counter() - start}


def accuracy_vs_steps(learner: MetaLearner, data: ClassDataset, n_way: int, k_shot: int, n_query: int,
                      max_steps: int = 10, n_episodes: int = 100, seed: int = 0, chunk: int = 50) -> dict[str, list[float]]:
    """Query accuracy after 0, 1, ..., ``max_steps`` inner steps: ``{"steps", "mean", "ci95"}`` lists."""
    sampler = EpisodeSampler(data, n_way, k_shot, n_query, seed=seed)
    device = _device_of(learner)
    scores = []
    for done in range(0, n_episodes, chunk):
        batch = sampler.sample(min(chunk, n_episodes - done)).to(device)
        scores.append(learner.evaluate(batch, steps=max_steps, metric=_accuracy).metric.cpu())
    mean, ci = mean_ci95(torch.cat(scores, dim=1), dim=1)
    return {"steps": list(range(max_steps + 1)), "mean": mean.tolist(), "ci95": ci.tolist()}


@dataclass
class TrainResult:
    """A trained learner (holding the validation-selected parameters) and its training curves."""

    spec: TrainSpec
    learner: ProtoNet | MetaLearner
    iterations: list[int] = field(default_factory=list)  # where the curves were logged
    train_loss: list[float] = field(default_factory=list)  # mean query loss since the previous log
    val_accuracy: list[float] = field(default_factory=list)
    best_iteration: int = 0
    best_val_accuracy: float = -math.inf
    seconds: float = 0.0
    elapsed: list[float] = field(default_factory=list)  # training wall seconds at each logged iteration
    seed: int = 0
    image_shape: tuple = (1, 28, 28)  # (channels, height, width) of the images it was trained on
    data: str | None = None  # what it was trained on, as given to save()
    provenance: dict = field(default_factory=dict)  # the run that wrote it (load() fills it in)

    def summary(self) -> dict[str, float | int | str]:
        return {"learner": self.spec.name, "best_iteration": self.best_iteration,
                "best_val_accuracy": round(self.best_val_accuracy, 4), "train_seconds": round(self.seconds, 1)}


class _RefreshingSampler:
    """Episodes of ``train_data``; when it is a function ``round -> data set``, fresh instances every
    ``refresh_every`` calls (round 0 first), each round with its own seeded sampler."""

    def __init__(self, train_data, spec: TrainSpec, seed: int, device):
        self.train_data, self.spec, self.seed, self.device = train_data, spec, seed, device
        self.refreshing = callable(train_data) and bool(spec.refresh_every)
        self.calls = 0
        self._build(0)
        self.image_shape = self.data.image_shape

    def _build(self, round_: int) -> None:
        """The data set and a fresh sampler of round ``round_`` (round 0: the sampler seeded with ``seed``)."""
        self.data = self.train_data(round_) if callable(self.train_data) else self.train_data
        seed = self.seed if round_ == 0 else self.seed + round_ * self.spec.refresh_every + 1
        self.sampler = EpisodeSampler(self.data, self.spec.n_way, self.spec.k_shot, self.spec.n_query, seed=seed)

    def __call__(self, n_tasks: int) -> TaskBatch:
        if self.refreshing and self.calls > 0 and self.calls % self.spec.refresh_every == 0:
            self._build(self.calls // self.spec.refresh_every)
        self.calls += 1
        return self.sampler.sample(n_tasks).to(self.device)

    def state_dict(self) -> dict:
        return {"calls": self.calls, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Rebuild the round of instances in use after ``state["calls"]`` calls and its sampler's random state."""
        self.calls = int(state["calls"])
        round_ = (self.calls - 1) // self.spec.refresh_every if self.refreshing and self.calls > 0 else 0
        self._build(round_)
        self.sampler.load_state_dict(state["sampler"])

    def key(self) -> dict:
        """What identifies the training stream (stored in a checkpoint, so another run's file is refused)."""
        return {"info": {k: str(v) for k, v in self.data.info.items() if k not in ("draw", "files")}, "classes": len(self.data),
                "n_per_class": self.data.n_per_class, "image_shape": list(self.image_shape),
                "refreshing": self.refreshing}


def train(spec: TrainSpec, train_data: ClassDataset | Callable[[int], ClassDataset], val_data: ClassDataset,
          seed: int = 0, device: torch.device | str = "cpu", verbose: bool = False,
          checkpoint: str | Path | None = None) -> TrainResult:
    """Meta-train the learner of ``spec`` on episodes of ``train_data``; keep the best-on-validation parameters.

    ``train_data`` is a data set, or a function ``round -> data set`` called every ``spec.refresh_every``
    iterations for fresh instances (round 0 at the start). Validation uses the same ``spec.val_episodes``
    episodes at every check (seeded), at the end of every ``spec.val_every`` iterations and at the last one.
    The loop is :func:`mtml_lib.meta.meta_train` with its validation hook; ``checkpoint`` (a file) makes
    the run resumable: it is written at every validation, and an interrupted run started again with the
    same arguments continues from it and ends with the same parameters as an uninterrupted one.
    """
    torch.manual_seed(seed)
    sample = _RefreshingSampler(train_data, spec, seed, device)
    shape = sample.image_shape
    learner = make_learner(spec, in_channels=shape[0], image_size=shape[-1]).to(device)
    val_way, val_shot = spec.val_way or spec.n_way, spec.val_shot or spec.k_shot
    val_batch = EpisodeSampler(val_data, val_way, val_shot, spec.n_query, seed=seed + 1).sample(spec.val_episodes).to(device)

    def validate(model) -> float:
        return float(torch.cat([episode_accuracy(model, val_batch.select(slice(i, i + 50))).cpu()
                                for i in range(0, spec.val_episodes, 50)]).mean())

    if verbose:
        print(f"{spec.name}:", flush=True)
    key = {"spec": as_dict(spec), "seed": int(seed), "data": sample.key(),
           "val": {"classes": len(val_data), "info": {k: str(v) for k, v in val_data.info.items() if k != "files"}}}
    history = meta_train(learner, sample, spec.iterations, spec.meta_batch, spec.meta_lr, log_every=spec.val_every,
                         cosine=spec.cosine, validate=validate, verbose=verbose, checkpoint=checkpoint,
                         key=json.dumps(key, sort_keys=True),
                         after_step=zero_head if spec.head_init == "zeroing" and spec.learner != "protonet" else None,
                         halve_every=spec.halve_every, restore_best=spec.select == "best")
    return TrainResult(spec=spec, learner=learner, iterations=history.iterations, train_loss=history.loss,
                       val_accuracy=history.val_score, best_iteration=history.best_iteration,
                       best_val_accuracy=history.best_score, seconds=history.seconds,
                       elapsed=list(history.elapsed), seed=int(seed), image_shape=tuple(shape))


#: per worker process of :func:`train_all`: the data and the run options, set once by :func:`_init_worker`
_WORKER: dict = {}


def _init_worker(train_data, val_data, device: str, threads: int, deterministic: bool) -> None:
    torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    _WORKER.update(train_data=train_data, val_data=val_data, device=device)


def _train_job(spec: TrainSpec, seed: int, checkpoint: str | None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Train one learner in a worker; return its curves and its (selected) parameters on the CPU."""
    w = _WORKER
    result = train(spec, w["train_data"], w["val_data"], seed=seed, device=w["device"], checkpoint=checkpoint)
    curves = {k: getattr(result, k) for k in ("iterations", "train_loss", "val_accuracy", "best_iteration",
                                              "best_val_accuracy", "seconds", "elapsed", "seed")}
    return curves, {k: v.detach().cpu() for k, v in result.learner.state_dict().items()}


def train_all(specs, train_data: ClassDataset | Callable[[int], ClassDataset], val_data: ClassDataset,
              seeds=(0,), device: torch.device | str = "cpu", workers: int = 1, threads: int = 1,
              checkpoint_root: str | Path | None = None, data_key: str = "",
              on_result: Callable[[TrainResult], None] | None = None) -> dict[tuple[str, int], TrainResult]:
    """:func:`train` every spec of ``specs`` with every seed of ``seeds``; ``{(spec.name, seed): result}``
    in the order of ``specs``, then ``seeds``.

    ``workers`` > 1 trains that many learners at once in forked processes of ``threads`` threads each (on
    the CPU; on another device the learners train one after the other, each using the whole device). The
    learners are independent and each seeds its own generators, so the results are those of one process
    (a test checks it). ``checkpoint_root``: make every run resumable, with its file at
    :func:`checkpoint_path` ``(spec, seed, data_key, checkpoint_root)``. ``on_result`` is called with each
    result as it finishes (progress).
    """
    import multiprocessing

    specs, seeds = list(specs), [int(s) for s in seeds]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"two specs share a name ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                         "results are keyed by name")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    jobs = [(spec, seed) for spec in specs for seed in seeds]

    def checkpoint(spec, seed):
        return str(checkpoint_path(spec, seed, data_key, checkpoint_root)) if checkpoint_root is not None else None

    out: dict[tuple[str, int], TrainResult] = {}

    def finished(spec, seed, curves, state):
        data = train_data(0) if callable(train_data) else train_data
        shape = data.image_shape
        learner = make_learner(spec, in_channels=shape[0], image_size=shape[-1])
        learner.load_state_dict(state)
        result = TrainResult(spec=spec, learner=learner.to(device), image_shape=tuple(shape), **curves)
        out[(spec.name, seed)] = result
        if on_result is not None:
            on_result(result)

    options = (train_data, val_data, str(device), threads, torch.are_deterministic_algorithms_enabled())
    parallel = workers > 1 and len(jobs) > 1 and torch.device(device).type == "cpu" \
        and "fork" in multiprocessing.get_all_start_methods()
    if not parallel:
        saved, saved_worker = torch.get_num_threads(), dict(_WORKER)
        _init_worker(*options)
        try:
            for spec, seed in jobs:
                finished(spec, seed, *_train_job(spec, seed, checkpoint(spec, seed)))
        finally:
            torch.set_num_threads(saved)
            _WORKER.clear()
            _WORKER.update(saved_worker)
    else:
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # fork copies the data (and a function that builds it) into the workers without pickling them
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_init_worker,
                                 initargs=options) as pool:
            pending = {pool.submit(_train_job, spec, seed, checkpoint(spec, seed)): (spec, seed) for spec, seed in jobs}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    spec, seed = pending.pop(future)
                    finished(spec, seed, *future.result())
    return {(spec.name, seed): out[(spec.name, seed)] for spec, seed in jobs}


def zero_head_step(learner: MetaLearner, batch: TaskBatch) -> dict[str, float]:
    """What one inner step from a zero head does, measured on ``batch`` with ``learner``'s parameters.

    With the head at zero every class has the same logit, so the support loss has no gradient with respect
    to the features (it is Wᵀ(p − y), and W = 0): one inner step moves the head only, and row c of the
    adapted head is (α/n) Σ_j (1[y_j = c] − 1/N) φ(x_j), class c's support features against those of all
    classes; the bias stays 0 on balanced episodes. Hence MAML and ANIL compute the same function and, as
    the head is zeroed again after every update, the same meta-gradient for the backbone, while the
    first-order approximation drops the path from the support features through the adapted head. Returns
    ``backbone_change`` (largest change of a backbone weight in the step, relative to the largest weight),
    ``head_formula_error`` (largest deviation of the adapted head from the formula, relative to its largest
    entry), ``anil_vs_maml`` (largest difference of their backbone meta-gradients, relative to MAML's
    largest entry) and ``fomaml_cosine`` (cosine between FOMAML's and MAML's backbone meta-gradients).
    Needs a MAML-family learner on a model with a zero linear ``head`` and a ``features`` encoder.
    """
    head = getattr(learner.model, "head", None)
    if learner.algorithm not in ("maml", "fomaml", "anil") or not isinstance(head, torch.nn.Linear):
        raise ValueError(f"zero_head_step needs a MAML, FOMAML or ANIL learner with a linear head, got "
                         f"{learner.algorithm!r}")
    if head.weight.detach().abs().max() > 0 or head.bias.detach().abs().max() > 0:
        raise ValueError("zero_head_step needs a zero head (head_init='zeroing' or 'zero' before training)")
    model, n_way = learner.model, head.out_features
    theta = {n: p.detach() for n, p in model.named_parameters()}
    fast = learner.adapt(batch.support_x, batch.support_y, steps=1)
    backbone = [n for n in fast if not n.startswith("head.")]
    largest = max(float(theta[n].abs().max()) for n in backbone) if backbone else 1.0
    change = max((float((fast[n] - theta[n]).abs().max()) for n in backbone), default=0.0) / largest
    n_support = batch.support_y.shape[1]
    with torch.no_grad():
        phi = torch.stack([model.features(batch.support_x[t]) for t in range(len(batch.support_x))])  # (T, n, D)
        onehot = F.one_hot(batch.support_y, n_way).to(phi.dtype)
        expected = learner.inner_lr / n_support * torch.einsum("tnc,tnd->tcd", onehot - 1.0 / n_way, phi)
    head_error = float((fast["head.weight"] - expected).abs().max() / expected.abs().max())

    def backbone_gradient(algorithm: str) -> torch.Tensor:
        other = MetaLearner(model, learner.loss_fn, algorithm=algorithm, inner_lr=learner.inner_lr, inner_steps=1)
        grads, _ = other.meta_gradient(batch)
        return torch.cat([grads[f"model.{n}"].flatten() for n in theta if not n.startswith("head.")])

    exact, anil, first = backbone_gradient("maml"), backbone_gradient("anil"), backbone_gradient("fomaml")
    return {"backbone_change": change, "head_formula_error": head_error,
            "anil_vs_maml": float((anil - exact).abs().max() / exact.abs().max()),
            "fomaml_cosine": float(F.cosine_similarity(first, exact, dim=0))}


# ------------------------------------------------------------------------------- error analysis
@torch.no_grad()
def embed_classes(encoder: torch.nn.Module, data: ClassDataset, chunk: int = 1024) -> torch.Tensor:
    """Embeddings ``(C, N, D)`` of every image of ``data``, in chunks of ``chunk`` images in class order.

    An encoder with batch statistics (``norm="batchnorm"``) normalises over each chunk rather than over one
    episode, so the embeddings are close to, not equal to, those of episodic evaluation.
    """
    device = _device_of(encoder)
    images = data.images.flatten(0, 1)
    z = torch.cat([encoder(images[i:i + chunk].to(device).float() / 255.0).cpu() for i in range(0, len(images), chunk)])
    return z.view(len(data), data.n_per_class, -1)


def one_shot_confusion(embeddings: torch.Tensor) -> torch.Tensor:
    """``(C, C)`` pairwise 1-shot confusion of nearest-prototype classification of ``(C, N, D)`` embeddings.

    Entry ``[a, b]``: over every query image ``i`` of class ``a``, every other image ``j`` of ``a`` as its
    support and every image ``k`` of ``b`` as ``b``'s support, the fraction with ``|z_ai - z_bk|² <
    |z_ai - z_aj|²`` (the query goes to ``b`` in a 2-way 1-shot episode). The diagonal is zero.
    """
    if embeddings.dim() != 3 or embeddings.shape[1] < 2:
        raise ValueError(f"embeddings must be (classes, instances >= 2, dim), got {tuple(embeddings.shape)}")
    n_classes, n = embeddings.shape[:2]
    flat = embeddings.flatten(0, 1).double()
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    out = torch.zeros(n_classes, n_classes, dtype=torch.float64)
    for a in range(n_classes):
        d = torch.cdist(flat[a * n:(a + 1) * n], flat).pow(2).view(n, n_classes, n)  # (query i, class b, support k)
        own = d[:, a, :][off_diagonal].view(n, n - 1)  # (query i, support j != i)
        out[a] = (d.unsqueeze(-1) < own[:, None, None, :]).double().mean((2, 3)).mean(0)
    out.fill_diagonal_(0.0)
    return out


def expected_accuracy(confusion: torch.Tensor, n_way: int) -> torch.Tensor:
    """Expected ``n_way``-way 1-shot accuracy of each class as the query class, from pairwise confusions.

    A query of class ``a`` is right when no distractor ``b`` wins its pairwise comparison, taken as
    independent events: ``∏_b (1 - confusion[a, b])``, averaged exactly over every set of ``n_way - 1``
    distractors (the elementary symmetric polynomial of the ``1 - confusion[a, b]``, divided by the number
    of sets). The mean over classes approximates the episodic accuracy.
    """
    n_classes = len(confusion)
    if not 2 <= n_way <= n_classes:
        raise ValueError(f"n_way must be between 2 and the {n_classes} classes, got {n_way}")
    keep = 1.0 - confusion.double()
    keep.fill_diagonal_(0.0)  # a set containing the query's own class contributes nothing
    m = n_way - 1
    e = torch.zeros(n_classes, m + 1, dtype=torch.float64)
    e[:, 0] = 1.0
    for b in range(n_classes):  # e[:, k]: sum over k-subsets of the classes seen so far
        e[:, 1:] = e[:, 1:] + keep[:, b:b + 1] * e[:, :-1]
    return e[:, m] / float(math.comb(n_classes - 1, m))


def confusion_report(confusion: torch.Tensor, data: ClassDataset, n_way: int = 5, top: int = 10) -> dict:
    """The classes and pairs behind the errors: ``{"classes", "pairs", "share", "expected_accuracy"}``.

    ``classes``: the ``top`` classes of lowest expected ``n_way``-way 1-shot accuracy (:func:`expected_accuracy`);
    ``pairs``: the ``top`` most confused pairs, by their 2-way 1-shot error averaged over the two directions
    (a query of either class taken for the other: 0-100 %, 50 % = the pair cannot be told apart); ``share``: the fraction of all
    expected errors that the ``top`` classes account for (0 when there are no errors);
    ``expected_accuracy``: the mean over classes.
    """
    import pandas as pd

    n_classes = len(confusion)
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    top_classes, top_pairs = min(top, n_classes), min(top, n_classes * (n_classes - 1) // 2)
    accuracy = expected_accuracy(confusion, n_way)
    error = 1.0 - accuracy
    order = error.argsort(descending=True)[:top_classes].tolist()
    classes = pd.DataFrame({"class": [data.class_names[c] for c in order], "alphabet": [data.groups[c] for c in order],
                            f"{n_way}-way 1-shot error (%)": [round(100 * float(error[c]), 1) for c in order]})
    rows, cols = torch.triu_indices(n_classes, n_classes, offset=1)  # each unordered pair once
    both = 0.5 * (confusion + confusion.T)[rows, cols]
    picked = both.argsort(descending=True)[:top_pairs].tolist()
    pairs = pd.DataFrame({
        "class": [data.class_names[rows[i]] for i in picked],
        "confused with": [data.class_names[cols[i]] for i in picked],
        "alphabets": [f"{data.groups[rows[i]]} / {data.groups[cols[i]]}" for i in picked],
        "2-way error (%, mean of both directions)": [round(100 * float(both[i]), 1) for i in picked],
    })
    total = float(error.sum())
    return {"classes": classes, "pairs": pairs, "share": float(error[order].sum()) / total if total > 0 else 0.0,
            "expected_accuracy": float(accuracy.mean())}


#: published Omniglot accuracies (%, ± 95 % CI where given) on Vinyals et al.'s split (28 x 28, rotations),
#: {learner: {setting: (mean, ci)}}, and where they come from. First-order MAML is Nichol et al.'s number
#: with transductive batch normalisation (Finn et al. report it on MiniImagenet only).
PUBLISHED_OMNIGLOT: dict[str, dict[str, tuple[float, float | None]]] = {
    "ProtoNet": {"5-way 1-shot": (98.8, None), "5-way 5-shot": (99.7, None), "20-way 1-shot": (96.0, None),
                 "20-way 5-shot": (98.9, None)},
    "MAML": {"5-way 1-shot": (98.7, 0.4), "5-way 5-shot": (99.9, 0.1), "20-way 1-shot": (95.8, 0.3),
             "20-way 5-shot": (98.9, 0.2)},
    "FOMAML": {"5-way 1-shot": (98.3, 0.5), "5-way 5-shot": (99.2, 0.2), "20-way 1-shot": (89.4, 0.5),
               "20-way 5-shot": (97.9, 0.1)},
    "Meta-SGD": {"5-way 1-shot": (99.53, 0.26), "5-way 5-shot": (99.93, 0.09), "20-way 1-shot": (95.93, 0.38),
                 "20-way 5-shot": (98.97, 0.19)},
}
PUBLISHED_OMNIGLOT_SOURCES = {"ProtoNet": "Snell et al. 2017", "MAML": "Finn et al. 2017",
                              "FOMAML": "Nichol et al. 2018 (transductive)", "Meta-SGD": "Li et al. 2017"}


def published_table(settings: list[str]) -> "pd.DataFrame":
    """:data:`PUBLISHED_OMNIGLOT` as a table of ``mean ± CI`` strings (— where a paper gives none)."""
    import pandas as pd

    rows = {}
    for name, res in PUBLISHED_OMNIGLOT.items():
        label = f"{name} ({PUBLISHED_OMNIGLOT_SOURCES[name]})"
        rows[label] = {s: ("—" if s not in res else f"{res[s][0]:.2f}" + (f" ± {res[s][1]:.2f}" if res[s][1] else ""))
                       for s in settings}
    return pd.DataFrame(rows).T


#: the format of a file written by :func:`save` (a different one is refused by :func:`load`)
LEARNER_FORMAT = "mtml-learner-1"


def save(result: TrainResult, path: str | Path, data: str | None = None) -> Path:
    """Write a trained learner to ``path``: its parameters (the validation-selected ones a
    :class:`TrainResult` holds), its :class:`TrainSpec`, the image shape, seed, selection and curves, a
    description of the training ``data`` (e.g. ``"omniglot vinyals/train"``) and the run's provenance, with
    a digest of the tensors (:mod:`mtml_lib.checkpoint`). :func:`load` reads it back."""
    from mtml_lib.checkpoint import save_checkpoint

    return save_checkpoint(path, result.learner, extra={
        "kind": LEARNER_FORMAT,
        "spec": as_dict(result.spec),
        "image_shape": [int(v) for v in result.image_shape],
        "seed": int(result.seed),
        "data": data,
        "curves": {k: getattr(result, k) for k in ("iterations", "train_loss", "val_accuracy", "best_iteration",
                                                   "best_val_accuracy", "seconds", "elapsed")},
    })


def load(path: str | Path, device: torch.device | str = "cpu") -> TrainResult:
    """A learner written by :func:`save`, rebuilt from its spec with its parameters, as a :class:`TrainResult`
    (``result.learner`` is ready for :func:`evaluate`; ``result.provenance`` and ``result.data`` say what made
    it). Raises :class:`mtml_lib.checkpoint.CheckpointError` naming the file for a missing, corrupt or
    foreign file: a training checkpoint of :func:`train` is refused with the call that reads it
    (:func:`best_parameters`), a file of another format version with both versions named."""
    from mtml_lib.checkpoint import CheckpointError, load_checkpoint

    payload = load_checkpoint(path)
    extra = payload.get("extra") or {}
    kind = extra.get("kind")
    if kind == "meta_train":
        raise CheckpointError(f"{path} is a training checkpoint (resumable state), not a saved learner: "
                              "fewshot.best_parameters(path) returns its selected parameters")
    if kind != LEARNER_FORMAT:
        raise CheckpointError(f"{path} holds {kind!r}, not a learner of format {LEARNER_FORMAT!r} "
                              "(written by another version of mtml_lib.fewshot.save?)")
    fields = {f.name for f in dataclasses.fields(TrainSpec)}
    unknown = sorted(set(extra["spec"]) - fields)
    if unknown:
        raise CheckpointError(f"{path}: its spec has settings this version does not know: {unknown}")
    spec = TrainSpec(**extra["spec"])
    shape = tuple(extra["image_shape"])
    learner = make_learner(spec, in_channels=shape[0], image_size=shape[-1])
    learner.load_state_dict(payload["state_dict"])
    return TrainResult(spec=spec, learner=learner.to(device), seed=int(extra["seed"]), image_shape=shape,
                       data=extra.get("data"), provenance=payload.get("provenance", {}), **extra["curves"])


def best_parameters(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The validation-selected parameters held by a training checkpoint of :func:`train` / :func:`train_all`
    (a ``state_dict``: ``learner.load_state_dict(best_parameters(path))``); the last ones when no
    validation has run yet. Raises :class:`mtml_lib.checkpoint.CheckpointError` for any other file."""
    from mtml_lib.checkpoint import CheckpointError, load_checkpoint

    payload = load_checkpoint(checkpoint)
    extra = payload.get("extra") or {}
    if extra.get("kind") != "meta_train":
        raise CheckpointError(f"{checkpoint} is not a training checkpoint of fewshot.train (kind {extra.get('kind')!r}); "
                              "a learner written by fewshot.save is read with fewshot.load")
    return extra.get("best_state") or payload["state_dict"]


def checkpoint_path(spec: TrainSpec, seed: int, data_key: str, root: str | Path | None = None) -> Path:
    """Where :func:`train` keeps the resumable state of one learner: ``root`` (default
    ``config.cache_dir()/fewshot``) / ``<learner>-<digest>.pt``, the digest covering the whole spec, the seed
    and ``data_key`` (what identifies the training data, e.g. the data set's version and fonts), so that a
    changed setting never resumes from another run's file."""
    import hashlib
    import json

    from mtml_lib import config

    root = Path(root) if root is not None else config.cache_dir() / "fewshot"
    key = json.dumps({"spec": dataclasses.asdict(spec), "seed": int(seed), "data": data_key}, sort_keys=True)
    slug = spec.name.lower().replace(" ", "-")
    return root / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"


def spec_table(specs) -> "pd.DataFrame":
    """The training settings of ``specs`` as a table (one row per learner)."""
    import pandas as pd

    keep = ("n_way", "k_shot", "n_query", "meta_batch", "iterations", "meta_lr", "inner_lr", "inner_steps",
            "test_steps", "hidden")
    rows = []
    for s in specs:
        row = {"learner": s.name, **{k: getattr(s, k) for k in keep}}
        if s.learner == "protonet":
            row.update(inner_lr="—", inner_steps="—", test_steps="—")
        rows.append(row)
    return pd.DataFrame(rows).set_index("learner")


def format_accuracy(mean: float, ci: float) -> str:
    """``"97.12 ± 0.45"`` (percent)."""
    return f"{100 * mean:.2f} ± {100 * ci:.2f}"


def results_table(results: dict[str, dict[str, dict[str, float]]], settings: list[str]) -> "pd.DataFrame":
    """``{learner: {setting: {"mean", "ci95"}}}`` -> a table of ``mean ± CI`` strings (— where not run)."""
    import pandas as pd

    return pd.DataFrame({
        s: {name: format_accuracy(r[s]["mean"], r[s]["ci95"]) if s in r else "—" for name, r in results.items()}
        for s in settings
    })


def over_seeds(per_seed: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, dict[str, dict]]:
    """Combine each learner's test results over its training seeds.

    ``per_seed``: ``{learner: {setting: [evaluate() result of seed 0, seed 1, ...]}}``. Returns
    ``{learner: {setting: {"mean", "ci95", "over", "seeds", "episode_ci95"}}}``: the mean over seeds and the
    half-width of its 95 % interval over seeds (Student's t; ``"over": "seeds"``), or, with a single seed,
    that run's interval over its test episodes (``"over": "episodes"``); ``seeds`` and ``episode_ci95``
    keep every seed's accuracy and episode interval. The same table function reads either.
    """
    from mtml_lib.metrics import mean_ci

    out: dict[str, dict[str, dict]] = {}
    for name, settings in per_seed.items():
        out[name] = {}
        for setting, runs in settings.items():
            if not runs:
                raise ValueError(f"no results for {name!r}, {setting!r}")
            means = [float(r["mean"]) for r in runs]
            episode_ci = [float(r["ci95"]) for r in runs]
            if len(runs) == 1:
                mean, ci, over = means[0], episode_ci[0], "episodes"
            else:
                (mean, ci), over = mean_ci(means), "seeds"
            out[name][setting] = {"mean": mean, "ci95": ci, "over": over, "seeds": means, "episode_ci95": episode_ci}
    return out


def paired_to(summary: dict[str, dict[str, dict]], reference: str, settings: list[str]) -> "pd.DataFrame":
    """Each learner minus ``reference``, seed by seed (the seeds pair them), in percentage points: ``"+1.23 ±
    0.45"`` with a ``*`` where the 95 % interval (Student's t over the seeds) excludes zero; ``—`` where a
    learner lacks the setting, the reference row is left out. Needs the per-seed results of
    :func:`over_seeds` with at least two seeds."""
    import pandas as pd

    from mtml_lib.metrics import paired_difference

    if reference not in summary:
        raise ValueError(f"unknown reference learner {reference!r}; valid: {', '.join(map(repr, summary))}")
    rows = {}
    for name, results in summary.items():
        if name == reference:
            continue
        row = {}
        for setting in settings:
            if setting not in results or setting not in summary[reference]:
                row[setting] = "—"
                continue
            a, b = results[setting]["seeds"], summary[reference][setting]["seeds"]
            if len(a) < 2:
                raise ValueError("a paired comparison needs at least two seeds")
            mean, half = paired_difference(a, b)
            row[setting] = f"{100 * mean:+.2f} ± {100 * half:.2f}" + (" *" if abs(mean) > half else "")
        rows[name] = row
    return pd.DataFrame(rows).T.reindex(columns=settings)


def plateau_table(runs: dict[tuple[str, int], "TrainResult"], last: float = 1 / 3) -> "pd.DataFrame":
    """Has each learner stopped improving? One row per learner (mean over its seeds): the best validation
    accuracy, the gain of the validation accuracy over the last ``last`` of training (the last logged value
    minus the one logged at ``1 - last`` of the iterations; percentage points) and the training minutes per
    seed."""
    import pandas as pd

    rows: dict[str, dict[str, list[float]]] = {}
    for (name, _seed), r in runs.items():
        if not r.val_accuracy:
            raise ValueError(f"{name}: no validation curve")
        start = next(i for i, it in enumerate(r.iterations) if it >= (1 - last) * r.iterations[-1])
        row = rows.setdefault(name, {"best": [], "gain": [], "minutes": []})
        row["best"].append(100 * r.best_val_accuracy)
        row["gain"].append(100 * (r.val_accuracy[-1] - r.val_accuracy[start]))
        row["minutes"].append(r.seconds / 60)
    label = f"gain over the last {round(100 * last)} % (points)"
    return pd.DataFrame({name: {"seeds": len(v["best"]), "best validation accuracy (%)": round(sum(v["best"]) / len(v["best"]), 2),
                                label: round(sum(v["gain"]) / len(v["gain"]), 2),
                                "training minutes a seed": round(sum(v["minutes"]) / len(v["minutes"]), 1)}
                         for name, v in rows.items()}).T


def setting_name(n_way: int, k_shot: int) -> str:
    return f"{n_way}-way {k_shot}-shot"


def as_dict(spec: TrainSpec) -> dict:
    return dataclasses.asdict(spec)



# ------------------------------------------------------------------------------------- pictures
def mosaic(images: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Tile ``(rows, cols, 1, H, W)`` images into one ``(rows * (H + pad), cols * (W + pad))`` picture."""
    rows, cols, _, h, w = images.shape
    canvas = torch.zeros(rows, cols, h + pad, w + pad, dtype=torch.float32)
    canvas[:, :, :h, :w] = images[:, :, 0].float() / (255.0 if images.dtype == torch.uint8 else 1.0)
    return canvas.permute(0, 2, 1, 3).reshape(rows * (h + pad), cols * (w + pad))


def class_mosaic(data: ClassDataset, n_classes: int = 8, n_instances: int = 10, seed: int = 0) -> torch.Tensor:
    """A picture of ``n_instances`` images of each of ``n_classes`` randomly chosen classes (one row each)."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.randperm(len(data), generator=g)[:n_classes]
    return mosaic(data.images[classes, :n_instances])


def image_stats(data: ClassDataset, max_images: int = 2000) -> dict[str, float]:
    """The conventions that glyphs and Omniglot share, measured on up to ``max_images`` images.

    Value range, background (mean of the border pixels), ink coverage (mean value), median stroke width
    (pixels) and median extent of the character (longer side of the ink's bounding box / frame side).
    """
    from mtml_lib.data.glyphs import stroke_width

    x = data.images.flatten(0, 1)[:: max(1, data.images.shape[0] * data.images.shape[1] // max_images)]
    x = x[:, 0].float() / 255.0
    ink = x > 0.5
    rows, cols = ink.any(2), ink.any(1)

    def extent(mask):
        idx = torch.arange(mask.shape[1])
        first = torch.where(mask, idx, mask.shape[1]).min(1).values
        last = torch.where(mask, idx, -1).max(1).values
        return (last - first + 1).clamp_min(0)

    side = torch.maximum(extent(rows), extent(cols)).float() / x.shape[-1]
    border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], 1)
    return {
        "images": len(x),
        "min": float(x.min()),
        "max": float(x.max()),
        "background": round(float(border.mean()), 4),
        "ink coverage": round(float(x.mean()), 4),
        "stroke width (px)": round(float(stroke_width(x).median()), 3),
        "extent (fraction of frame)": round(float(side.median()), 3),
    }
